"""The ``clas-lens`` command: ``demo``, ``train``, ``bench``, ``report`` and ``figures``.

Each command is a thin wrapper over a Python function; ``clas-lens CMD --help``
describes it. Usage errors (a bad option value, an unknown method or layer list)
exit with status 2 and the command's usage line; failures (bad data files, corrupt
artifacts, an unavailable model, a non-finite training loss) exit with status 1 and
one ``clas-lens CMD: error: ...`` line; an interrupt exits with status 130.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import urllib.parse
from pathlib import Path


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is less than {low}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _http_url(text: str) -> str:
    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected an http:// or https:// URL, e.g. http://127.0.0.1:8000/v1")
    return text.strip()


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a model name, got an empty string")
    return text


def _layer_list(text: str) -> list[int]:
    parts = [x.strip() for x in text.split(",")]
    if not text.strip() or any(not x for x in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated layer numbers, e.g. 8,12")
    try:
        return [int(x) for x in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected comma-separated layer numbers, e.g. 8,12") from None


def _check_direction_method(args, method: str, option: str = "--method") -> None:
    from clas_lens.directions import PROBE_METHODS

    if method not in PROBE_METHODS:
        args._parser.error(f"argument {option}: unknown direction method {method!r} "
                           f"(choose from {', '.join(sorted(PROBE_METHODS))})")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that, once a command line is parsed, runs ``check(parser, args)``:
    the place for rules that tie options together (it reports with ``parser.error``)."""

    def __init__(self, *a, check=None, **kw):
        super().__init__(*a, **kw)
        self._check = check

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if self._check is not None:
            self._check(self, namespace)
        return namespace, extras


def _check_bench_judge(parser: argparse.ArgumentParser, args) -> None:
    """``--judge-model`` needs ``--judge-url``; with a URL the model name defaults to ``judge``."""
    if args.judge_url is None:
        if args.judge_model is not None:
            parser.error("argument --judge-model: needs --judge-url, the endpoint that serves "
                         "the judge model")
    elif args.judge_model is None:
        args.judge_model = "judge"


def _default_bench_path() -> list[str]:
    here = Path.cwd() / ".." / "shared" / "benchmarks"
    return [str(here)] if here.is_dir() else []


def _cmd_demo(args) -> int:
    from clas_lens.data import load_concept
    from clas_lens.demo import run_demo
    from clas_lens.io import ArtifactError

    _check_direction_method(args, args.method)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"--out {out} exists and is not a folder")
    load_concept(args.concept)  # bad data fails now, not after loading the model

    run_demo(concept=args.concept, out=args.out, epochs=args.epochs,
             max_new_tokens=args.max_new_tokens, method=args.method)
    return 0


def _cmd_train(args) -> int:
    import clas_lens as cl
    from clas_lens.data import load_concept

    _check_direction_method(args, args.method)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise cl.ArtifactError(f"--out {out} exists and is not a folder")
    src = Path(args.source)
    if not src.exists():
        raise cl.DataError(f"{src}: no such file or folder")
    if src.is_dir():
        contrast, steer = load_concept(src)
    elif src.suffix.lower() == ".csv":
        steer = cl.SteerSet.from_reference_csv(src)
        contrast = None  # template or response contrast, chosen once the model is loaded
    else:
        raise cl.DataError(f"{src}: expected a data/<concept> folder or a reference-format CSV")
    model = cl.load_model(args.model)
    if contrast is None:
        from clas_lens.contrast import choose_contrast

        contrast = choose_contrast(model, steer)
    dirs = cl.fit_directions(model, contrast, method=args.method, layers=args.layers,
                             seed=args.seed)
    steerer = cl.CLASSteerer(dirs)
    # train() records its settings, seed and best epoch in steerer.cfg.training (saved in cfg.json)
    hist = cl.train(model, steerer, steer.train, steer.valid, epochs=args.epochs, seed=args.seed,
                    protocol=args.protocol)
    steerer.save(args.out)
    dirs.save(Path(args.out) / "directions")
    # what `clas-lens report RUN` answers and scales: held-out prompts and the valid pairs
    from clas_lens.io import atomic_write_text
    atomic_write_text(Path(args.out) / "prompts.json", json.dumps(
        {"prompts": list(steer.test.prompts), "pairs": [list(p) for p in steer.valid.pairs]}, indent=1))
    print(f"valid loss {hist.valid_losses[0]:.4f} -> {hist.best_valid_loss:.4f} "
          f"(best epoch {hist.best_epoch}); saved to {args.out}")
    return 0


def _cmd_bench(args) -> int:
    from clas_lens.bench.harness import parse_methods, run_benchmarks

    if args.methods is not None:
        try:
            parse_methods(args.methods)
        except ValueError as err:
            args._parser.error(f"argument --methods: {err}")
    _check_direction_method(args, args.direction_method, "--direction-method")
    paths = args.paths or _default_bench_path()
    if not paths:
        print("clas-lens bench: no CSV given and ../shared/benchmarks not found", file=sys.stderr)
        return 2
    run_benchmarks(paths, out=args.out, quick=args.quick, methods=args.methods,
                   direction_method=args.direction_method, gen_rows=args.gen_rows,
                   max_new_tokens=args.max_new_tokens,
                   max_new_tokens_cap=args.max_new_tokens_cap, protocol=args.protocol,
                   workers=args.workers, ray_address=args.ray_address,
                   judge_url=args.judge_url, judge_model=args.judge_model,
                   judge_workers=args.judge_workers, judge_timeout=args.judge_timeout)
    return 0


def _cmd_report(args) -> int:
    from clas_lens.reporting import report_run

    report_run(args.run, args.out, prompts=args.prompts, n_prompts=args.n_prompts, other=args.other,
               max_new_tokens=args.max_new_tokens)
    print(f"wrote {args.out}")
    return 0


def _cmd_figures(args) -> int:
    from clas_lens.figures import make_figures

    make_figures(out=args.out, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="clas-lens", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="fit directions, train CLAS, generate, write heatmaps",
                       description="Run the demo on the embedded model (offline).")
    d.add_argument("--concept", default="data/positive", help="a data/<concept> folder")
    d.add_argument("--out", default="figures", help="folder for demo_strengths.png/.html")
    d.add_argument("--epochs", type=_int_at_least(0), default=8)
    d.add_argument("--method", default="rfm", help="direction method")
    d.add_argument("--max-new-tokens", type=_int_at_least(1), default=40)
    d.set_defaults(fn=_cmd_demo, _parser=d)

    t = sub.add_parser("train", help="train a CLAS steerer and save it",
                       description="Train a CLAS steerer on a data/<concept> folder or a "
                                   "reference-format CSV, and save it.")
    t.add_argument("source", help="data/<concept> folder or reference-format CSV")
    t.add_argument("--out", required=True, help="folder to save the steerer to")
    t.add_argument("--model", default=None, help="model name (default: embedded SmolLM2)")
    t.add_argument("--method", default="rfm", help="direction method")
    t.add_argument("--layers", type=_layer_list, default=None,
                   help="comma-separated layers (default: all)")
    t.add_argument("--epochs", type=_int_at_least(0), default=8)
    t.add_argument("--seed", type=_int_at_least(0), default=0)
    t.add_argument("--protocol", choices=("clas_lens", "reference"), default="clas_lens",
                   help="training protocol (reference: end-of-turn only where the target "
                        "carries the marker, gradient norm clipped at 1.0, valid loss at steps "
                        "0, 2, 4, ...)")
    t.set_defaults(fn=_cmd_train, _parser=t)

    b = sub.add_parser("bench", help="score steering methods on reference-format benchmarks",
                       description="Run methods x benchmarks and write results.",
                       check=_check_bench_judge)
    b.add_argument("paths", nargs="*", help="CSV files or folders (default ../shared/benchmarks)")
    b.add_argument("--out", default="results", help="results folder")
    b.add_argument("--quick", action="store_true", help="few rows, few tokens (a smoke run)")
    b.add_argument("--methods", default=None,
                   help="comma-separated subset of base_prompt,steer_prompt,las,las_layerwise,"
                        "clas,reft,lora")
    b.add_argument("--direction-method", default="rfm")
    b.add_argument("--gen-rows", type=_int_at_least(1), default=None,
                   help="test rows to generate for (default: every test row)")
    b.add_argument("--max-new-tokens", type=_int_at_least(1), default=None,
                   help="tokens per generation (default: per benchmark, from its training "
                        "targets' lengths, capped by --max-new-tokens-cap)")
    # None leaves the cap to run_benchmarks (256), so a plain run records a plain command line
    b.add_argument("--max-new-tokens-cap", type=_int_at_least(1), default=None,
                   help="largest per-benchmark default of --max-new-tokens (default 256)")
    b.add_argument("--protocol", choices=("clas_lens", "reference"), default="clas_lens",
                   help="training protocol (reference: targets not capped, end-of-turn only "
                        "where the target carries the marker, gradient norm clipped at 1.0, "
                        "valid loss at steps 0, 2, 4, ...)")
    b.add_argument("--workers", type=_int_at_least(1), default=1,
                   help="run the cells on N Ray workers, each loading the model once "
                        "(needs clas-lens[ray]; >1 starts a local Ray instance)")
    b.add_argument("--ray-address", default=None,
                   help="join an existing Ray cluster (e.g. auto, host:6379) instead")
    b.add_argument("--judge-url", type=_http_url, default=None, metavar="URL",
                   help="score the generations with an LLM judge behind this OpenAI-compatible "
                        "chat-completions endpoint (a hosted API, vLLM, llama.cpp server, Ollama; "
                        "e.g. http://127.0.0.1:8000/v1); its API key, if it needs one, is read "
                        "from the environment variable CLAS_LENS_JUDGE_API_KEY or OPENAI_API_KEY, "
                        "never from the command line")
    b.add_argument("--judge-model", type=_name, default=None, metavar="NAME",
                   help="model name sent to --judge-url (default: judge)")
    b.add_argument("--judge-workers", type=_int_at_least(1), default=4, metavar="N",
                   help="judge requests in flight at once (default 4)")
    b.add_argument("--judge-timeout", type=_positive_seconds, default=60.0, metavar="S",
                   help="seconds per judge request before it is retried (default 60)")
    b.set_defaults(fn=_cmd_bench, _parser=b)

    r = sub.add_parser("report", help="write one self-contained HTML page about a saved steerer",
                       description="Answer a few prompts unsteered and steered and write one HTML page: "
                                   "tokens coloured by alpha with attribution, heatmaps, per-layer views, "
                                   "similarity with null bands, dose-response, provenance (offline).")
    r.add_argument("run", help="a folder saved by `clas-lens train`")
    r.add_argument("--out", required=True, help="the HTML file to write")
    r.add_argument("--prompts", default=None,
                   help="data/<concept> folder, prompts.json or text file (default: RUN/prompts.json)")
    r.add_argument("--n-prompts", type=_int_at_least(1), default=4)
    r.add_argument("--other", default=None, help="a second saved steerer to compare (e.g. layerwise LAS)")
    r.add_argument("--max-new-tokens", type=_int_at_least(1), default=24)
    r.set_defaults(fn=_cmd_report, _parser=r)

    f = sub.add_parser("figures", help="regenerate every committed figure",
                       description="Regenerate the figures in figures/ on the embedded model.")
    f.add_argument("--out", default="figures")
    f.add_argument("--quick", action="store_true", help="smaller work (for tests)")
    f.set_defaults(fn=_cmd_figures, _parser=f)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``clas-lens``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from clas_lens.data import DataError
    from clas_lens.io import ArtifactError
    from clas_lens.model import ModelNotAvailableError
    from clas_lens.training import TrainingError

    try:
        return int(args.fn(args) or 0)
    except (DataError, ArtifactError, ModelNotAvailableError, TrainingError, ValueError,
            FileNotFoundError) as err:
        print(f"clas-lens {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"clas-lens {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
