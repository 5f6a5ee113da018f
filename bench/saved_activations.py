"""What the backward pass keeps for one training example (info; no target).

Runs one steered training forward exactly as a training step does (CLAS on all layers,
``fast_attention``, ``lean_mlp``, the completions' cross-entropy through ``HeadCE``) on one
example of about 300 tokens (``bench_memory.py``'s examples) and sums the bytes of every
tensor the finished graph holds for the backward pass, by shape, counting each storage once
and leaving out the model's weights (saved by reference, never copied).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/saved_activations.py
"""

from __future__ import annotations

import argparse
import collections
import weakref

import common as C  # noqa: I001
import torch

from clas_lens.losses import encode_pairs, nll_sums
from clas_lens.model import fast_attention, model_device, pad_id


def saved_bytes(model, steerer, encoded) -> collections.Counter:
    """Bytes of the tensors saved for backward by one steered training forward, by shape."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    packed = []

    def pack(t):
        packed.append(weakref.ref(t))
        return t

    with steerer.apply(model), fast_attention(model), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sums, _ = nll_sums(model, encoded, pad_id(model), model_device(model))
        # what the graph of ``sums`` holds (a custom op's own inner graphs are gone by now)
        seen: set[int] = set()
        by_shape: collections.Counter = collections.Counter()
        for ref in packed:
            t = ref()
            ptr = None if t is None else t.untyped_storage().data_ptr()
            if t is not None and ptr not in weights and ptr not in seen:
                seen.add(ptr)
                by_shape[tuple(t.shape)] += t.untyped_storage().nbytes()
        del sums
    return by_shape


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=300)
    args = p.parse_args(argv)
    model = C.get_model("float32")
    enc = encode_pairs(model, C.long_pairs(1, args.tokens, model))
    by_shape = saved_bytes(model, C.clas_steerer(model), enc)
    total = sum(by_shape.values())
    print(f"{len(enc[0][0])} tokens ({len(enc[0][0]) - enc[0][1]} completion), "
          f"{model.cfg.n_layers} layers: {total / 2**20:.1f} MiB saved for backward")
    for shape, b in by_shape.most_common(12):
        print(f"  {str(list(shape)):>22}  {b / 2**20:7.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
