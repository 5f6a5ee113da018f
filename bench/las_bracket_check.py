"""Does the bracketing LAS search choose the full grid's coefficient on every benchmark?

For each reference CSV (default ``../shared/benchmarks``), with the benchmark harness's
own settings (probe directions as the full grid fits them, kept in and read from
``<cache>/<benchmark>/``; train pairs sorted by length; targets capped at 192 tokens; the
20-value ``las_grid``), runs ``grid_search_las(..., search="full")`` (all 20 values), then
the default bracketing search, ``grid_search_las`` itself, with its evaluations answered
from the full search's NLL at the same coefficient (the evaluation is deterministic, so the
bracket sees exactly the values it would compute, and costs nothing here). Prints one line
per benchmark, with the coefficient the committed grid's ``las`` cell chose where
``results/benchmarks.csv`` has one, and writes a JSON file with both searches'
coefficients, the full NLL curve and the indices the bracket evaluated.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/las_bracket_check.py --out results/las_bracket_check.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def check(model, csv: Path, cache: Path) -> dict:
    """Both searches on one benchmark's train pairs."""
    import clas_lens as cl
    from clas_lens.bench.cell import by_length, target_pairs
    from clas_lens.bench.harness import REPETITION_PENALTY, benchmark_settings, resolve_settings
    from clas_lens.bench.parallel import cell_work
    from clas_lens.training import las_grid, resolve_protocol

    steer = cl.SteerSet.from_reference_csv(csv)
    settings = {**benchmark_settings(model, steer, resolve_settings(False)),
                "repetition_penalty": REPETITION_PENALTY}
    work = cell_work(steer, csv, settings, "rfm", 0, cache)
    dirs, _ = work.directions(model, progress=False)
    rule = resolve_protocol(settings["protocol"])["end_of_turn"]
    pairs = by_length(model, target_pairs(steer.train.prompts, steer.train, rule))
    kw = {"max_completion_tokens": settings["max_completion_tokens"], "end_of_turn": rule,
          "progress": False}
    steerer = cl.LASSteerer(dirs)
    grid = las_grid(model, steerer, pairs, n=int(settings["las_grid_size"]))
    t = time.perf_counter()
    full = cl.grid_search_las(model, steerer, pairs, grid, search="full", **kw)
    t_full = time.perf_counter() - t
    fast, asked = replayed_bracket(model, steerer, pairs, grid, full["nll"], kw)
    best_full = min(range(len(grid)), key=lambda i: full["nll"][i])
    return {"benchmark": steer.name, "grid": grid, "full_nll": full["nll"],
            "full_best": full["best"], "full_best_index": best_full,
            "bracket_best": fast["best"], "bracket_search": fast["search"],
            "bracket_evaluated": fast["evaluated"], "same": fast["best"] == full["best"],
            "full_seconds": t_full, "bracket_evaluations_replayed": asked,
            "nll_gap": (min(v for v in fast["nll"] if not math.isnan(v)) - full["nll"][best_full])}


def replayed_bracket(model, steerer, pairs, grid, nlls, kw) -> tuple[dict, int]:
    """``grid_search_las`` with its default search, each evaluation read from ``nlls``
    (the full search's value at the coefficient the steerer holds when it is asked)."""
    import torch

    import clas_lens as cl
    import clas_lens.training as training

    by_c = {float(torch.tensor(c, dtype=steerer.c.dtype)): v for c, v in zip(grid, nlls)}
    asked = []

    def replay(model, st, pairs, **_):
        asked.append(float(st.c.detach()))
        return by_c[asked[-1]]

    own = training.completion_nll
    training.completion_nll = replay
    try:
        return cl.grid_search_las(model, steerer, pairs, grid, **kw), len(asked)
    finally:
        training.completion_nll = own


def grid_choice(results_csv: Path) -> dict:
    """The ``las_c`` of each benchmark's ``las`` cell in a results CSV (``{}`` without one)."""
    from clas_lens.bench.store import read_results

    return {r["benchmark"]: r.get("las_c") for r in read_results(results_csv)
            if r.get("method") == "las" and r.get("status") == "ok"}


def main(argv=None) -> int:
    import clas_lens as cl
    from clas_lens.bench.harness import find_csvs
    from clas_lens.io import atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="*", default=[str(ROOT.parent / "shared" / "benchmarks")])
    p.add_argument("--cache", default=str(ROOT / "results" / "cache"),
                   help="folder of the harness's per-benchmark cache (directions)")
    p.add_argument("--out", default=str(ROOT / "results" / "las_bracket_check.json"))
    p.add_argument("--results", default=str(ROOT / "results" / "benchmarks.csv"),
                   help="the grid's results, for the coefficient its las cells chose")
    args = p.parse_args(argv)
    model = cl.load_model()
    chosen = grid_choice(Path(args.results))
    results = []
    for csv in find_csvs(args.paths):
        r = check(model, Path(csv), Path(args.cache))
        r["grid_cell_c"] = chosen.get(r["benchmark"])
        results.append(r)
        print(f"{r['benchmark']:>15}: full grid c={r['full_best']:.4g} (index {r['full_best_index']}), "
              f"bracket c={r['bracket_best']:.4g} ({r['bracket_search']}, "
              f"{len(r['bracket_evaluated'])} of {len(r['grid'])} values) -> "
              f"{'same' if r['same'] else 'DIFFERENT'}; grid cell c={r['grid_cell_c']}; "
              f"full search {r['full_seconds']:.0f}s", flush=True)
        atomic_write_text(args.out, json.dumps(results, indent=1))
    n_same = sum(r["same"] for r in results)
    print(f"same coefficient on {n_same} of {len(results)} benchmarks; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
