"""LAS coefficient search: the bracketing search / the 20-value full grid, same pairs.

Both runs call ``grid_search_las`` on the same pairs and grid (``las_grid(n=20)``, evenly
spaced from 0 to 4 |h| / L) with mean-difference directions on all layers; the full grid
evaluates all 20 values, the default search (a golden-section search on the grid's indices,
full grid as fallback) at most 6. Timed interleaved; the ratio is the median over rounds.
Also reports whether both chose the same coefficient, which search ran and how many values
it evaluated. By default the pairs are the ``data/positive`` training pairs; ``--benchmark
NAME`` takes the train rows of ``../shared/benchmarks/NAME_SteerDataset.csv`` instead
(directions from its train+valid template contrast, targets capped at 192 tokens as in the
benchmark harness).
"""

from __future__ import annotations

import common as C  # noqa: I001

from clas_lens.training import las_grid


def setting(model, benchmark: str | None, quick: bool):
    """Directions, pairs and target options of the run."""
    if benchmark:
        steer = C.cl.SteerSet.from_reference_csv(
            C.ROOT.parent / "shared" / "benchmarks" / f"{benchmark}_SteerDataset.csv")
        contrast, pairs, kw = steer.contrast_set(("train", "valid")), steer.train.pairs, \
            {"max_completion_tokens": 192}
    else:
        contrast, steer = C.cl.load_concept(C.ROOT / "data" / "positive")
        pairs, kw = steer.train.pairs, {}
    if quick:
        pairs = pairs[:2]
    dirs = C.cl.fit_directions(model, contrast, method="mean_diff", progress=False)
    return dirs, pairs, kw


def run(args, model=None) -> dict:
    reps = args.reps or (1 if args.quick else 3)
    model = model or C.get_model(args.dtype)
    dirs, pairs, kw = setting(model, getattr(args, "benchmark", None), args.quick)
    grid = las_grid(model, C.cl.LASSteerer(dirs), pairs, n=20)
    out = {}

    def full():
        out["full"] = C.cl.grid_search_las(model, C.cl.LASSteerer(dirs), pairs, grid, search="full",
                                           progress=False, **kw)

    def fast():
        out["fast"] = C.cl.grid_search_las(model, C.cl.LASSteerer(dirs), pairs, grid, progress=False,
                                           **kw)

    t = C.interleave({"full": full, "fast": fast}, reps, warmup=0)
    r = C.ratio(t, "fast", "full")
    f, g = out["full"], out["fast"]
    return {
        "las_search_ratio": r["value"], "las_search_ratio_wall": r["wall"],
        "las_search_ratio_cpu": r["cpu"], "same_coefficient": f["best"] == g["best"],
        "best_full": f["best"], "best_search": g["best"], "search": g["search"],
        "evaluated": len(g["evaluated"]), "grid_size": len(grid),
        "best_index_full": grid.index(f["best"]), "full_nll": [round(x, 5) for x in f["nll"]],
        "full_s_cpu": C.med(t["full"]["cpu"]), "search_s_cpu": C.med(t["fast"]["cpu"]),
        "n_pairs": len(pairs), "benchmark": getattr(args, "benchmark", None) or "data/positive",
        "reps": reps, "dtype": args.dtype, "rounds": r,
    }


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--benchmark", default=None,
                   help="a shared benchmark name (GSM8K, JailbreakBench, ...) instead of data/positive")
    return C.main("las_search", run, __doc__, argv, p)


if __name__ == "__main__":
    main()
