"""Matrix-product floor of the GSM8K cells of the benchmark grid on this machine.

Counts the tokens each of the seven cells (``base_prompt``, ``steer_prompt``, ``las``,
``las_layerwise``, ``clas``, ``reft``, ``lora``) runs through SmolLM2-135M under the grid's
settings (``clas_lens`` protocol, targets capped at ``max_completion_tokens``, 8 full-batch
epochs with a valid loss after each (the unsteered one before the first is computed once per
benchmark, in the ``las`` cell), the 50 test rows, the prompts of
the ``--gen-rows`` generated rows) and the float32 multiply-adds of the model's linear layers
per token. The unembedding counts only at the rows the loss needs (one row per prompt in a
generation's prefill); a backward pass counts its input gradients through every block but
the first (the steerers' weights stay frozen). Each layer shape's time comes from the
matrix-product throughput measured in this process on that shape (fastest of
``--reps`` rounds). Attention, norms, element-wise work, Python and the generated tokens
are left out, so the result is a lower bound on the cell time of any exact float32
implementation that does the same work on this machine. ``--cells DIR`` prints the times a
``clas-lens bench`` run recorded in ``DIR/benchmarks.csv`` beside it.

Example:
    HF_HUB_OFFLINE=1 .venv/bin/python bench/grid_floor.py --threads 0 --cells /tmp/gsm_cells
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import common as C  # noqa: I001  (first: it sets the threading environment)
from reference_equivalence import DEFAULT_CSV

TRAINED = ("las_layerwise", "clas", "reft", "lora")


def _rate(shape_in: int, shape_out: int, rows: int, reps: int) -> tuple[float, float]:
    """Seconds per row of ``x @ W.T`` and of ``g @ W`` for a ``[out, in]`` weight."""
    import torch

    w = torch.randn(shape_out, shape_in)
    x, g = torch.randn(rows, shape_in), torch.randn(rows, shape_out)
    best = [float("inf"), float("inf")]
    for _ in range(reps):
        for k, fn in enumerate((lambda: x @ w.t(), lambda: g @ w)):
            fn()
            t = time.perf_counter()
            for _ in range(5):
                fn()
            best[k] = min(best[k], (time.perf_counter() - t) / 5 / rows)
    return best[0], best[1]


def _linear_shapes(model) -> list[tuple[int, int]]:
    """``(in, out)`` of every 2-D weight in the blocks (each parameter once)."""
    seen, out = set(), []
    for p in model.blocks.parameters():
        if p.ndim == 2 and id(p) not in seen:
            seen.add(id(p))
            out.append((int(p.shape[1]), int(p.shape[0])))
    return out


def _tokens(model, pairs, cap) -> tuple[int, int]:
    """Total tokens and completion tokens of the encoded pairs (grid protocol)."""
    from clas_lens.losses import encode_pairs

    enc = encode_pairs(model, pairs, max_completion_tokens=cap, end_of_turn="always")
    return sum(len(s) for s, _ in enc), sum(len(s) - n for s, n in enc)


def run(args) -> dict:
    import clas_lens as cl
    from clas_lens.bench.cell import target_pairs, test_rows
    from clas_lens.bench.harness import resolve_settings
    from clas_lens.model import chat_ids

    model = C.get_model("float32")
    steer = cl.SteerSet.from_reference_csv(args.csv or DEFAULT_CSV)
    s = resolve_settings(False, gen_rows=args.gen_rows)
    cap, epochs = s["max_completion_tokens"], int(s["epochs"])
    test, idx = test_rows(steer, s)
    n_layers, d, vocab = int(model.cfg.n_layers), int(model.cfg.d_model), int(model.cfg.d_vocab)

    shapes = _linear_shapes(model)
    per_layer = len(shapes) // n_layers
    rows = args.rows
    fwd_s = bwd_s = 0.0
    for i, o in set(shapes):
        f, b = _rate(i, o, rows, args.reps)
        count = shapes.count((i, o))
        fwd_s, bwd_s = fwd_s + count * f, bwd_s + count * b
    head_f, head_b = _rate(d, vocab, 64, args.reps)
    bwd_s *= (n_layers - 1) / n_layers  # no input gradient through the first block

    train = _tokens(model, target_pairs(steer.train.prompts, steer.train, "always"), cap)
    valid = _tokens(model, target_pairs(steer.valid.prompts, steer.valid, "always"), cap)
    tests = _tokens(model, target_pairs(list(test.prompts), test, "always"), cap)
    every_steer_prompt = steer.steer_prompts()
    sp_prompts = [every_steer_prompt[i] for i in idx]
    sp = _tokens(model, target_pairs(sp_prompts, test, "always"), cap)
    n_gen = int(s["gen_rows"]) if s["gen_rows"] is not None else len(test)

    def prefill(prompts):
        return sum(len(chat_ids(model, p)) for p in prompts[:n_gen]) * fwd_s + n_gen * head_f

    def forward(tok):
        return tok[0] * fwd_s + tok[1] * head_f

    step = train[0] * (fwd_s + bwd_s) + train[1] * (head_f + head_b)
    las_prompts = sum(len(chat_ids(model, p)) for p in steer.train.prompts)
    floor = {
        "base_prompt": forward(tests) + prefill(list(test.prompts)),
        "steer_prompt": forward(sp) + prefill(sp_prompts),
        # grid scale (prompts, no head), the unsteered valid loss (computed once per
        # benchmark, shared with the trained cells' step 0), the search's train evaluations;
        # at c = 0 (as on GSM8K) the valid loss after and the test rows are reused
        "las": las_prompts * fwd_s + forward(valid) + args.las_evals * forward(train),
    }
    for m in TRAINED:
        floor[m] = epochs * step + epochs * forward(valid) + forward(tests) + \
            prefill(list(test.prompts))
    total = sum(floor.values())
    gflops = 2 * sum(i * o for i, o in shapes) / fwd_s / 1e9
    out = {"floor_seconds": {k: round(v, 1) for k, v in floor.items()},
           "floor_total_s": round(total, 1), "body_gflops_fwd": round(gflops, 1),
           "body_gflops_bwd": round(2 * sum(i * o for i, o in shapes) * (n_layers - 1)
                                    / n_layers / bwd_s / 1e9, 1),
           "head_gflops_fwd": round(2 * d * vocab / head_f / 1e9, 1),
           "tokens": {"train": train, "valid": valid, "test": tests, "steer_prompt_test": sp},
           "linears_per_layer": per_layer, "gen_rows": n_gen, "epochs": epochs}
    if args.cells:
        with open(Path(args.cells) / "benchmarks.csv") as f:
            got = {r["method"]: float(r["cell_seconds"]) for r in csv.DictReader(f)
                   if "GSM8K" in r.get("benchmark", "")}
        out["measured_seconds"] = {k: round(v, 1) for k, v in got.items()}
        out["measured_total_s"] = round(sum(got.values()), 1)
    for k, v in floor.items():
        meas = out.get("measured_seconds", {}).get(k)
        print(f"{k:>14}: floor {v:6.1f} s" + (f", measured {meas:6.1f} s" if meas else ""))
    print(f"{'total':>14}: floor {total:6.1f} s" +
          (f", measured {out['measured_total_s']:6.1f} s" if args.cells else ""))
    return out


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--csv", default=None, help="the GSM8K CSV (default ../shared/benchmarks/...)")
    p.add_argument("--gen-rows", type=int, default=8, help="generated test rows per cell")
    p.add_argument("--rows", type=int, default=320, help="rows of the timed products")
    p.add_argument("--las-evals", type=int, default=6,
                   help="train-NLL evaluations of the LAS search (6 on every shared benchmark)")
    p.add_argument("--cells", default=None, help="a bench output folder to compare with")
    p.set_defaults(reps=5)
    return C.main("grid_floor", run, __doc__, argv, p)


if __name__ == "__main__":
    main()
