"""What fused kernels could still save: a compiled model's training-shaped step / the eager one.

Both variants run the Hugging Face model under the bridge (SmolLM2-135M by default) with
frozen weights and ``scaled_dot_product_attention``, without hooks: a forward to the last
hidden state and a backward into the input embeddings (as the steerers' gradients need),
on one batch of ``--batch`` x ``--tokens`` random token ids. ``compiled_step_ratio``:
the step of ``torch.compile(model)`` (inductor, C++ kernels: element-wise work fused into
loops) / the eager step, timed in interleaved rounds after the compiled model's first call
(its compile time, ``compile_s``, is reported apart). The ratio bounds what compiling could
gain on this machine: every op but the matrix products and attention is a candidate for
fusion, and the hooks of the steering path are left out.

Example:
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_compile.py --threads 0
"""

from __future__ import annotations

import time

import common as C  # noqa: I001  (first: it sets the threading environment)
import torch


def run(args) -> dict:
    model = C.get_model(args.dtype)
    hf = model.original_model.model
    hf.config._attn_implementation = "sdpa"
    hf.requires_grad_(False)
    batch, tokens = (1, 16) if args.quick else (args.batch, args.tokens)
    ids = torch.randint(100, int(model.cfg.d_vocab) - 100, (batch, tokens),
                        generator=torch.Generator().manual_seed(0))
    embed = hf.get_input_embeddings()

    def step(net):
        def go():
            e = embed(ids).detach().requires_grad_(True)
            h = net(inputs_embeds=e, use_cache=False).last_hidden_state
            h[:, tokens // 2:].pow(2).mean().backward()
            return e.grad
        return go

    compiled = torch.compile(hf)
    t = time.perf_counter()
    grad_c = step(compiled)()
    compile_s = time.perf_counter() - t
    grad_e = step(hf)()
    times = C.interleave({"compiled": step(compiled), "eager": step(hf)},
                         reps=args.reps or (2 if args.quick else 4))
    r = C.ratio(times, "compiled", "eager")
    return {"compiled_step_ratio": r["value"], "compiled_step_ratio_wall": r["wall"],
            "compiled_step_ratio_cpu": r["cpu"], "rounds": r["cpu_all"],
            "eager_step_s_cpu": round(C.med(times["eager"]["cpu"]), 3),
            "compile_s": round(compile_s, 1), "batch": batch, "tokens": tokens,
            "max_grad_diff": float((grad_c - grad_e).abs().max()),
            "grad_scale": float(grad_e.abs().max())}


def main(argv=None) -> dict:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=3, help="sequences per step")
    p.add_argument("--tokens", type=int, default=300, help="tokens per sequence")
    return C.main("compile", run, __doc__, argv, p)


if __name__ == "__main__":
    main()
