"""Cell time of the benchmark grid's seven GSM8K cells: this checkout against an earlier commit.

Runs ``clas-lens bench <csv> --gen-rows 8 --max-new-tokens 64`` (the settings of the
grid's performance target) in two fresh processes, one after the other on the same
machine: first the code of ``--before`` (a temporary git worktree, imported through
``PYTHONPATH``), then this checkout, each into a new folder. Prints each method's cell
seconds and test NLL, both totals and after / before, and appends them to ``--json``.
``--before-dir`` / ``--after-dir`` take runs already finished (their ``benchmarks.csv``)
instead of running them (``--after`` then names the commit that ran the folder's cells). Both runs
together take about 45 minutes on 2 cores; the ratio means something only on an otherwise
idle machine. ``--quick`` adds ``--quick`` to both runs (a smoke test of the script).

Example:
    HF_HUB_OFFLINE=1 .venv/bin/python bench/grid_cells.py --before fe56bca \\
        --json results/grid_cells.jsonl
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import common as C  # noqa: I001  (first: it sets the threading environment)
from reference_equivalence import DEFAULT_CSV

ROOT = Path(__file__).resolve().parent.parent
ARGS = ("--gen-rows", "8", "--max-new-tokens", "64")


def cells(folder) -> dict[str, dict]:
    """``{method: {"seconds", "test_nll"}}`` of a finished ``clas-lens bench`` folder."""
    path = Path(folder) / "benchmarks.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmarks.csv in {folder}")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("status") == "ok"]
    return {r["method"]: {"seconds": float(r["cell_seconds"]), "test_nll": float(r["test_nll"])}
            for r in rows}


def bench(src: Path, data: Path, out: Path, quick: bool) -> None:
    """``clas-lens bench`` of the code in ``src`` (imported first) into ``out``."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # as a user runs it
    if C.USER_OMP_WAIT_POLICY is not None:
        env["OMP_WAIT_POLICY"] = C.USER_OMP_WAIT_POLICY
    env.update(PYTHONPATH=str(src), HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, "-m", "clas_lens.cli", "bench", str(data), *ARGS,
                    *(["--quick"] if quick else []), "--out", str(out)], cwd=src, env=env,
                   check=True)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def run(args) -> dict:
    data = Path(args.csv or DEFAULT_CSV).resolve()
    work = Path(tempfile.mkdtemp(prefix="grid_cells-"))
    before_dir, after_dir = args.before_dir, args.after_dir
    if before_dir is None:
        src = work / "before-src"
        git("worktree", "add", "--detach", str(src), args.before)
        try:
            before_dir = work / "before"
            bench(src, data, before_dir, args.quick)
        finally:
            git("worktree", "remove", "--force", str(src))
    if after_dir is None:
        after_dir = work / "after"
        bench(ROOT, data, after_dir, args.quick)
    b, a = cells(before_dir), cells(after_dir)
    methods = [m for m in a if m in b]
    for m in methods:
        print(f"{m:>14}: {b[m]['seconds']:7.1f} s -> {a[m]['seconds']:7.1f} s   "
              f"test NLL {b[m]['test_nll']:.6f} -> {a[m]['test_nll']:.6f}")
    tb, ta = sum(b[m]["seconds"] for m in methods), sum(a[m]["seconds"] for m in methods)
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    head = git("rev-parse", "--short", "HEAD") + ("+" if dirty else "")
    return {"before": args.before, "after": head if args.after_dir is None else args.after,
            "before_dir": args.before_dir, "after_dir": args.after_dir,
            "settings": " ".join(ARGS) + (" --quick" if args.quick else ""),
            "before_s": {m: round(b[m]["seconds"], 1) for m in methods},
            "after_s": {m: round(a[m]["seconds"], 1) for m in methods},
            "test_nll_before": {m: b[m]["test_nll"] for m in methods},
            "test_nll_after": {m: a[m]["test_nll"] for m in methods},
            "before_total_s": round(tb, 1), "after_total_s": round(ta, 1),
            "after_over_before": round(ta / tb, 3)}


def main(argv=None) -> dict:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--before", default="fe56bca", help="the commit to compare with")
    p.add_argument("--csv", default=None, help="the GSM8K CSV (default ../shared/benchmarks/...)")
    p.add_argument("--before-dir", default=None, help="a finished run of the --before code")
    p.add_argument("--after-dir", default=None, help="a finished run of this checkout")
    p.add_argument("--after", default=None, help="the commit that made --after-dir")
    return C.main("grid_cells", run, __doc__, argv, p)


if __name__ == "__main__":
    main()
