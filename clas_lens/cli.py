"""The ``clas-lens`` command: ``demo``, ``train``, ``bench`` and ``figures``.

Each command is a thin wrapper over a Python function; ``clas-lens CMD --help``
describes it. Usage errors exit with status 2, failures with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _default_bench_path() -> list[str]:
    here = Path.cwd() / ".." / "shared" / "benchmarks"
    return [str(here)] if here.is_dir() else []


def _cmd_demo(args) -> int:
    from clas_lens.demo import run_demo

    run_demo(concept=args.concept, out=args.out, epochs=args.epochs,
             max_new_tokens=args.max_new_tokens, method=args.method)
    return 0


def _cmd_train(args) -> int:
    import clas_lens as cl
    from clas_lens.data import load_concept

    src = Path(args.source)
    if src.is_dir():
        contrast, steer = load_concept(src)
    elif src.suffix.lower() == ".csv":
        steer = cl.SteerSet.from_reference_csv(src)
        contrast = steer.contrast_set()
    else:
        raise cl.DataError(f"{src}: expected a data/<concept> folder or a reference-format CSV")
    model = cl.load_model(args.model)
    layers = None if args.layers is None else [int(x) for x in args.layers.split(",")]
    dirs = cl.fit_directions(model, contrast, method=args.method, layers=layers, seed=args.seed)
    steerer = cl.CLASSteerer(dirs)
    hist = cl.train(model, steerer, steer.train, steer.valid, epochs=args.epochs, seed=args.seed)
    steerer.save(args.out)
    dirs.save(Path(args.out) / "directions")
    print(f"valid loss {hist.valid_losses[0]:.4f} -> {hist.best_valid_loss:.4f} "
          f"(best epoch {hist.best_epoch}); saved to {args.out}")
    return 0


def _cmd_bench(args) -> int:
    from clas_lens.bench.harness import run_benchmarks

    paths = args.paths or _default_bench_path()
    if not paths:
        print("clas-lens bench: no CSV given and ../shared/benchmarks not found", file=sys.stderr)
        return 2
    run_benchmarks(paths, out=args.out, quick=args.quick, methods=args.methods,
                   direction_method=args.direction_method, gen_rows=args.gen_rows,
                   max_new_tokens=args.max_new_tokens)
    return 0


def _cmd_figures(args) -> int:
    from clas_lens.figures import make_figures

    make_figures(out=args.out, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clas-lens", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="fit directions, train CLAS, generate, write heatmaps",
                       description="Run the demo on the embedded model (offline).")
    d.add_argument("--concept", default="data/positive", help="a data/<concept> folder")
    d.add_argument("--out", default="figures", help="folder for demo_strengths.png/.html")
    d.add_argument("--epochs", type=int, default=8)
    d.add_argument("--method", default="mean_diff", help="direction method")
    d.add_argument("--max-new-tokens", type=int, default=40)
    d.set_defaults(fn=_cmd_demo)

    t = sub.add_parser("train", help="train a CLAS steerer and save it",
                       description="Train a CLAS steerer on a data/<concept> folder or a "
                                   "reference-format CSV, and save it.")
    t.add_argument("source", help="data/<concept> folder or reference-format CSV")
    t.add_argument("--out", required=True, help="folder to save the steerer to")
    t.add_argument("--model", default=None, help="model name (default: embedded SmolLM2)")
    t.add_argument("--method", default="rfm", help="direction method")
    t.add_argument("--layers", default=None, help="comma-separated layers (default: all)")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(fn=_cmd_train)

    b = sub.add_parser("bench", help="score steering methods on reference-format benchmarks",
                       description="Run methods x benchmarks and write results.")
    b.add_argument("paths", nargs="*", help="CSV files or folders (default ../shared/benchmarks)")
    b.add_argument("--out", default="results", help="results folder")
    b.add_argument("--quick", action="store_true", help="few rows, few tokens (a smoke run)")
    b.add_argument("--methods", default=None,
                   help="comma-separated subset of base_prompt,steer_prompt,las,las_layerwise,"
                        "clas,reft,lora")
    b.add_argument("--direction-method", default="rfm")
    b.add_argument("--gen-rows", type=int, default=None, help="test rows to generate for")
    b.add_argument("--max-new-tokens", type=int, default=None)
    b.set_defaults(fn=_cmd_bench)

    f = sub.add_parser("figures", help="regenerate every committed figure",
                       description="Regenerate the figures in figures/ on the embedded model.")
    f.add_argument("--out", default="figures")
    f.add_argument("--quick", action="store_true", help="smaller work (for tests)")
    f.set_defaults(fn=_cmd_figures)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``clas-lens``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clas_lens.data import DataError
    from clas_lens.io import ArtifactError
    from clas_lens.model import ModelNotAvailableError

    try:
        return int(args.fn(args) or 0)
    except (DataError, ArtifactError, ModelNotAvailableError, ValueError, FileNotFoundError) as err:
        print(f"clas-lens {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"clas-lens {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
