"""Peak resident memory of CLAS training on 10 examples of ~300 tokens / fp32 model size.

Run it in a fresh process (run_all.py does). The peak is ``VmHWM``, the high-water
mark of the whole process image, model loading included; nothing is subtracted, and
the RSS right after loading is reported beside it. (``ru_maxrss`` is reported too but
is not used: Linux carries it over fork+exec, so a child of a big parent inherits the
parent's RSS.) Training uses ``train()``'s defaults: micro-batches of at most
``micro_batch_tokens=512`` padded tokens, i.e. one ~300-token example per micro-batch
here (``--micro-batch-size N`` forces N examples per micro-batch instead).

``--measure eval`` gives ``nll_eval_mem_ratio`` instead: the same peak for one valid
evaluation (``completion_nll`` with its defaults, as ``train()`` runs it after each epoch)
of 10 pairs of ~300 tokens / fp32 model size.
"""

from __future__ import annotations

import common as C  # noqa: I001
import torch


def run(args) -> dict:
    n, tokens = (4, 120) if args.quick else (10, 300)
    epochs = 1
    rss_imports = C.rss_mb()
    model = C.get_model(args.dtype)
    rss_loaded, peak_loaded = C.rss_mb(), C.hwm_mb()
    # the weights are memory-mapped from safetensors: a first (one-token) forward pages
    # them all in, so this is the resident size of the usable model
    with torch.inference_mode():
        model(torch.tensor([[1]]))
    rss_warm = C.rss_mb()
    pairs = C.long_pairs(n, tokens, model)
    st = C.clas_steerer(model)
    weights = [p for p in model.parameters()]
    if getattr(args, "measure", "train") == "eval":
        return run_eval(args, model, pairs, st, rss_warm)
    with C.PeakRSS() as mon:
        w0, c0 = C.time.perf_counter(), C.time.process_time()
        hist = C.cl.train(model, st, pairs, None, epochs=epochs, progress=False,
                          micro_batch_size=args.micro_batch_size or None)
        wall, cpu = C.time.perf_counter() - w0, C.time.process_time() - c0
    param_mb = C.param_bytes_fp32(model) / 2**20
    peak = C.hwm_mb()
    weight_grads = sum(p.grad is not None for p in weights)
    weight_requires_grad = sum(p.requires_grad for p in weights)
    return {
        "train_mem_ratio": peak / param_mb,
        "peak_rss_mb": round(peak, 1), "ru_maxrss_mb": round(C.maxrss_mb(), 1),
        "peak_rss_during_train_mb": round(mon.peak, 1),
        "rss_after_imports_mb": round(rss_imports, 1),
        "rss_after_load_mb": round(rss_loaded, 1),
        "rss_after_first_forward_mb": round(rss_warm, 1),
        "warm_model_ratio": rss_warm / param_mb,
        "maxrss_after_load_mb": round(peak_loaded, 1),
        "fp32_param_mb": round(param_mb, 1),
        "train_extra_mb": round(peak - rss_warm, 1),
        "n_examples": n, "tokens_per_example": tokens, "epochs": epochs,
        "micro_batch_size": hist.settings["micro_batch_size"],
        "micro_batch_tokens": hist.settings.get("micro_batch_tokens"),
        "train_seconds_wall": round(wall, 2), "train_seconds_cpu": round(cpu, 2),
        "weight_grads_allocated": int(weight_grads),
        "weight_requires_grad": int(weight_requires_grad),
        "dtype": args.dtype, "torch_threads": torch.get_num_threads(),
        "weights_frozen_after": all(not p.requires_grad for p in weights),
    }


def run_eval(args, model, pairs, st, rss_warm) -> dict:
    """Peak of one valid evaluation (``completion_nll``, steered, its defaults)."""
    with C.PeakRSS() as mon:
        w0, c0 = C.time.perf_counter(), C.time.process_time()
        loss = C.cl.completion_nll(model, st, pairs)
        wall, cpu = C.time.perf_counter() - w0, C.time.process_time() - c0
    param_mb = C.param_bytes_fp32(model) / 2**20
    peak = C.hwm_mb()
    return {
        "nll_eval_mem_ratio": peak / param_mb, "peak_rss_mb": round(peak, 1),
        "peak_rss_during_eval_mb": round(mon.peak, 1), "fp32_param_mb": round(param_mb, 1),
        "rss_after_first_forward_mb": round(rss_warm, 1), "warm_model_ratio": rss_warm / param_mb,
        "eval_extra_mb": round(peak - rss_warm, 1), "valid_loss": loss, "n_examples": len(pairs),
        "eval_seconds_wall": round(wall, 2), "eval_seconds_cpu": round(cpu, 2), "dtype": args.dtype,
    }


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--micro-batch-size", type=int, default=0,
                   help="train()'s micro_batch_size (0: its default token budget)")
    p.add_argument("--measure", choices=["train", "eval"], default="train",
                   help="train: one epoch of train() (train_mem_ratio); eval: one valid "
                        "evaluation (nll_eval_mem_ratio)")
    args = p.parse_known_args(argv)[0]
    return C.main("memory" if args.measure == "train" else "eval_memory", run, __doc__, argv, p)


if __name__ == "__main__":
    main()
