"""Run every benchmark on the embedded model, print the table, write the summary JSON.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/run_all.py --out results/bench.json

The timing benchmarks share one process (one model load); each memory measurement
runs in a fresh subprocess so its ``ru_maxrss`` is its own. Every bench appends one
JSON line per run to ``<out stem>.jsonl`` (e.g. ``results/bench.jsonl``); the summary
(the headline ratios as plain numbers plus the details) is written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common as C  # noqa: E402

# key, label, target as (op, value)
TARGETS = [
    ("steer_overhead", "steered forward (CLAS, all 30 layers) / plain forward, 8x128", "<=", 1.03),
    ("trace_overhead", "steered forward + full strength trace / plain forward", "<=", 1.10),
    ("train_step_ratio", "one CLAS training step / plain fwd+bwd (one vector per layer)", "<=", 1.15),
    ("gen_ratio_b1", "steered / plain KV-cached greedy tokens/s, batch 1", ">=", 0.90),
    ("gen_ratio_b8", "steered / plain KV-cached greedy tokens/s, batch 8", ">=", 0.90),
    ("sweep_ratio", "full layer sweep / (n_layers x one evaluation pass)", "<=", 0.60),
    ("train_mem_ratio", "peak RSS, training 10 x ~300 tokens / fp32 model size", "<=", 3.0),
    ("train_step_vs_naive", "one CLAS training step / the step before (eager attention, all-position logits)",
     "<=", 0.90),
    ("nll_eval_mem_ratio", "peak RSS, valid evaluation 10 x ~300 tokens / fp32 model size", "<=", 2.6),
    ("las_search_ratio", "LAS coefficient search / 20-value full grid, same pairs", "<=", 0.40),
    ("reference_wall_s", "GSM8K reference run, wall seconds (idle machine only)", "<=", 200.0),
    ("reference_peak_gb", "GSM8K reference run, peak resident GB", "<=", 2.5),
    ("rfm_over_mean_diff_total", "probe directions, 40 prompts: rfm / mean_diff seconds", "<=", 5.0),
]


def ok(v, op, target):
    if v is None or v != v:
        return None
    return v <= target if op == "<=" else v >= target


def run_memory(args, jsonl, micro, script="bench_memory.py", extra=None, threads=None, env=None):
    """Run a bench script in a fresh subprocess (its own VmHWM); return its JSON record.

    ``threads`` overrides ``args.threads`` (the reference run's wall time is measured with
    the library's default threads, as a user would run it on an idle machine); ``env`` adds
    environment variables."""
    extra = ["--micro-batch-size", str(micro)] if extra is None else extra
    cmd = [sys.executable, str(HERE / script), "--json", str(jsonl), *extra, "--dtype", args.dtype]
    if args.quick:
        cmd.append("--quick")
    if args.clock:
        cmd += ["--clock", args.clock]
    n_threads = args.threads if threads is None else threads
    cmd += ["--threads", str(n_threads)]
    run_env = {**os.environ, **(env or {})}
    if n_threads == 0 and C.USER_OMP_WAIT_POLICY is None:  # the library's defaults, all of them
        run_env.pop("OMP_WAIT_POLICY", None)
    out = subprocess.run(cmd, capture_output=True, text=True, env=run_env)
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"{script} {' '.join(extra)} failed")
    line = [x for x in out.stdout.splitlines() if x.startswith("{")][-1]
    return json.loads(line)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/bench.json")
    p.add_argument("--quick", action="store_true", help="small shapes: a smoke test, not the targets")
    p.add_argument("--clock", choices=["cpu", "wall"], default=None,
                   help="headline clock (default cpu: process CPU time, steady on a shared machine)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--only", default=None,
                   help="comma list among forward,train,las,generate,sweep,probes,memory,"
                        "eval_memory,reference (the other measures are kept from an existing "
                        "--out file)")
    p.add_argument("--threads", type=int, default=C.THREADS,
                   help="torch/BLAS threads (default 1: steady on a shared machine; 0 = library default)")
    p.add_argument("--reference-threads", type=int, default=None,
                   help="threads of the GSM8K reference run (default 0: the library default, "
                        "all cores, as its wall-time target assumes an idle machine)")
    p.add_argument("--mem-micro", default="0,4",
                   help="micro_batch_size values for the memory bench (first = headline; "
                        "0 = train()'s default token budget)")
    args = p.parse_args(argv)
    C.setup_clock(args)
    out = Path(args.out)
    jsonl = out.with_suffix(".jsonl")
    t0 = time.perf_counter()
    only = set(args.only.split(",")) if args.only else None
    sub = argparse.Namespace(reps=None, json=str(jsonl), quick=args.quick, clock=args.clock,
                             dtype=args.dtype, threads=args.threads)
    import bench_forward
    import bench_generate
    import bench_las
    import bench_probes
    import bench_sweep
    import bench_train

    records, summary = {}, {}
    if only is None or "memory" in only:
        micros = [int(x) for x in args.mem_micro.split(",") if x]
        for i, m in enumerate(micros):
            print(f"[bench] memory (micro_batch_size={m}, subprocess) ...", flush=True)
            t = time.perf_counter()
            rec = run_memory(args, jsonl, m)
            rec["bench_seconds"] = round(time.perf_counter() - t, 1)
            records["memory" if i == 0 else f"memory_mb{m}"] = rec
            if i > 0:
                summary[f"train_mem_ratio_mb{m}"] = rec["train_mem_ratio"]
        print("[bench] memory (glibc mmap threshold fixed at 64 KiB, subprocess) ...", flush=True)
        rec = run_memory(args, jsonl, micros[0], env={"MALLOC_MMAP_THRESHOLD_": "65536"})
        records["memory_mmap64k"] = rec
        summary["train_mem_ratio_mmap64k"] = rec["train_mem_ratio"]
    for name, script, extra, threads in [
            ("eval_memory", "bench_memory.py", ["--measure", "eval"], None),
            ("reference", "bench_reference.py", [], 0 if args.reference_threads is None
             else args.reference_threads)]:
        if only is None or name in only:
            print(f"[bench] {name} (subprocess) ...", flush=True)
            t = time.perf_counter()
            records[name] = run_memory(args, jsonl, 0, script, extra, threads)
            records[name]["bench_seconds"] = round(time.perf_counter() - t, 1)
    model = None
    for name, mod in [("forward", bench_forward), ("train", bench_train), ("las", bench_las),
                      ("generate", bench_generate), ("sweep", bench_sweep),
                      ("probes", bench_probes)]:
        if only and name not in only:
            continue
        if model is None:
            model = C.get_model(args.dtype)
        t = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        rec = C.emit(name, mod.run(sub, model), str(jsonl))
        rec["bench_seconds"] = round(time.perf_counter() - t, 1)
        records[name] = rec
    if only and out.exists():  # a partial run updates the previous file's other measures
        prev = json.loads(out.read_text())
        for name, r in prev.get("details", {}).items():
            if name.split("_mb")[0] not in only:
                records.setdefault(name, r)
        if "memory" not in only:
            summary.update({k: v for k, v in prev.items() if k.startswith("train_mem_ratio_m")})
    for name, r in records.items():
        if name.startswith("memory_"):  # variants of the memory measure: info only
            continue
        for key, *_ in TARGETS:
            if key in r:
                summary[key] = r[key]
        for key in ("steer_overhead_isolated", "trace_overhead_isolated",
                    "step_vs_all_position_logits"):
            if key in r:
                summary[key] = r[key]
    if out.exists():  # the Ray scaling ratio comes from bench/bench_ray.py: keep it
        kept = json.loads(out.read_text()).get("details", {}).get("ray_scaling")
        if kept:
            records["ray_scaling"] = kept
            summary["ray_scaling"] = kept["ray_scaling"]
    wall = time.perf_counter() - t0
    result = {
        **{k: (float(v) if isinstance(v, (int, float)) else v) for k, v in summary.items()},
        "targets": {k: {"op": op, "target": tv, "value": summary.get(k),
                        "met": ok(summary.get(k), op, tv)} for k, _, op, tv in TARGETS},
        "clock": C.CLOCK, "quick": args.quick, "dtype": args.dtype,
        "wall_seconds": round(wall, 1), "machine": C.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "details": records,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print()
    print("| measure | value | target | met |")
    print("|---|---|---|---|")
    for key, label, op, tv in TARGETS:
        v = summary.get(key)
        met = ok(v, op, tv)
        vs = "n/a" if v is None else f"{v:.3f}"
        print(f"| {label} | {vs} | {op} {tv:g} | {'yes' if met else 'no' if met is not None else '-'} |")
    for key in summary:
        if key.startswith("train_mem_ratio_mb") and key[18:].isdigit():
            print(f"| ({key}: same, micro_batch_size={key[18:]}) | {summary[key]:.3f} | (info) | |")
    if "train_mem_ratio_mmap64k" in summary:
        print(f"| (train_mem_ratio_mmap64k: same, glibc mmap threshold fixed at 64 KiB) | "
              f"{summary['train_mem_ratio_mmap64k']:.3f} | (info) | |")
    if "step_vs_all_position_logits" in summary:
        print(f"| (step_vs_all_position_logits: same step with logits at every position) | "
              f"{summary['step_vs_all_position_logits']:.3f} | (info) | |")
    for key in ("steer_overhead_isolated", "trace_overhead_isolated"):
        if key in summary:
            print(f"| ({key}: steering work alone, timed apart) | {summary[key]:.3f} | (info) | |")
    if "probes" in records:
        pr = records["probes"]
        secs = ", ".join(f"{m} {pr[f'probe_{m}_s_{C.CLOCK}']:.2f}s" for m in
                         ("mean_diff", "logistic", "pca", "rfm"))
        print(f"\nprobe directions, all layers, {pr['n_prompts']} prompts ({C.CLOCK} s, whole "
              f"fit_directions call): {secs}; reading activations alone "
              f"{pr[f'activations_s_{C.CLOCK}']:.2f}s")
    print(f"\nclock: {C.CLOCK}; wall time {wall:.0f} s; summary written to {out}, lines appended to {jsonl}")


if __name__ == "__main__":
    main()
