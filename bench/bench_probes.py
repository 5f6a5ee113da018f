"""Probe directions for all layers from 40 contrast prompts, each of the 4 methods:
seconds of the whole ``fit_directions`` call per method (reading the activations
included), and of the fitting alone on precomputed activations.
Target: rfm within 5x of mean_diff (whole call).
"""

from __future__ import annotations

import common as C  # noqa: I001

from clas_lens.data import ContrastSet
from clas_lens.directions import PROBE_METHODS, fit_directions, resid_activations


def run(args, model=None) -> dict:
    n = 12 if args.quick else 40
    model = model or C.get_model(args.dtype)
    contrast, _ = C.cl.load_concept(C.ROOT / "data" / "positive")
    sub = ContrastSet(contrast.prompts[:n], contrast.labels[:n],
                      None if contrast.pair_ids is None else contrast.pair_ids[:n],
                      contrast.name) if len(contrast.prompts) > n else contrast
    out = {}
    ck = C.CLOCK
    with C.PeakRSS() as mon:
        box = {}
        w, c = C.timed(lambda: box.setdefault(
            "a", resid_activations(model, sub.prompts, None, position="last")))
        out["activations_s_wall"], out["activations_s_cpu"] = w, c
        for m in PROBE_METHODS:  # the whole call: activations + one direction per layer
            w, c = C.timed(lambda m=m: fit_directions(model, sub, m, progress=False))
            out[f"probe_{m}_s_wall"], out[f"probe_{m}_s_cpu"] = w, c
        for m in PROBE_METHODS:  # fitting only, on the activations read above
            w, c = C.timed(lambda m=m: fit_directions(model, sub, m, progress=False,
                                                      activations=box["a"]))
            out[f"fit_only_{m}_s_wall"], out[f"fit_only_{m}_s_cpu"] = w, c
    out["rfm_over_mean_diff_total"] = out[f"probe_rfm_s_{ck}"] / out[f"probe_mean_diff_s_{ck}"]
    return {**out, "n_prompts": len(sub.prompts), "n_layers": int(model.cfg.n_layers),
            "peak_rss_mb": round(mon.peak, 1), "rss_before_mb": round(mon.start, 1)}


def main(argv=None):
    return C.main("probes", run, __doc__, argv)


if __name__ == "__main__":
    main()
