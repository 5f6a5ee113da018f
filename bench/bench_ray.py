"""Ray scaling: 4 quick benchmark cells on 2 Ray workers x 1 thread against 1 process x 2 threads.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_ray.py \\
        ../shared/benchmarks/JailbreakBench_SteerDataset.csv --out results/bench.json

Both runs start from nothing and end with the results written: the serial run loads the
embedded model and runs the cells one after the other with 2 torch threads; the Ray run
starts a local Ray instance (2 CPUs), two actors that load the model once each with 1
thread, and hands them the cells. The figure is the ratio of wall times, Ray / serial
(below 1: the Ray run is faster). The same cells run in both, so the script also checks
that every cell's ``test_nll`` is identical. The measure is written under the key
``ray_scaling`` of ``--out`` (other keys are kept); each run appends one line to
``<out stem>.jsonl``. The benchmark text never leaves the CSV: only numbers are written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from clas_lens.bench import harness  # noqa: E402
from clas_lens.io import atomic_write_text  # noqa: E402

METHODS = ["base_prompt", "las", "clas", "lora"]


def timed_run(csv: Path, out: Path, *, workers: int, threads: int, address: str | None) -> tuple:
    """One quick run of :data:`METHODS` on ``csv``; ``(wall seconds, rows)``."""
    torch.set_num_threads(threads)
    t = time.perf_counter()
    if workers > 1:
        rows = harness.run_benchmarks([csv], out=out, quick=True, methods=METHODS, figure="",
                                      progress=False, workers=workers, ray_address=address)
    else:
        import clas_lens as cl

        rows = harness.run_benchmarks([csv], out=out, quick=True, methods=METHODS, figure="",
                                      progress=False, model=cl.load_model())
    return time.perf_counter() - t, rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("csv", type=Path, help="one reference-format benchmark CSV")
    p.add_argument("--out", type=Path, default=Path("results/bench.json"))
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: local)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        serial_s, serial = timed_run(args.csv, Path(tmp) / "serial", workers=1, threads=2,
                                     address=None)
        ray_s, par = timed_run(args.csv, Path(tmp) / "ray", workers=2, threads=1,
                               address=args.ray_address)
    by = {r["method"]: r["test_nll"] for r in par}
    nll = {r["method"]: {"serial": r["test_nll"], "ray": by.get(r["method"])} for r in serial}
    res = {
        "ray_scaling": round(ray_s / serial_s, 4),
        "label": "4 quick cells: 2 Ray workers x 1 thread / 1 process x 2 threads, wall time",
        "serial_wall_s": round(serial_s, 1), "ray_wall_s": round(ray_s, 1),
        "cells": METHODS, "benchmark": harness.benchmark_name(args.csv),
        "test_nll": nll, "test_nll_identical": all(v["serial"] == v["ray"] for v in nll.values()),
        "load_avg_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(res, indent=2))
    summary = json.loads(args.out.read_text()) if args.out.is_file() else {}
    summary["ray_scaling"] = res["ray_scaling"]
    summary.setdefault("details", {})["ray_scaling"] = res
    atomic_write_text(args.out, json.dumps(summary, indent=1, default=str) + "\n")
    with open(args.out.with_suffix(".jsonl"), "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"bench": "ray_scaling", **res}) + "\n")
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
