"""Steered forward (CLAS on every layer) and steered forward recording the full strength
trace, each as a ratio to the plain forward on the same batch (default 8 x 128 tokens).

Variants, timed interleaved under ``torch.inference_mode``:
  plain   ``model(ids)``
  steer   ``with steerer.apply(model): model(ids)``
  trace   ``with steerer.apply(model, recorder=rec): model(ids)`` then stacking the
          strengths and projections into ``[batch, pos, layer, rank]`` tensors
"""

from __future__ import annotations

import common as C  # noqa: I001
import torch

from clas_lens.steerers import Recorder


def isolated_cost(model, st, ids, reps: int) -> dict:
    """CPU seconds per forward of the steering work alone: the 30 ``edit`` calls (and,
    for the trace, recording and stacking) on the residuals a real forward produced.

    The end-to-end ratio's round-to-round noise on a shared machine is several percent,
    as large as the 3% target; this isolates what steering adds (it excludes the
    hook dispatch of the bridge, which the end-to-end ratio includes)."""
    resid = {}
    grab = [(n, (lambda h, hook=None, j=j: resid.__setitem__(j, h.clone()) or h))
            for j, n in enumerate(st.hook_names)]
    with torch.inference_mode(), model.hooks(fwd_hooks=grab):
        model(ids)
    hs = [resid[j] for j in range(len(st.layers))]

    def edits(rec=None):
        with torch.inference_mode():
            for j, h in enumerate(hs):
                new, s, p = st.edit(j, h, 1.0)
                if rec is not None:
                    rec.add(j, s, p)
            if rec is not None:
                rec.stacked("strengths"), rec.stacked("projections")

    edits(), edits(Recorder())  # warm-up
    steer = [C.timed(edits)[1] for _ in range(reps)]
    trace = [C.timed(lambda: edits(Recorder()))[1] for _ in range(reps)]
    return {"steer_s": C.med(steer), "trace_s": C.med(trace)}


def run(args, model=None) -> dict:
    batch, pos = (2, 32) if args.quick else (8, 128)
    reps = args.reps or (2 if args.quick else 9)
    model = model or C.get_model(args.dtype)
    st = C.clas_steerer(model)
    ids = C.random_ids(model, batch, pos)
    shapes = {}

    def plain():
        with torch.inference_mode():
            model(ids)

    def steer():
        with torch.inference_mode(), st.apply(model):
            model(ids)

    def traced():
        rec = Recorder()
        with torch.inference_mode(), st.apply(model, recorder=rec):
            model(ids)
        s, p = rec.stacked("strengths"), rec.stacked("projections")
        shapes["strengths"] = list(s.shape)
        shapes["projections"] = list(p.shape)

    with C.PeakRSS() as mon:
        t = C.interleave({"plain": plain, "steer": steer, "trace": traced}, reps)
    so, to = C.ratio(t, "steer", "plain"), C.ratio(t, "trace", "plain")
    iso = isolated_cost(model, st, ids, reps=5 if args.quick else 20)
    base_cpu = C.med(t["plain"]["cpu"])
    return {
        "steer_overhead": so["value"], "trace_overhead": to["value"],
        "steer_overhead_wall": so["wall"], "steer_overhead_cpu": so["cpu"],
        "trace_overhead_wall": to["wall"], "trace_overhead_cpu": to["cpu"],
        "steer_overhead_isolated": 1 + iso["steer_s"] / base_cpu,
        "trace_overhead_isolated": 1 + iso["trace_s"] / base_cpu,
        "hook_edit_s_per_forward": iso["steer_s"], "hook_trace_s_per_forward": iso["trace_s"],
        "plain_forward_s_wall": C.med(t["plain"]["wall"]),
        "plain_forward_s_cpu": C.med(t["plain"]["cpu"]),
        "batch": batch, "pos": pos, "reps": reps, "n_layers_steered": len(st.layers),
        "trace_shape": shapes.get("strengths"), "dtype": args.dtype,
        "peak_rss_mb": round(mon.peak, 1), "rss_before_mb": round(mon.start, 1),
        "rounds": {"steer": so, "trace": to},
    }


def main(argv=None):
    return C.main("forward", run, __doc__, argv)


if __name__ == "__main__":
    main()
