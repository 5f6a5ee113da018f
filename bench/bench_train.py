"""One CLAS training step / a plain forward+backward on the same tokens.

CLAS step: ``train(model, steerer, pairs, epochs=1)`` with the default
``micro_batch_size=4`` and full batch, i.e. exactly one optimiser step (tokenising,
micro-batched forward+backward with the CLAS hooks on all layers, AdamW step,
bookkeeping). Baseline: the same micro-batches (same token ids, mask and labels),
the same loss code, a forward+backward where the only trainable tensors are one
vector ``u_l`` per layer added at ``hook_resid_post`` (``h + u_l``); no optimiser.

Also checks that the model's weights never require or receive a gradient: a probe
hook records ``requires_grad`` of every weight during the training forward, and
every weight's ``.grad`` is checked to be ``None`` afterwards.

``train_step_vs_naive``: one optimiser step of ``train(model, clas, pairs, epochs=1)`` with
its defaults (micro-batches of at most 512 padded tokens) / the same call computed as the
step was before this measure was introduced: eager attention (TransformerLens's own
attention, whose pattern is kept for the backward pass) and full logits at every position,
cross-entropy over all of them with the prompt and padding ignored. Same pairs (10
GSM8K-shaped pairs: about 136 prompt and 192 completion tokens each), same hooks,
micro-batches and optimiser. ``step_vs_all_position_logits`` isolates the logits: the
default step / the same step (fused attention) with full logits at every position.
"""

from __future__ import annotations

import common as C  # noqa: I001
import torch

import clas_lens.training as training
from clas_lens.directions import resid_hook
from clas_lens.losses import collate, encode_pairs, nll_sums
from clas_lens.model import fast_attention, model_device, pad_id


def run(args, model=None) -> dict:
    n, tokens = (2, 32) if args.quick else (4, 128)
    reps = args.reps or (2 if args.quick else 5)
    micro = 4
    model = model or C.get_model(args.dtype)
    st = C.clas_steerer(model)
    pairs = C.long_pairs(n, tokens, model)
    enc = encode_pairs(model, pairs)
    pad, device = pad_id(model), model_device(model)
    n_tok = sum(len(s) - k for s, k in enc)
    L = int(model.cfg.n_layers)
    u = [torch.zeros(int(model.cfg.d_model), requires_grad=True) for _ in range(L)]
    weights = list(model.parameters())
    seen = {"forwards": 0, "weights_requiring_grad": 0, "grad_enabled": False}

    def probe(h, hook=None):
        seen["forwards"] += 1
        seen["grad_enabled"] |= torch.is_grad_enabled()
        seen["weights_requiring_grad"] = max(seen["weights_requiring_grad"],
                                             sum(p.requires_grad for p in weights))
        return h

    def clas_step():
        with model.hooks(fwd_hooks=[(resid_hook(L - 1), probe)]):
            C.cl.train(model, st, pairs, None, epochs=1, micro_batch_size=micro, progress=False)

    def make_add(j):
        return lambda h, hook=None: h + u[j]

    base_hooks = [(resid_hook(j), make_add(j)) for j in range(L)]

    def baseline():
        for t in u:
            t.grad = None
        with model.hooks(fwd_hooks=base_hooks):
            for m in range(0, len(enc), micro):
                sums, _ = nll_sums(model, enc[m:m + micro], pad, device)
                (sums.sum() / n_tok).backward()

    with C.PeakRSS() as mon:
        t = C.interleave({"baseline": baseline, "clas": clas_step}, reps)
    r = C.ratio(t, "clas", "baseline")
    return {
        "train_step_ratio": r["value"], "train_step_ratio_wall": r["wall"],
        "train_step_ratio_cpu": r["cpu"],
        "baseline_fwd_bwd_s_wall": C.med(t["baseline"]["wall"]),
        "baseline_fwd_bwd_s_cpu": C.med(t["baseline"]["cpu"]),
        "n_examples": n, "tokens_per_example": tokens, "completion_tokens": n_tok,
        "micro_batch_size": micro, "reps": reps,
        "weights_requiring_grad_in_training": seen["weights_requiring_grad"],
        "weight_grads_allocated": sum(p.grad is not None for p in weights),
        "training_forwards_probed": seen["forwards"], "dtype": args.dtype,
        "peak_rss_mb": round(mon.peak, 1), "rss_before_mb": round(mon.start, 1),
        "rounds": r, **run_vs_naive(args, model),
    }


def all_position_nll_sums(model, encoded, pad, device, **kw):
    """The loss before logits were restricted: full logits, ``logsumexp - x[target]`` at every
    position (float32), prompt and padding masked out afterwards."""
    ids, mask, labels = collate(encoded, pad, device)
    x = model(ids, attention_mask=mask)[:, :-1].float()
    tgt = labels[:, 1:]
    valid = tgt != -100
    ce = torch.logsumexp(x, -1) - x.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (ce * valid).sum(1), valid.sum(1)


def run_vs_naive(args, model=None) -> dict:
    """``train_step_vs_naive``: one default training step / the all-position-logits step."""
    n, (p_tok, c_tok) = (2, (30, 40)) if args.quick else (10, (136, 192))
    reps = args.reps or (2 if args.quick else 3)
    model = model or C.get_model(args.dtype)
    st = C.clas_steerer(model)
    pairs = C.shaped_pairs(n, p_tok, c_tok, model)
    enc = encode_pairs(model, pairs)
    own = training.nll_sums

    def step():
        C.cl.train(model, st, pairs, None, epochs=1, progress=False)

    def all_logits():
        training.nll_sums = all_position_nll_sums
        try:
            C.cl.train(model, st, pairs, None, epochs=1, progress=False)
        finally:
            training.nll_sums = own

    def naive():
        with fast_attention(model, enabled=False):
            all_logits()

    with C.PeakRSS() as mon:
        t = C.interleave({"naive": naive, "all_logits": all_logits, "step": step}, reps)
    r = C.ratio(t, "step", "naive")
    r_logits = C.ratio(t, "step", "all_logits")
    return {
        "train_step_vs_naive": r["value"], "train_step_vs_naive_wall": r["wall"],
        "train_step_vs_naive_cpu": r["cpu"], "naive_step_s_cpu": C.med(t["naive"]["cpu"]),
        "step_vs_all_position_logits": r_logits["value"],
        "all_position_logits_step_s_cpu": C.med(t["all_logits"]["cpu"]),
        "step_s_cpu": C.med(t["step"]["cpu"]), "n_examples": n,
        "prompt_tokens": sum(k for _, k in enc), "completion_tokens": sum(len(s) - k for s, k in enc),
        "reps": reps, "peak_rss_mb": round(mon.peak, 1), "rounds_vs_naive": r,
        "rounds_vs_all_position_logits": r_logits,
    }


def main(argv=None):
    return C.main("train_step", run, __doc__, argv)


if __name__ == "__main__":
    main()
