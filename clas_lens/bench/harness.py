"""Benchmark harness: steering methods x reference-format benchmarks.

For every benchmark CSV (reference format, rows 0-9 train, 10-19 valid, 20+ test) and
every method (:data:`STEERING_METHODS`, see :mod:`clas_lens.bench.cell`) one *cell* is
run: the method is fitted on the train/valid rows and scored on every test row.

Probe directions (for ``las``, ``las_layerwise`` and ``clas``) are fitted once per
benchmark on the train and valid rows, never on test rows: on their template contrasts
(``SteerSet.contrast_set()``) where the base and steer templates differ, otherwise on
response contrasts (the target against the unsteered model's greedy answer,
:func:`clas_lens.contrast.response_contrast`); the ``contrast`` column says which. They,
and the unsteered model's test results, are computed once per benchmark and kept under
``<out>/cache/`` (:mod:`clas_lens.bench.shared`).

Training and scoring follow a protocol (:data:`clas_lens.training.PROTOCOLS`):
``clas_lens`` (default: targets capped at ``max_completion_tokens``, every target ends
with the end-of-turn token) or ``reference`` (the CLAS reference trainer: targets not
capped, end-of-turn only where the CSV target carries ``<|eot_id|>``, gradient norm
clipped at 1.0, valid loss at steps 0, 2, 4, ...).

Scoring (:mod:`clas_lens.bench.scoring`): the completion NLL of every test row, and
greedy generations (batched, KV-cached) for every test row by default, ``max_new_tokens``
per benchmark from its training targets' lengths (:func:`~clas_lens.bench.scoring.auto_max_new_tokens`:
the longest target in tokens x 1.25, rounded up to a multiple of 16, capped at 256), with
the embedding similarity to the target, each benchmark's behaviour metrics
(:mod:`clas_lens.bench.metrics`) and, given a judge URL, the score of an LLM judge prompted
with the CSV's own templates (:mod:`clas_lens.bench.judge`). Summaries carry 95% bootstrap
intervals over test rows; ``paired.csv`` compares CLAS with every method row by row.

Files written under ``out`` (all rewritten atomically; cells already there with the same
settings are skipped, so an interrupted run resumes): ``benchmarks.csv`` (one row per
cell), ``records.jsonl`` (one line per cell and test row: NLL, token count, generated
text, metrics, judge score - never the prompt or the target), ``paired.csv`` and
``benchmarks.md``. The figure of test NLL goes to ``figure`` (default
``<out>/../figures/bench_test_nll.png``).

Example:
    >>> rows = run_benchmarks(["../shared/benchmarks"], quick=True)   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from clas_lens.bench import scoring
from clas_lens.bench.cell import DIRECTION_METHODS, STEERING_METHODS, TRAINED, guarded_cell, run_cell
from clas_lens.bench.metrics import benchmark_name
from clas_lens.bench.shared import BenchmarkWork
from clas_lens.bench.store import (
    CACHE_DIR,
    CSV_NAME,
    MD_NAME,
    PAIRED_NAME,
    RECORDS_NAME,
    ResultStore,
    cell_key,
    read_results,
    write_paired,
    write_results,
)
from clas_lens.io import versions

#: settings of a full run (the reference's training defaults) and of a quick smoke run;
#: ``gen_rows`` None: every scored test row; ``max_new_tokens`` None: per benchmark
FULL = {"n_test": None, "epochs": 8, "las_grid_size": 20, "gen_rows": None,
        "max_new_tokens": None, "max_completion_tokens": 192}
QUICK = {"n_test": 4, "epochs": 1, "las_grid_size": 3, "gen_rows": 2, "max_new_tokens": 8,
         "max_completion_tokens": 32}
#: greedy decoding without a repetition penalty: a penalty would hide the looping that
#: the Repetition benchmark measures and change every method's text the same way.
REPETITION_PENALTY = 1.0


# --------------------------------------------------------------------------- inputs

def find_csvs(paths: Sequence[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Expand files and folders into a sorted, de-duplicated list of CSV files.

    A folder contributes its ``*_SteerDataset.csv`` files, or all its ``*.csv`` files
    when it has none of those.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(p.glob("*_SteerDataset.csv")) or sorted(p.glob("*.csv"))
            if not files:
                raise FileNotFoundError(f"{p}: no CSV files in this folder")
            found += files
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    out, seen = [], set()
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            out.append(f)
    names = [benchmark_name(f) for f in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"two CSV files give the same benchmark name(s) {dup}")
    return out


def parse_methods(methods) -> list[str]:
    """``None`` (all), a comma-separated string or a list; checked against :data:`STEERING_METHODS`."""
    if methods is None:
        return list(STEERING_METHODS)
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(methods)
    bad = [m for m in methods if m not in STEERING_METHODS]
    if bad or not methods:
        raise ValueError(f"unknown method(s) {bad}; choose from {', '.join(STEERING_METHODS)}")
    return [m for m in STEERING_METHODS if m in methods]


def resolve_settings(quick: bool, protocol: str | None = None, **given) -> dict:
    """Settings of a run: the quick or full preset, overridden by the non-``None`` values.

    Under ``protocol="reference"`` targets are not capped (``max_completion_tokens``
    ``None``) unless a cap is given. ``gen_rows`` and ``max_new_tokens`` may stay
    ``None`` (every test row; the benchmark's own length), resolved per benchmark.
    """
    from clas_lens.training import resolve_protocol

    s = {**(QUICK if quick else FULL), "protocol": resolve_protocol(protocol)["protocol"],
         "max_new_tokens_cap": scoring.MAX_NEW_TOKENS_CAP}
    if s["protocol"] == "reference":
        s["max_completion_tokens"] = None
    for k, v in given.items():
        if v is not None:
            s[k] = v
    for k in ("n_test", "epochs", "las_grid_size", "gen_rows", "max_new_tokens",
              "max_completion_tokens", "max_new_tokens_cap"):
        if s.get(k) is None:
            continue
        if isinstance(s[k], bool) or int(s[k]) < 0 or (
                k in ("las_grid_size", "max_completion_tokens", "max_new_tokens_cap")
                and int(s[k]) < 1):
            raise ValueError(f"{k} must be positive, got {s[k]}")
    return s


def benchmark_settings(model, steer, settings: dict) -> dict:
    """The run's settings with this benchmark's test rows, generated rows and generation
    length resolved to numbers (as recorded in its rows and resume keys)."""
    n_test = len(steer.test) if settings["n_test"] is None else min(int(settings["n_test"]),
                                                                     len(steer.test))
    gen_rows = n_test if settings["gen_rows"] is None else min(int(settings["gen_rows"]), n_test)
    n_new = settings["max_new_tokens"]
    if n_new is None:
        n_new = scoring.auto_max_new_tokens(model, list(steer.train.completions),
                                            cap=int(settings["max_new_tokens_cap"]))
    out = {**settings, "n_test": n_test, "gen_rows": gen_rows, "max_new_tokens": int(n_new)}
    out.pop("max_new_tokens_cap", None)
    return out


# --------------------------------------------------------------------------- reports

def _command(paths, out, quick, methods, direction_method, gen_rows, max_new_tokens, seed,
             extra: dict, protocol: str | None = None, judge: tuple = (None, None)) -> str:
    """A shell command that reproduces this run (``judge``: its URL and model, if any)."""
    if seed == 0 and not extra:
        parts = ["HF_HUB_OFFLINE=1", "clas-lens", "bench", *map(str, paths), "--out", str(out)]
        if judge[0] is not None:
            parts += ["--judge-url", str(judge[0]), "--judge-model", str(judge[1] or "judge")]
        if quick:
            parts.append("--quick")
        if protocol not in (None, "clas_lens"):
            parts += ["--protocol", protocol]
        if methods is not None:
            parts += ["--methods", ",".join(methods)]
        if direction_method != "rfm":
            parts += ["--direction-method", direction_method]
        if gen_rows is not None:
            parts += ["--gen-rows", str(gen_rows)]
        if max_new_tokens is not None:
            parts += ["--max-new-tokens", str(max_new_tokens)]
        return " ".join(shlex.quote(p) if "=" not in p else p for p in parts)
    kw = {"out": str(out), "quick": quick, "methods": methods, "direction_method": direction_method,
          "gen_rows": gen_rows, "max_new_tokens": max_new_tokens, "seed": seed,
          "protocol": None if protocol == "clas_lens" else protocol, **extra}
    args = ", ".join(f"{k}={v!r}" for k, v in kw.items() if v is not None and v is not False)
    code = ("from clas_lens.bench.harness import run_benchmarks; "
            f"run_benchmarks({[str(p) for p in paths]!r}, {args})")
    return f"HF_HUB_OFFLINE=1 python -c {shlex.quote(code)}"


def write_reports(out: str | os.PathLike = "results", *, command: str | None = None,
                  figure: str | os.PathLike | None = None, pending: Sequence[str] = (),
                  notes: str = "") -> list[dict]:
    """(Re)write ``paired.csv``, ``benchmarks.md`` and the test-NLL figure from the
    run folder's ``benchmarks.csv`` and ``records.jsonl``.

    Args:
        out: the results folder.
        command: the command recorded as the way to reproduce the results.
        figure: figure path (default ``<out>/../figures/bench_test_nll.png``; ``""`` for none).
        pending: cells (``"benchmark / method"``) requested but not finished, listed in
            the markdown.
        notes: extra markdown appended at the end.

    Returns:
        The rows of the CSV.
    """
    from clas_lens.bench import report
    from clas_lens.bench.store import read_records
    from clas_lens.plot import save_png

    out = Path(out)
    rows = read_results(out / CSV_NAME)
    if not rows:
        return rows
    ok = {(r["benchmark"], r["method"]) for r in rows if r.get("status") == "ok"}
    records = [r for r in read_records(out / RECORDS_NAME) if (r["benchmark"], r["method"]) in ok]
    paired = scoring.paired(records)
    write_paired(out / PAIRED_NAME, paired)
    if pending:
        notes = (notes + "\n\n" if notes else "") + (
            "## Cells not finished\n\nRequested but not (yet) run; rerunning the command above "
            "resumes the run and skips the finished cells:\n\n"
            + "\n".join(f"- {c}" for c in pending))
    report.write_markdown(rows, out / MD_NAME, paired=paired, command=command, notes=notes)
    fig_path = Path(figure) if figure else (
        out.parent / "figures" / "bench_test_nll.png" if figure is None else None)
    if fig_path is not None:
        save_png(report.nll_figure(rows), fig_path, dpi=120)
    return rows


# --------------------------------------------------------------------------- the run

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _log(msg: str) -> None:
    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


def _log_cell(row: dict) -> None:
    emb, nll = row.get("embed_sim"), row.get("test_nll")
    _log(f"[bench] {row['benchmark']} / {row['method']}: {row['status']} "
         f"test_nll={'-' if nll is None else f'{nll:.4f}'} "
         f"embed_sim={'-' if emb is None else f'{emb:.3f}'} "
         f"train={row.get('train_seconds') or 0:.0f}s "
         f"cell={row['cell_seconds']:.0f}s"
         + (f" ({row['error']})" if row["status"] != "ok" else ""))


def _model_loader(model, model_name: str):
    """A function returning the model, loading the embedded one on first call if none given."""
    box = {"model": model}

    def get():
        if box["model"] is None:
            import clas_lens as cl

            box["model"] = cl.load_model()
        m = box["model"]
        if str(m.cfg.model_name) != model_name:
            raise ValueError(f"model {m.cfg.model_name!r} but results are for {model_name!r}")
        return m

    return get


def _judge_cell(judge, store: ResultStore, steer, method: str, workers: int) -> None:
    """Score a finished cell's generations with the judge and update its row (never raises
    for the judge's sake: a failing judge leaves ``missing`` scores)."""
    at = [i for i, r in enumerate(store.rows)
          if (r.get("benchmark"), r.get("method")) == (steer.name, method) and r.get("status") == "ok"]
    if not at:
        return
    row = dict(store.rows[at[0]])
    records = [dict(r) for r in store.cell_records(steer.name, method)]
    csv_rows = dict(enumerate(steer.rows or []))
    if not scoring.judge_records(judge, steer.name, method, records, csv_rows, workers=workers):
        return
    row.update(scoring.summarize(records, steer.name))
    row["judge_model"] = judge.model
    store.put(row, records, cell_key(row))


def _run_benchmark(path: Path, methods: list[str], settings: dict, store: ResultStore, get_model,
                   base: dict, *, out: Path, direction_method: str, seed: int, progress: bool, bar,
                   result_keys: list, pending: list | None = None, judge=None,
                   judge_workers: int = 4) -> None:
    """Every requested method on one benchmark CSV; finished cells are skipped. With
    ``pending``, cells left to run are appended there (for Ray workers) instead of run."""
    import clas_lens as cl

    steer = cl.SteerSet.from_reference_csv(path)
    sha = _sha256(Path(path))
    cell_settings = benchmark_settings(get_model(), steer, settings) if (
        settings["max_new_tokens"] is None) else benchmark_settings(None, steer, settings)
    work = BenchmarkWork(steer, cell_settings, data_sha256=sha, folder=out / CACHE_DIR / steer.name,
                         direction_method=direction_method, seed=seed)
    base = {**base, "benchmark": steer.name, "data_sha256": sha, **cell_settings}
    for method in methods:
        proto = {**base, "method": method,
                 "contrast": work.contrast if method in DIRECTION_METHODS else None}
        key = cell_key(proto)
        result_keys.append(key)
        if key in store.done:
            _log(f"[bench] {steer.name} / {method}: done already, skipped")
        elif pending is not None:
            pending.append((path, method, cell_settings, proto, key))
            continue
        else:
            bar.set_description(f"{steer.name}/{method}")
            _store_cell(store, proto, key, method,
                        *guarded_cell(get_model(), steer, method, cell_settings, work, seed=seed,
                                      progress=progress))
        if judge is not None:
            _judge_cell(judge, store, steer, method, judge_workers)
        bar.update(1)


def _store_cell(store: ResultStore, proto: dict, key, method: str, row: dict, records: list,
                dir_seconds) -> None:
    """Write a finished cell (serial or from a worker) with its resume key, and log it."""
    row = {**proto, **row}
    if method in DIRECTION_METHODS:
        row["direction_seconds"] = dir_seconds
    store.put(row, records, key)
    _log_cell(row)


def _run_on_ray(pending: list, store: ResultStore, bar, *, load, workers: int, ray_address,
                direction_method: str, seed: int, progress: bool, out: Path) -> None:
    """Run the pending cells on Ray actors; each result is written here as it arrives."""
    from clas_lens.bench.parallel import Cell, default_loader, run_cells
    from clas_lens.parallel import check_workers

    def record(cell, row, records, dir_seconds):
        _store_cell(store, cell.proto, cell.key, cell.method, row, records, dir_seconds)
        bar.update(1)

    run_cells([Cell(*c, cache=str(out / CACHE_DIR)) for c in pending], record,
              load=default_loader(load) if isinstance(load, str) else load,
              workers=check_workers(workers), direction_method=direction_method, seed=seed,
              address=ray_address, progress=progress)


def _make_judge(url, model_name, timeout, out: Path):
    if url is None:
        if model_name is not None:
            raise ValueError("judge_model needs judge_url (the judge's endpoint)")
        return None
    from clas_lens.bench.judge import CACHE_NAME, Judge

    return Judge(url, model_name or "judge", timeout=timeout, cache_path=out / CACHE_NAME)


def run_benchmarks(
    paths, *, out: str | os.PathLike = "results", quick: bool = False, methods=None,
    direction_method: str = "rfm", gen_rows: int | None = None,
    max_new_tokens: int | None = None, model=None, seed: int = 0,
    max_completion_tokens: int | None = None, progress: bool = True,
    epochs: int | None = None, n_test: int | None = None, las_grid_size: int | None = None,
    figure: str | os.PathLike | None = None, command: str | None = None,
    protocol: str | None = None, workers: int = 1, ray_address: str | None = None, load=None,
    max_new_tokens_cap: int | None = None, judge_url: str | None = None,
    judge_model: str | None = None, judge_workers: int = 4, judge_timeout: float = 60.0,
    judge=None,
) -> list[dict]:
    """Run every method on every benchmark and write the results (see the module doc).

    Args:
        paths: reference-format CSV files, or folders of them.
        out: results folder (``benchmarks.csv``, ``records.jsonl``, ``paired.csv``,
            ``benchmarks.md``, ``cache/``).
        quick: smoke-run preset (4 test rows, 1 epoch, a 3-value LAS grid,
            2 generations x 8 tokens, targets capped at 32 tokens).
        methods: subset of :data:`STEERING_METHODS` (a list or a comma-separated string).
        direction_method: probe method for the directions (``rfm``, ``mean_diff``, ...).
        gen_rows: test rows to generate for (default: every scored row; quick 2).
        max_new_tokens: tokens per generation (default: per benchmark, see the module doc;
            quick 8); also the length of the model's answers in response contrasts.
        model: a loaded ``TransformerBridge`` (default: the embedded SmolLM2, loaded
            only when some cell is left to run).
        seed: seed of directions, steerers and training.
        max_completion_tokens: target cap for training and NLL (default 192, quick 32;
            none under the reference protocol).
        progress: progress bars.
        epochs: training epochs (default 8, quick 1).
        n_test: test rows scored (default all, quick 4).
        las_grid_size: values in the LAS grid (default 20, quick 3).
        figure: where to write the test-NLL figure (default
            ``<out>/../figures/bench_test_nll.png``; ``False``-like ``""`` for none).
        command: the command to record in the markdown (default: one rebuilt from the
            arguments).
        protocol: ``"clas_lens"`` (default) or ``"reference"``
            (see :data:`clas_lens.training.PROTOCOLS`); recorded in the ``protocol`` column.
        workers: run the cells on this many Ray actors, each loading the model once
            (:mod:`clas_lens.bench.parallel`; needs ``clas-lens[ray]``); the driver alone
            writes the results, with the same resume keys. 1: in this process.
        ray_address: run on an existing Ray cluster (``"auto"``, ``"host:6379"``, ...).
        load: picklable model loader for the actors (default: ``load_model`` of the
            model's name).
        max_new_tokens_cap: the cap of the per-benchmark generation length (default 256).
        judge_url: an OpenAI-compatible endpoint (``http://127.0.0.1:8000/v1``) scoring each
            generation with the CSV's judge templates; the API key comes from
            ``CLAS_LENS_JUDGE_API_KEY`` or ``OPENAI_API_KEY``. Finished cells are scored
            too; answers are cached in ``<out>/judge_cache.jsonl``.
        judge_model: the judge's model name (default ``"judge"``).
        judge_workers: concurrent judge requests.
        judge_timeout: seconds per judge request before a retry.
        judge: a configured :class:`~clas_lens.bench.judge.Judge` to use instead of
            ``judge_url`` (its own retries, backoff and cache).

    Returns:
        The result rows of the requested benchmarks and methods (new and reused).
    """
    from clas_lens.directions import PROBE_METHODS
    from clas_lens.model import EMBEDDED_NAME

    csvs = find_csvs(paths)
    methods_list = parse_methods(methods)
    if direction_method not in PROBE_METHODS:
        raise ValueError(f"unknown direction method {direction_method!r}; "
                         f"choose one of {sorted(PROBE_METHODS)}")
    settings = resolve_settings(quick, protocol, n_test=n_test, epochs=epochs,
                                las_grid_size=las_grid_size, gen_rows=gen_rows,
                                max_new_tokens=max_new_tokens,
                                max_completion_tokens=max_completion_tokens,
                                max_new_tokens_cap=max_new_tokens_cap)
    settings["repetition_penalty"] = REPETITION_PENALTY
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if judge is not None and judge_url is not None:
        raise ValueError("pass judge_url or a configured judge, not both")
    judge = judge or _make_judge(judge_url, judge_model, judge_timeout, out)
    store = ResultStore(out)
    model_name = EMBEDDED_NAME if model is None else str(model.cfg.model_name)
    get_model = _model_loader(model, model_name)
    extra = {k: v for k, v in (("epochs", epochs), ("n_test", n_test),
                               ("las_grid_size", las_grid_size),
                               ("max_completion_tokens", max_completion_tokens),
                               ("max_new_tokens_cap", max_new_tokens_cap)) if v is not None}
    cmd = command or _command([str(p) for p in (paths if isinstance(paths, (list, tuple))
                                                else [paths])],
                              out, quick, None if methods is None else methods_list,
                              direction_method, gen_rows, max_new_tokens, seed, extra,
                              settings["protocol"], (judge_url, judge_model))
    base = {"model": model_name, "direction_method": direction_method, "seed": seed, **versions()}
    cells = [(f, m) for f in csvs for m in methods_list]
    bar = tqdm(total=len(cells), desc="bench cells", disable=not progress)
    t_run = time.perf_counter()
    result_keys: list[tuple] = []
    on_ray = workers != 1 or ray_address is not None
    pending: list | None = [] if on_ray else None
    try:
        for f in csvs:
            _run_benchmark(f, methods_list, settings, store, get_model, base, out=out,
                           direction_method=direction_method, seed=seed, progress=progress,
                           bar=bar, result_keys=result_keys, pending=pending,
                           judge=None if on_ray else judge, judge_workers=judge_workers)
        if pending:
            _run_on_ray(pending, store, bar, load=load or model_name, workers=workers,
                        ray_address=ray_address, direction_method=direction_method, seed=seed,
                        progress=progress, out=out)
        if on_ray and judge is not None:
            from clas_lens.data import SteerSet

            for f in csvs:
                steer = SteerSet.from_reference_csv(f)
                for m in methods_list:
                    _judge_cell(judge, store, steer, m, judge_workers)
    finally:
        bar.close()
        left = [f"{benchmark_name(f)} / {m}" for (f, m), k in zip(cells, result_keys)
                if k not in store.done]
        left += [f"{benchmark_name(f)} / {m}" for f, m in cells[len(result_keys):]]
        rows = write_reports(out, command=cmd, figure=figure, pending=left)
    _log(f"[bench] {len(cells)} cell(s) in {time.perf_counter() - t_run:.0f}s; "
         f"results in {store.csv_path}")
    wanted = set(result_keys)
    return [r for r in rows if cell_key(r) in wanted]


__all__ = ["DIRECTION_METHODS", "FULL", "MD_NAME", "QUICK", "STEERING_METHODS", "TRAINED",
           "benchmark_settings", "find_csvs", "parse_methods", "read_results", "resolve_settings",
           "run_benchmarks", "run_cell", "write_reports", "write_results"]
