"""Full single-layer LAS sweep over every layer / (n_layers x n_coefficients x one full
evaluation pass).

Sweep: ``clas_lens.analysis.layer_sweep_las(model, dirs, pairs, coefficients)`` with its
defaults (``cached=True``: one unsteered pass whose residuals are cached, then each
layer's steered residual is resumed from that layer on, plus one verification pass).
One full evaluation pass: ``completion_nll`` on the same pairs with a LAS steerer on one
layer, i.e. what an uncached sweep runs once per (layer, coefficient). The two are
timed interleaved (pass, sweep, pass, sweep, ...) and each sweep is divided by
``n_layers x n_coefficients x`` the mean of the passes on either side of it.
"""

from __future__ import annotations

import common as C  # noqa: I001

from clas_lens.losses import encode_pairs
from clas_lens.steerers import LASSteerer


def run(args, model=None) -> dict:
    from clas_lens.analysis import layer_sweep_las

    n_pairs = 2 if args.quick else 4
    coefs = [4.0] if args.quick else [4.0]
    reps = args.reps or (1 if args.quick else 3)
    model = model or C.get_model(args.dtype)
    dirs = C.random_directions(model)
    _, steer = C.cl.load_concept(C.ROOT / "data" / "positive")
    pairs = steer.train.pairs[:n_pairs]
    L = len(dirs.layers)
    one = LASSteerer(dirs, layers=[L // 2]).set(coefs[0])

    def one_pass():
        C.cl.completion_nll(model, one, pairs, batch_size=16)

    def sweep():
        layer_sweep_las(model, dirs, pairs, coefs)

    one_pass()  # warm-up
    passes, sweeps = {"wall": [], "cpu": []}, {"wall": [], "cpu": []}
    with C.PeakRSS() as mon:
        for ck, v in zip(("wall", "cpu"), C.timed(one_pass)):
            passes[ck].append(v)
        for _ in range(reps):
            for ck, v in zip(("wall", "cpu"), C.timed(sweep)):
                sweeps[ck].append(v)
            for ck, v in zip(("wall", "cpu"), C.timed(one_pass)):
                passes[ck].append(v)
    res = {}
    for ck in ("wall", "cpu"):
        rs = [s / (L * len(coefs) * 0.5 * (passes[ck][i] + passes[ck][i + 1]))
              for i, s in enumerate(sweeps[ck])]
        res[ck] = C.med(rs)
        res[ck + "_all"] = [round(x, 4) for x in rs]
    n_tok = sum(len(s) - k for s, k in encode_pairs(model, pairs))
    return {
        "sweep_ratio": res[C.CLOCK], "sweep_ratio_wall": res["wall"], "sweep_ratio_cpu": res["cpu"],
        "one_pass_s_wall": C.med(passes["wall"]), "one_pass_s_cpu": C.med(passes["cpu"]),
        "sweep_s_wall": C.med(sweeps["wall"]), "sweep_s_cpu": C.med(sweeps["cpu"]),
        "n_layers": L, "n_coefficients": len(coefs), "n_pairs": n_pairs, "reps": reps,
        "completion_tokens": n_tok, "dtype": args.dtype,
        "peak_rss_mb": round(mon.peak, 1), "rss_before_mb": round(mon.start, 1), "rounds": res,
    }


def main(argv=None):
    return C.main("sweep", run, __doc__, argv)


if __name__ == "__main__":
    main()
