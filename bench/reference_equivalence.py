"""Does ``train(..., protocol="reference")`` reproduce the CLAS reference trainer?

Runs the GSM8K setting whose valid losses were measured with the reference code on
SmolLM2-135M-Instruct (fp32) and prints ours beside them, step by step:

- mean-difference directions from the 40 template prompts of rows 0-19 (the block
  output ``blocks.{l}.hook_resid_post`` at the last prompt token, unit norm, toward
  the steer template; all 40 prompts used, none held out);
- CLAS on all 30 layers, full batch, AdamW (``w`` 3e-3, ``b`` 0.1, weight decay 0),
  8 epochs (= 8 steps), the reference protocol (targets not capped, end-of-turn only
  where the target carries the marker, gradient norm clipped at 1.0, valid loss at
  steps 0, 2, 4, 6, 8);
- the valid loss is the token mean over the 10 valid pairs.

It passes when the largest deviation is at most 0.005. Reads
``../shared/benchmarks/GSM8K_SteerDataset.csv`` (or the path given); a benchmark
script, not a test. Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/reference_equivalence.py [CSV]
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import clas_lens as cl  # noqa: E402
from clas_lens.directions import direction_from_features, resid_activations  # noqa: E402

#: valid loss of the reference code at optimiser steps 0, 2, 4, 6, 8 (measured on this
#: kind of machine with the setting above)
REFERENCE = {0: 1.0073, 2: 0.9825, 4: 0.9564, 6: 0.9433, 8: 0.9380}
TOLERANCE = 0.005
DEFAULT_CSV = ROOT.parent / "shared" / "benchmarks" / "GSM8K_SteerDataset.csv"


def mean_diff_directions(model, contrast: cl.ContrastSet) -> cl.Directions:
    """Mean-difference directions on every prompt of ``contrast`` (nothing held out)."""
    acts = resid_activations(model, contrast.prompts, position="last")
    y = np.asarray(contrast.labels)
    vecs = torch.stack([torch.from_numpy(direction_from_features(
        acts[:, j].double().numpy(), y, "mean_diff")).float() for j in range(acts.shape[1])])
    n_layers, d_model = int(model.cfg.n_layers), int(model.cfg.d_model)
    # no held-out prompts: the accuracy is not measured
    return cl.Directions(vecs, torch.full((n_layers,), float("nan")), list(range(n_layers)),
                         "mean_diff", str(model.cfg.model_name), n_layers, d_model,
                         contrast.name)


def main(argv: list[str]) -> int:
    path = Path(argv[0]) if argv else DEFAULT_CSV
    if not path.is_file():
        print(f"reference_equivalence: {path} not found (pass the GSM8K CSV path)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    model = cl.load_model(dtype=torch.float32)
    steer = cl.SteerSet.from_reference_csv(path)
    contrast = steer.contrast_set(("train", "valid"))
    dirs = mean_diff_directions(model, contrast)
    steerer = cl.CLASSteerer(dirs)
    hist = cl.train(model, steerer, steer.train, steer.valid, epochs=8, lr={"W": 3e-3, "b": 0.1},
                    weight_decay=0.0, protocol="reference", progress=False)
    wall = time.perf_counter() - t0
    ours = {v["step"]: v["valid_loss"] for v in hist.valid}
    print(f"GSM8K, {len(contrast)} template prompts, {len(steer.train)} train / "
          f"{len(steer.valid)} valid pairs, CLAS on {len(dirs.layers)} layers, "
          f"protocol={hist.settings['protocol']} (end_of_turn={hist.settings['end_of_turn']}, "
          f"clip_grad_norm={hist.settings['clip_grad_norm']}, "
          f"eval_steps={hist.settings['eval_steps']})")
    print(f"{'step':>4}  {'ours':>8}  {'reference':>9}  {'deviation':>9}")
    worst = 0.0
    for step, ref in REFERENCE.items():
        mine = ours.get(step, float("nan"))
        dev = abs(mine - ref)
        worst = max(worst, dev) if np.isfinite(dev) else float("inf")
        print(f"{step:>4}  {mine:>8.4f}  {ref:>9.4f}  {dev:>9.4f}")
    print(f"largest deviation {worst:.4f} (tolerance {TOLERANCE}): "
          f"{'PASS' if worst <= TOLERANCE else 'FAIL'}")
    print(f"kept step {hist.best_step} (valid loss {hist.best_valid_loss:.4f})")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wall time {wall:.0f} s (model load, directions and training; {os.cpu_count()} "
          f"CPU cores shared with other jobs), peak resident memory {peak_mb:.0f} MB")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
