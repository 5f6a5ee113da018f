"""Benchmark harness: steering methods x reference-format benchmarks.

For every benchmark CSV (reference format, rows 0-9 train, 10-19 valid, 20+ test)
and every method, one *cell* is run and written as one row of ``results/benchmarks.csv``:

* ``base_prompt``   - the unsteered model on the prompt ``x``;
* ``steer_prompt``  - the unsteered model on the steer-template prompt (the behaviour
  asked for in words); its NLL is that of the target ``y`` given that prompt;
* ``las``           - :class:`~clas_lens.steerers.LASSteerer`, one coefficient for all
  layers, chosen by completion NLL on the TRAIN pairs over the scale-aware grid of
  :func:`clas_lens.training.las_grid` (``las_grid_size`` evenly spaced values from 0 to
  ``4 |h| / L``);
* ``las_layerwise``, ``clas``, ``reft``, ``lora`` - trained with
  :func:`clas_lens.training.train` on the train pairs, checkpoint chosen on the valid pairs.

Probe directions (for ``las``, ``las_layerwise`` and ``clas``) are fitted once per
benchmark on the train and valid rows, never on test rows: on their template contrasts
(``SteerSet.contrast_set()``) where the base and steer templates differ, otherwise on
response contrasts (the target against the unsteered model's greedy answer,
:func:`clas_lens.contrast.response_contrast`); the ``contrast`` column says which.

Training and scoring follow a protocol (:data:`clas_lens.training.PROTOCOLS`):
``clas_lens`` (default: targets capped at ``max_completion_tokens``, every target ends
with the end-of-turn token) or ``reference`` (the CLAS reference trainer: targets not
capped, end-of-turn only where the CSV target carries ``<|eot_id|>``, gradient norm
clipped at 1.0, valid loss at steps 0, 2, 4, ...).

Metrics on the test rows: ``test_nll`` (token-weighted mean completion NLL, targets
capped at ``max_completion_tokens``), and, on greedy generations for the first
``gen_rows`` test rows, the mean embedding similarity with the target and the mean of
each benchmark's behaviour metric (:mod:`clas_lens.bench.metrics`, columns ``m_*``).

Files written under ``out``: ``benchmarks.csv`` (rewritten atomically after every
cell; cells already there with the same settings are skipped, so an interrupted run
resumes), ``generations.jsonl`` (one line per generation: benchmark, method, CSV row
index and id, generated text, strength summary - never the prompt or the target), and
``benchmarks.md`` (tables, regenerated at the end). The figure of test NLL goes to
``figure`` (default ``<out>/../figures/bench_test_nll.png``).

Example:
    >>> rows = run_benchmarks(["../shared/benchmarks"], quick=True)   # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from clas_lens.bench.metrics import benchmark_name
from clas_lens.io import atomic_write_text, versions

STEERING_METHODS = ("base_prompt", "steer_prompt", "las", "las_layerwise", "clas", "reft", "lora")
DIRECTION_METHODS = ("las", "las_layerwise", "clas")
TRAINED = ("las_layerwise", "clas", "reft", "lora")

#: settings of a full run (the reference's training defaults) and of a quick smoke run
FULL = {"n_test": None, "epochs": 8, "las_grid_size": 20, "gen_rows": 8, "max_new_tokens": 64,
        "max_completion_tokens": 192}
QUICK = {"n_test": 4, "epochs": 1, "las_grid_size": 3, "gen_rows": 2, "max_new_tokens": 8,
         "max_completion_tokens": 32}
#: greedy decoding without a repetition penalty: a penalty would hide the looping that
#: the Repetition benchmark measures and change every method's text the same way.
REPETITION_PENALTY = 1.0

CSV_NAME = "benchmarks.csv"
MD_NAME = "benchmarks.md"
GEN_NAME = "generations.jsonl"

#: columns that must match for a finished cell to be reused
SETTING_KEYS = ("benchmark", "method", "data_sha256", "model", "direction_method", "seed",
                "n_test", "gen_rows", "max_new_tokens", "max_completion_tokens", "epochs",
                "las_grid_size", "repetition_penalty", "protocol", "contrast")

COLUMNS = (
    "benchmark", "method", "status", "test_nll", "embed_sim", "n_test", "n_gen",
    "max_new_tokens", "max_completion_tokens", "gen_rows", "repetition_penalty", "protocol",
    "epochs", "las_grid_size", "train_seconds", "eval_seconds", "cell_seconds", "direction_seconds",
    "n_params", "best_epoch", "valid_loss_before", "valid_loss_after", "las_c", "las_grid",
    "direction_acc_mean", "contrast", "strength_mean_abs", "strength_max_abs", "direction_method", "seed",
    "model", "data_sha256", "clas_lens", "transformer_lens", "torch", "error",
)


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
    ``None``) unless a cap is given.
    """
    from clas_lens.training import resolve_protocol

    s = {**(QUICK if quick else FULL), "protocol": resolve_protocol(protocol)["protocol"]}
    if s["protocol"] == "reference":
        s["max_completion_tokens"] = None
    for k, v in given.items():
        if v is not None:
            s[k] = v
    for k in ("epochs", "las_grid_size", "gen_rows", "max_new_tokens", "max_completion_tokens"):
        if s[k] is None and k == "max_completion_tokens":
            continue
        if int(s[k]) < 0 or (k in ("las_grid_size", "max_completion_tokens") and int(s[k]) < 1):
            raise ValueError(f"{k} must be positive, got {s[k]}")
    return s


# --------------------------------------------------------------------------- CSV store

def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return str(v)


STRING_COLUMNS = {"benchmark", "method", "status", "model", "data_sha256", "direction_method",
                  "clas_lens", "transformer_lens", "torch", "error", "las_grid", "protocol",
                  "contrast"}


def _parse(v: str):
    if v == "":
        return None
    try:
        i = int(v)
        return i
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v


def read_results(path: str | os.PathLike) -> list[dict]:
    """Rows of a results CSV with numbers parsed (empty cells are ``None``)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: (v if k in STRING_COLUMNS and v != "" else _parse(v)) for k, v in r.items()}
                for r in csv.DictReader(fh)]


def write_results(path: str | os.PathLike, rows: list[dict]) -> None:
    """Rewrite the results CSV atomically (fixed columns, then the ``m_*`` columns)."""
    metric_cols = sorted({k for r in rows for k in r if k.startswith("m_")})
    extra = sorted({k for r in rows for k in r} - set(COLUMNS) - set(metric_cols))
    cols = list(COLUMNS) + metric_cols + extra
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in cols})
    atomic_write_text(path, buf.getvalue())


def _key(row: dict) -> tuple:
    return tuple(_fmt(row.get(k)) if k in STRING_COLUMNS else _fmt(_parse(_fmt(row.get(k))))
                 for k in SETTING_KEYS)


def _read_generations(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


def _write_generations(path: Path, gens: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in gens))


# --------------------------------------------------------------------------- helpers

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _by_length(model, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Pairs sorted by token length: fewer pad tokens per batch (the mean is unchanged)."""
    from clas_lens.model import chat_ids, completion_ids

    return sorted(pairs, key=lambda p: len(chat_ids(model, p[0])) + len(completion_ids(model, p[1])))


def _pairs(prompts, steer, end_of_turn: str) -> list[tuple[str, str]]:
    """``(prompt, target)`` pairs; under the ``"marker"`` rule a target ends with
    ``<|eot_id|>`` where the CSV's did, so that the rule can follow the marker."""
    from clas_lens.data import LLAMA_EOT

    if end_of_turn != "marker":
        return list(zip(prompts, steer.completions))
    return [(p, c + LLAMA_EOT if m else c)
            for p, c, m in zip(prompts, steer.completions, steer.end_of_turn_marks())]


def _n_params(steerer) -> int:
    return int(sum(p.numel() for p in steerer.parameters() if p.requires_grad))


def _strength_summary(res, i: int) -> tuple[float | None, float | None]:
    """Mean and max |strength| over the generated tokens (and layers) of example ``i``."""
    if res.strengths is None:
        return None, None
    gm = res.generated_mask()[i]
    s = res.strengths[i][gm]
    if s.numel() == 0:
        return None, None
    a = s.abs().float()
    return float(a.mean()), float(a.max())


def _nanmean(xs) -> float | None:
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return sum(xs) / len(xs) if xs else None


def _log(msg: str) -> None:
    tqdm.write(msg, file=sys.stdout)
    sys.stdout.flush()


# --------------------------------------------------------------------------- one cell

def _test_rows(steer, settings: dict):
    """The scored test pairs and their row indices in the CSV."""
    test = steer.test
    test_idx = [i for i, s in enumerate(steer.splits) if s == "test"]
    if settings["n_test"] is not None:
        test = test.subset(range(min(int(settings["n_test"]), len(test))))
        test_idx = test_idx[: len(test)]
    return test, test_idx


def _fit_las(model, dirs, train_pairs, valid_pairs, settings: dict, nll_kw: dict, progress: bool):
    """LAS: one coefficient chosen on the train pairs' NLL over the scale-aware grid."""
    import clas_lens as cl
    from clas_lens.training import las_grid

    steerer = cl.LASSteerer(dirs)
    grid = las_grid(model, steerer, train_pairs, n=int(settings["las_grid_size"]))
    before = cl.completion_nll(model, None, valid_pairs, **nll_kw)
    res = cl.grid_search_las(model, steerer, train_pairs, grid, progress=progress, **nll_kw)
    after = cl.completion_nll(model, steerer, valid_pairs, **nll_kw)
    return steerer, {"las_c": res["best"], "valid_loss_before": before, "valid_loss_after": after,
                     "las_grid": f"linspace(0, {grid[-1]:.4g}, {len(grid)}) on train NLL"}


def _fit_trained(model, method: str, dirs, train_pairs, valid_pairs, settings: dict, seed: int,
                 progress: bool):
    """``las_layerwise``, ``clas``, ``reft``, ``lora``: trained, checkpoint chosen on valid."""
    import clas_lens as cl

    steerer = {"las_layerwise": lambda: cl.LayerwiseLASSteerer(dirs),
               "clas": lambda: cl.CLASSteerer(dirs),
               "reft": lambda: cl.ReFTSteerer(model, seed=seed),
               "lora": lambda: cl.LoRASteerer(model, seed=seed)}[method]()
    hist = cl.train(model, steerer, train_pairs, valid_pairs, seed=seed,
                    epochs=int(settings["epochs"]), protocol=settings["protocol"],
                    max_completion_tokens=settings["max_completion_tokens"], progress=progress)
    if hist.interrupted:
        raise KeyboardInterrupt
    return steerer, {"best_epoch": hist.best_epoch, "valid_loss_before": hist.valid_losses[0],
                     "valid_loss_after": hist.best_valid_loss}


def _generate_and_score(model, steerer, steer, method: str, prompts, targets, test_idx,
                        settings: dict) -> tuple[dict, list[dict]]:
    """Greedy generations for the first ``gen_rows`` test rows, scored offline."""
    import clas_lens as cl
    from clas_lens.bench import metrics

    name = steer.name
    n_gen = min(int(settings["gen_rows"]), len(prompts))
    row: dict = {"n_gen": n_gen, "embed_sim": None}
    mvals: dict[str, list[float]] = {f"m_{k}": [] for k in metrics.metric_names(name)}
    gens: list[dict] = []
    if n_gen and int(settings["max_new_tokens"]) > 0:
        res = cl.generate(model, steerer, prompts[:n_gen],
                          max_new_tokens=int(settings["max_new_tokens"]),
                          repetition_penalty=settings["repetition_penalty"], progress=False)
        sims = metrics.embedding_similarity(res.texts, targets[:n_gen])
        row["embed_sim"] = _nanmean(sims)
        s_mean, s_max = [], []
        for i, text in enumerate(res.texts):
            csv_row = steer.rows[test_idx[i]] if steer.rows else {}
            for k, v in metrics.behaviour_metrics(name, text, csv_row).items():
                mvals.setdefault(f"m_{k}", []).append(v)
            mean_abs, max_abs = _strength_summary(res, i)
            s_mean.append(mean_abs)
            s_max.append(max_abs)
            gens.append({
                "benchmark": name, "method": method, "row": test_idx[i],
                "row_id": csv_row.get("id"), "text": text,
                "n_new_tokens": int(res.generated_mask()[i].sum()),
                "embed_sim": sims[i], "strength_mean_abs": mean_abs, "strength_max_abs": max_abs,
            })
        row["strength_mean_abs"] = _nanmean(s_mean)
        row["strength_max_abs"] = max((x for x in s_max if x is not None), default=None)
    row.update({k: _nanmean(v) for k, v in mvals.items()})
    return row, gens


def run_cell(model, steer, method: str, settings: dict, *, dirs=None, seed: int = 0,
             progress: bool = True) -> tuple[dict, list[dict]]:
    """Run one (benchmark, method) cell; returns its result row and its generations.

    ``settings`` are those of :func:`resolve_settings` (the protocol included); ``dirs``
    are the benchmark's probe directions (needed by ``las``, ``las_layerwise``, ``clas``).
    """
    import clas_lens as cl
    from clas_lens.training import resolve_protocol

    rule = resolve_protocol(settings.get("protocol"))["end_of_turn"]
    nll_kw = {"max_completion_tokens": settings["max_completion_tokens"], "end_of_turn": rule}
    test, test_idx = _test_rows(steer, settings)
    prompts = ([steer.steer_prompts()[i] for i in test_idx] if method == "steer_prompt"
               else list(test.prompts))
    train_pairs = _by_length(model, _pairs(steer.train.prompts, steer.train, rule))
    valid_pairs = _by_length(model, _pairs(steer.valid.prompts, steer.valid, rule))
    row: dict = {"benchmark": steer.name, "method": method}
    torch.manual_seed(seed)
    steerer = None
    t0 = time.perf_counter()
    if method == "las":
        steerer, fitted = _fit_las(model, dirs, train_pairs, valid_pairs, settings, nll_kw, progress)
        row.update(fitted)
    elif method in TRAINED:
        steerer, fitted = _fit_trained(model, method, dirs, train_pairs, valid_pairs, settings,
                                       seed, progress)
        row.update(fitted)
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    nll = cl.completion_nll(model, steerer, _by_length(model, _pairs(prompts, test, rule)), **nll_kw)
    scored, gens = _generate_and_score(model, steerer, steer, method, prompts,
                                       list(test.completions), test_idx, settings)
    row.update(scored)
    row.update(
        status="ok", test_nll=nll, n_test=len(prompts),
        train_seconds=train_seconds if steerer is not None else 0.0,
        eval_seconds=time.perf_counter() - t1,
        n_params=_n_params(steerer) if steerer is not None else 0,
    )
    if method in DIRECTION_METHODS and dirs is not None:
        row["direction_acc_mean"] = float(dirs.accuracy.mean())
        row["contrast"] = dirs.fit.contrast if dirs.fit is not None else None
    return row, gens


# --------------------------------------------------------------------------- the run

def _command(paths, out, quick, methods, direction_method, gen_rows, max_new_tokens, seed,
             extra: dict, protocol: str | None = None) -> str:
    """A shell command that reproduces this run."""
    if seed == 0 and not extra:
        parts = ["HF_HUB_OFFLINE=1", "clas-lens", "bench", *map(str, paths), "--out", str(out)]
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
    """(Re)write ``benchmarks.md`` and the test-NLL figure from ``<out>/benchmarks.csv``.

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
    from clas_lens.plot import save_png

    out = Path(out)
    rows = read_results(out / CSV_NAME)
    if not rows:
        return rows
    if pending:
        notes = (notes + "\n\n" if notes else "") + (
            "## Cells not finished\n\nRequested but not (yet) run; rerunning the command above "
            "resumes the run and skips the finished cells:\n\n"
            + "\n".join(f"- {c}" for c in pending))
    report.write_markdown(rows, out / MD_NAME, command=command, notes=notes)
    fig_path = Path(figure) if figure else (
        out.parent / "figures" / "bench_test_nll.png" if figure is None else None)
    if fig_path is not None:
        save_png(report.nll_figure(rows), fig_path, dpi=120)
    return rows


class _Store:
    """The results CSV and the generations file of a run, rewritten after every cell."""

    def __init__(self, out: Path):
        self.csv_path, self.gen_path = out / CSV_NAME, out / GEN_NAME
        self.rows = read_results(self.csv_path)
        self.gens = _read_generations(self.gen_path)
        self.done = {_key(r) for r in self.rows if r.get("status") == "ok"}

    def put(self, row: dict, gens: list[dict], key: tuple) -> None:
        """Replace the cell's row (in place, or appended) and its generations; write both."""
        cell = (row["benchmark"], row["method"])
        at = [i for i, r in enumerate(self.rows) if (r.get("benchmark"), r.get("method")) == cell]
        if at:
            self.rows = [r for i, r in enumerate(self.rows) if i not in at[1:]]
            self.rows[at[0]] = row
        else:
            self.rows.append(row)
        self.gens = [g for g in self.gens if (g.get("benchmark"), g.get("method")) != cell] + gens
        _write_generations(self.gen_path, self.gens)
        write_results(self.csv_path, self.rows)
        if row.get("status") == "ok":
            self.done.add(key)


def _fit_benchmark_directions(model, steer, settings: dict, direction_method: str, seed: int,
                              progress: bool):
    """The benchmark's probe directions and their seconds (contrast: see
    :func:`clas_lens.contrast.choose_contrast`)."""
    import clas_lens as cl
    from clas_lens.contrast import choose_contrast

    t = time.perf_counter()
    contrast = choose_contrast(model, steer, max_new_tokens=max(1, int(settings["max_new_tokens"])),
                               progress=progress)
    dirs = cl.fit_directions(model, contrast, method=direction_method, seed=seed, progress=progress)
    return dirs, time.perf_counter() - t


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


def _log_cell(row: dict) -> None:
    emb = row.get("embed_sim")
    _log(f"[bench] {row['benchmark']} / {row['method']}: {row['status']} "
         f"test_nll={row['test_nll']:.4f} "
         f"embed_sim={'-' if emb is None else f'{emb:.3f}'} "
         f"train={row.get('train_seconds') or 0:.0f}s "
         f"cell={row['cell_seconds']:.0f}s"
         + (f" ({row['error']})" if row["status"] != "ok" else ""))


def _run_benchmark(path: Path, methods: list[str], settings: dict, store: _Store, get_model,
                   base: dict, *, direction_method: str, seed: int, progress: bool, bar,
                   result_keys: list, pending: list | None = None) -> None:
    """Every requested method on one benchmark CSV; finished cells are skipped. With
    ``pending``, cells left to run are appended there (for Ray workers) instead of run."""
    import clas_lens as cl

    steer = cl.SteerSet.from_reference_csv(path)
    # the number of test rows scored, not "all": rows and resume keys record it
    n_test = len(steer.test) if settings["n_test"] is None else min(
        int(settings["n_test"]), len(steer.test))
    cell_settings = {**settings, "n_test": n_test}
    base = {**base, "benchmark": steer.name, "data_sha256": _sha256(Path(path)), **cell_settings}
    contrast = "template" if steer.templates_differ() else "response"
    dirs, dir_seconds = None, None
    for method in methods:
        proto = {**base, "method": method,
                 "contrast": contrast if method in DIRECTION_METHODS else None}
        key = _key(proto)
        result_keys.append(key)
        if key in store.done:
            _log(f"[bench] {steer.name} / {method}: done already, skipped")
            bar.update(1)
            continue
        bar.set_description(f"{steer.name}/{method}")
        if pending is not None:
            pending.append((path, method, cell_settings, proto, key))
            continue
        model = get_model()
        if method in DIRECTION_METHODS and dirs is None:
            dirs, dir_seconds = _fit_benchmark_directions(model, steer, cell_settings,
                                                          direction_method, seed, progress)
        t = time.perf_counter()
        try:
            row, new_gens = run_cell(model, steer, method, cell_settings, dirs=dirs, seed=seed,
                                     progress=progress)
        except (cl.TrainingError, FloatingPointError, RuntimeError, ValueError) as err:
            row, new_gens = {"status": "error", "error": f"{type(err).__name__}: {err}",
                             "test_nll": float("nan")}, []
        row = {**proto, **row, "cell_seconds": time.perf_counter() - t}
        if method in DIRECTION_METHODS:
            row["direction_seconds"] = dir_seconds
        store.put(row, new_gens, key)
        _log_cell(row)
        bar.update(1)


def _run_on_ray(pending: list, store: _Store, bar, *, load, workers: int, ray_address,
                direction_method: str, seed: int, progress: bool) -> None:
    """Run the pending cells on Ray actors; each result is written here as it arrives."""
    from clas_lens.bench.parallel import Cell, default_loader, run_cells
    from clas_lens.parallel import check_workers

    def record(cell, row, gens, dir_seconds):
        row = {**cell.proto, **row}
        if cell.method in DIRECTION_METHODS:
            row["direction_seconds"] = dir_seconds
        store.put(row, gens, cell.key)
        _log_cell(row)
        bar.update(1)

    run_cells([Cell(*c) for c in pending], record,
              load=default_loader(load) if isinstance(load, str) else load,
              workers=check_workers(workers), direction_method=direction_method, seed=seed,
              address=ray_address, progress=progress)


def run_benchmarks(
    paths, *, out: str | os.PathLike = "results", quick: bool = False, methods=None,
    direction_method: str = "rfm", gen_rows: int | None = None,
    max_new_tokens: int | None = None, model=None, seed: int = 0,
    max_completion_tokens: int | None = None, progress: bool = True,
    epochs: int | None = None, n_test: int | None = None, las_grid_size: int | None = None,
    figure: str | os.PathLike | None = None, command: str | None = None,
    protocol: str | None = None, workers: int = 1, ray_address: str | None = None, load=None,
) -> list[dict]:
    """Run every method on every benchmark and write the results (see the module doc).

    Args:
        paths: reference-format CSV files, or folders of them.
        out: results folder (``benchmarks.csv``, ``benchmarks.md``, ``generations.jsonl``).
        quick: smoke-run preset (4 test rows, 1 epoch, a 3-value LAS grid,
            2 generations x 8 tokens, targets capped at 32 tokens).
        methods: subset of :data:`STEERING_METHODS` (a list or a comma-separated string).
        direction_method: probe method for the directions (``rfm``, ``mean_diff``, ...).
        gen_rows: test rows to generate for (default 8, quick 2).
        max_new_tokens: tokens per generation (default 64, quick 8); also the length of
            the model's answers in response contrasts.
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
                                max_completion_tokens=max_completion_tokens)
    settings["repetition_penalty"] = REPETITION_PENALTY
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = _Store(out)
    model_name = EMBEDDED_NAME if model is None else str(model.cfg.model_name)
    get_model = _model_loader(model, model_name)
    extra = {k: v for k, v in (("epochs", epochs), ("n_test", n_test),
                               ("las_grid_size", las_grid_size),
                               ("max_completion_tokens", max_completion_tokens)) if v is not None}
    cmd = command or _command([str(p) for p in (paths if isinstance(paths, (list, tuple))
                                                else [paths])],
                              out, quick, None if methods is None else methods_list,
                              direction_method, gen_rows, max_new_tokens, seed, extra,
                              settings["protocol"])
    base = {"model": model_name, "direction_method": direction_method, "seed": seed, **versions()}
    cells = [(f, m) for f in csvs for m in methods_list]
    bar = tqdm(total=len(cells), desc="bench cells", disable=not progress)
    t_run = time.perf_counter()
    result_keys: list[tuple] = []
    on_ray = workers != 1 or ray_address is not None
    pending: list | None = [] if on_ray else None
    try:
        for f in csvs:
            _run_benchmark(f, methods_list, settings, store, get_model, base,
                           direction_method=direction_method, seed=seed, progress=progress,
                           bar=bar, result_keys=result_keys, pending=pending)
        if pending:
            _run_on_ray(pending, store, bar, load=load or model_name, workers=workers,
                        ray_address=ray_address, direction_method=direction_method, seed=seed,
                        progress=progress)
    finally:
        bar.close()
        pending = [f"{benchmark_name(f)} / {m}" for (f, m), k in zip(cells, result_keys)
                   if k not in store.done]
        pending += [f"{benchmark_name(f)} / {m}" for f, m in cells[len(result_keys):]]
        rows = write_reports(out, command=cmd, figure=figure, pending=pending)
    _log(f"[bench] {len(cells)} cell(s) in {time.perf_counter() - t_run:.0f}s; "
         f"results in {store.csv_path}")
    wanted = set(result_keys)
    return [r for r in rows if _key(r) in wanted]


__all__ = ["STEERING_METHODS", "FULL", "QUICK", "find_csvs", "read_results",
           "resolve_settings", "run_benchmarks", "run_cell", "write_reports", "write_results"]
