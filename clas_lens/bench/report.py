"""Reports of benchmark results: the markdown tables, the paired comparisons and the figure.

Everything here only formats rows already computed by
:func:`clas_lens.bench.harness.run_benchmarks` (dicts as read back from
``results/benchmarks.csv`` and ``results/paired.csv``); nothing is computed on a model.
A value whose row has ``<col>_ci_low`` and ``<col>_ci_high`` is shown with its interval,
``0.424 [0.391, 0.460]``; rows without them (older results) show the value alone.

Example:
    >>> from clas_lens.bench.harness import read_results          # doctest: +SKIP
    >>> rows = read_results("results/benchmarks.csv")             # doctest: +SKIP
    >>> from clas_lens.bench.store import read_paired             # doctest: +SKIP
    >>> paired = read_paired("results/paired.csv")                # doctest: +SKIP
    >>> text = render_markdown(rows, paired=paired)               # doctest: +SKIP
    >>> fig = nll_figure(rows)                                    # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from clas_lens.bench.stats import LEVEL, N_RESAMPLES, SEED
from clas_lens.bench.store import truth
from clas_lens.io import atomic_write_text

METHOD_ORDER = ("base_prompt", "steer_prompt", "las", "las_layerwise", "clas", "reft", "lora")
SETTING_COLUMNS = ("model", "protocol", "direction_method", "seed", "n_test", "epochs",
                   "las_grid_size", "max_completion_tokens", "gen_rows", "max_new_tokens",
                   "repetition_penalty", "clas_lens", "transformer_lens", "torch")
_MINUS = "\u2212"


def _num(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status", "ok") == "ok"]


def _order(values, preferred) -> list:
    values = list(dict.fromkeys(values))
    return [v for v in preferred if v in values] + sorted(v for v in values if v not in preferred)


def benchmarks_and_methods(rows: list[dict]) -> tuple[list[str], list[str]]:
    """Benchmarks (in order of appearance) and methods (in :data:`METHOD_ORDER`) of the rows."""
    benches = list(dict.fromkeys(str(r["benchmark"]) for r in rows))
    methods = _order([str(r["method"]) for r in rows], METHOD_ORDER)
    return benches, methods


def _row(rows: list[dict], bench: str, method: str) -> dict | None:
    return next((r for r in rows if str(r["benchmark"]) == bench and str(r["method"]) == method), None)


def _cell(rows, bench, method, col):
    r = _row(rows, bench, method)
    return None if r is None else _num(r.get(col))


def _fmt(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _show(row: dict | None, col: str, digits: int = 3, *, bold: bool = False) -> str:
    """One table cell: the value (bold if asked) and its interval when the row has one."""
    v = None if row is None else _num(row.get(col))
    if v is None:
        return "-"
    text = f"**{_fmt(v, digits)}**" if bold else _fmt(v, digits)
    lo, hi = _num(row.get(f"{col}_ci_low")), _num(row.get(f"{col}_ci_high"))
    return text if lo is None or hi is None else f"{text} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def nll_table(rows: list[dict], *, col: str = "test_nll", lower_is_better: bool = True) -> str:
    """Markdown table benchmark x method of one column, the best value per row in bold.

    Args:
        rows: result rows (``benchmark``, ``method``, ``status`` and the column).
        col: the column shown; ``<col>_ci_low`` / ``<col>_ci_high`` add the interval.
        lower_is_better: direction used to pick the best value of each benchmark.

    Returns:
        The markdown table; cells without a value read ``-``.
    """
    rows = _ok(rows)
    benches, methods = benchmarks_and_methods(rows)
    body = []
    for b in benches:
        found = [_row(rows, b, m) for m in methods]
        vals = [None if r is None else _num(r.get(col)) for r in found]
        present = [v for v in vals if v is not None]
        best = (min if lower_is_better else max)(present) if present else None
        body.append([b] + [_show(r, col, bold=v is not None and v == best) for r, v in zip(found, vals)])
    return _table(["benchmark"] + methods, body)


def _derived(key: str, row: dict) -> bool:
    """Whether ``key`` is the interval or count column of another column of the row."""
    return any(key.endswith(suf) and key.removesuffix(suf) in row for suf in ("_ci_low", "_ci_high", "_n"))


def metric_tables(rows: list[dict]) -> str:
    """Per benchmark: one row per method with embedding similarity and behaviour metrics."""
    rows = _ok(rows)
    benches, methods = benchmarks_and_methods(rows)
    parts = []
    for b in benches:
        brows = [r for r in rows if str(r["benchmark"]) == b]
        mcols = sorted({k for r in brows for k, v in r.items()
                        if k.startswith("m_") and not _derived(k, r) and _num(v) is not None})
        cols = ["embed_sim"] + mcols + ["strength_mean_abs", "n_gen"]
        body = []
        for m in methods:
            r = _row(brows, b, m)
            if r is not None:
                body.append([m] + [_show(r, c, 0 if c == "n_gen" else 3) for c in cols])
        parts.append(f"### {b}\n\n" + _table(["method"] + [c.removeprefix("m_") for c in cols],
                                               body))
    return "\n\n".join(parts)


def cost_table(rows: list[dict]) -> str:
    """Per method: trainable parameters and mean train / cell seconds over benchmarks."""
    rows = _ok(rows)
    _, methods = benchmarks_and_methods(rows)
    body = []
    for m in methods:
        mr = [r for r in rows if str(r["method"]) == m]

        def mean(col, mr=mr):
            xs = [_num(r.get(col)) for r in mr]
            xs = [x for x in xs if x is not None]
            return sum(xs) / len(xs) if xs else None

        params = sorted({int(_num(r.get("n_params")) or 0) for r in mr})
        body.append([m, "/".join(map(str, params)), _fmt(mean("train_seconds"), 0),
                     _fmt(mean("cell_seconds"), 0), _fmt(mean("best_epoch"), 1)])
    return _table(["method", "trainable params", "mean train s", "mean cell s",
                   "mean best epoch"], body)


def directions_table(rows: list[dict]) -> str:
    """Per benchmark: the contrast its directions were fitted on and their held-out accuracy."""
    rows = [r for r in _ok(rows) if r.get("contrast") not in (None, "")]
    body = []
    for b in dict.fromkeys(str(r["benchmark"]) for r in rows):
        r = next(x for x in rows if str(x["benchmark"]) == b)
        body.append([b, str(r["contrast"]), _fmt(_num(r.get("direction_acc_mean")))])
    return _table(["benchmark", "contrast", "direction_acc_mean"], body)


def settings_summary(rows: list[dict]) -> str:
    """The distinct values of each setting column, as a markdown list."""
    lines = []
    for c in SETTING_COLUMNS:
        vals = list(dict.fromkeys("all" if r.get(c) in (None, "") and c == "n_test"
                                  else str(r.get(c)) for r in rows))
        if vals:
            lines.append(f"- `{c}`: {', '.join(vals)}")
    return "\n".join(lines)


def _signed(x: float) -> str:
    return f"{x:+.3f}".replace("-", _MINUS)


def _measure_rank(m: str) -> int:
    return {"test_nll": 0, "embed_sim": 1, "judge_score": 4}.get(m, 2 if m.startswith("m_") else 3)


def _paired_cell(p: Mapping | None) -> str:
    """``better −0.031 [−0.050, −0.010]``: verdict, mean difference and interval; ``-`` without data."""
    d = None if p is None else _num(p.get("mean_diff"))
    if d is None:
        return "-"
    lo, hi = _num(p.get("ci_low")), _num(p.get("ci_high"))
    ci = "" if lo is None or hi is None else f" [{_signed(lo)}, {_signed(hi)}]"
    return f"{p.get('verdict')} {_signed(d)}{ci}"


def paired_table(paired: Iterable[Mapping], measure: str = "test_nll") -> str:
    """Markdown table benchmark x method of the paired comparisons of CLAS on one measure.

    Args:
        paired: rows of ``paired.csv`` (numbers or CSV text), see
            :data:`~clas_lens.bench.store.PAIRED_COLUMNS`.
        measure: the measure shown.

    Returns:
        The table; each cell reads ``<verdict for CLAS> <mean_diff> [<ci_low>, <ci_high>]``
        with the difference CLAS minus the method; ``""`` when no row has the measure.
    """
    prows = [p for p in paired if str(p["measure"]) == measure]
    if not prows:
        return ""
    benches, methods = benchmarks_and_methods(prows)
    body = [[b] + [_paired_cell(_row(prows, b, m)) for m in methods] for b in benches]
    return _table(["benchmark"] + methods, body)


def _direction(prows: list[Mapping]) -> str:
    dirs = {truth(p.get("higher_is_better")) for p in prows}
    if dirs == {False}:
        return " (lower is better: a negative difference favours CLAS)"
    return " (higher is better: a positive difference favours CLAS)" if dirs == {True} else ""


def _counts_line(measure: str, prows: list[Mapping]) -> str:
    scored = [p for p in prows if _num(p.get("mean_diff")) is not None]
    n = {v: sum(str(p.get("verdict")) == v for p in scored) for v in ("better", "worse", "indistinguishable")}
    line = (f"- {measure}: CLAS better in {n['better']}, worse in {n['worse']}, indistinguishable in "
            f"{n['indistinguishable']} of {len(prows)} comparison{'s' if len(prows) != 1 else ''}")
    return line + (f"; {len(prows) - len(scored)} without data" if len(scored) < len(prows) else "")


def paired_summary(paired: Iterable[Mapping]) -> str:
    """Markdown summary of ``paired.csv``: verdict counts per measure, tables of NLL and judge score.

    Args:
        paired: rows of ``paired.csv`` (numbers or CSV text), see
            :data:`~clas_lens.bench.store.PAIRED_COLUMNS`.

    Returns:
        The markdown (no section heading): the method, one count line per measure present,
        then :func:`paired_table` for ``test_nll`` and ``judge_score`` when present.
    """
    paired = list(paired)
    measures = sorted(dict.fromkeys(str(p["measure"]) for p in paired), key=_measure_rank)
    by = {m: [p for p in paired if str(p["measure"]) == m] for m in measures}
    parts = [
        f"Paired bootstrap over the same test rows ({N_RESAMPLES:,} resamples, seed {SEED}, "
        f"{LEVEL:.0%} percentile intervals; `clas_lens.bench.stats`): each resample draws test rows "
        "once and uses them for both methods. A cell gives the verdict for CLAS, then the mean "
        "difference CLAS minus the method and its interval; the verdict is `better` or `worse` when "
        "the interval excludes 0, in the measure's direction. Test NLL compares token-weighted means. "
        "Every comparison (all measures, with `n` and `n_missing` rows) is in `paired.csv`.", "",
        "\n".join(_counts_line(m, by[m]) for m in measures)]
    missing = [p for p in paired if (_num(p.get("n_missing")) or 0) > 0]
    if missing:
        most = max(int(_num(p.get("n_missing"))) for p in missing)
        parts += ["", f"{len(missing)} comparisons leave out test rows missing for either method "
                      f"(at most {most} rows)."]
    for m in ("test_nll", "judge_score"):
        if m in by:
            parts += ["", f"### {m}{_direction(by[m])}", "", paired_table(by[m], m)]
    return "\n".join(parts)


def _total_line(rows: list[dict], total_seconds: float | None) -> str | None:
    if total_seconds is None:
        xs = [x for x in (_num(r.get("cell_seconds")) for r in rows) if x is not None]
        if not xs:
            return None
        total_seconds = sum(xs)
    hours, minutes = divmod(round(total_seconds / 60), 60)
    return f"Total cell time: {hours} h {minutes} min (sum of cell_seconds)"


def _judge_section(rows: list[dict]) -> list[str]:
    """The LLM-judge section (empty when no row names a judge model)."""
    judged = [r for r in _ok(rows) if r.get("judge_model") not in (None, "")]
    if not judged:
        return []
    models = ", ".join(f"`{m}`" for m in dict.fromkeys(str(r["judge_model"]) for r in judged))
    benches, methods = benchmarks_and_methods(judged)

    def counts(r):
        if r is None:
            return "-"
        return "/".join(_fmt(_num(r.get(c)), 0) for c in ("judge_ok", "judge_unparseable", "judge_missing"))

    return [
        "## LLM judge (higher is better; best in bold)", "",
        f"Judge model: {models}. It scores each generated test row on the benchmark's rubric; "
        "higher is better on every shipped benchmark (its targets sit at the top of the rubric). "
        "Replies per cell, ok / unparseable / missing (no reply); the mean judge score is over the "
        "ok rows:", "",
        _table(["benchmark"] + methods, [[b] + [counts(_row(judged, b, m)) for m in methods]
                                         for b in benches]), "",
        nll_table(rows, col="judge_score", lower_is_better=False), ""]


def _generation_table(rows: list[dict]) -> str:
    """Per benchmark: the test rows generated and the new-token budget (values of its cells)."""
    rows = _ok(rows)
    benches, _ = benchmarks_and_methods(rows)

    def vals(b, c, empty):
        got = dict.fromkeys(str(r.get(c)) if r.get(c) not in (None, "") else empty
                            for r in rows if str(r["benchmark"]) == b)
        return " / ".join(got)

    return _table(["benchmark", "gen_rows", "max_new_tokens"],
                  [[b, vals(b, "gen_rows", "all"), vals(b, "max_new_tokens", "-")] for b in benches])


def render_markdown(rows: list[dict], *, paired: Iterable[Mapping] = (), command: str | None = None,
                    notes: str = "", total_seconds: float | None = None) -> str:
    """The whole ``benchmarks.md`` text.

    Args:
        rows: result rows, as read back from ``benchmarks.csv``.
        paired: rows of ``paired.csv``; the paired section is left out when empty.
        command: the command recorded as the way to reproduce the results.
        notes: extra markdown appended at the end.
        total_seconds: the total time shown in the cost section (default: the sum of the
            rows' ``cell_seconds``; no line when neither is known).

    Returns:
        The markdown text, ending with a newline.
    """
    paired = list(paired)
    errors = [r for r in rows if r.get("status", "ok") != "ok"]
    total = _total_line(rows, total_seconds)
    parts = ["# Steering benchmarks", ""]
    if command:
        parts += ["Reproduce (from the repository root, with the reference data in "
                  "`../shared/benchmarks`):", "", "```bash", command, "```", ""]
    parts += [
        "Data: the reference-format CSVs (rows 0-9 train, 10-19 valid, 20+ test). Only the "
        "test rows are scored. No prompt or target text is copied here or into "
        "`records.jsonl`: its per-row records (one per benchmark, method and test row) name "
        "their prompt by `row` (0-based row of the CSV) and `row_id` (the CSV's `id` column), "
        "next to the row's test NLL and target token count, the generated text (or null when "
        "the row was not generated), its strength summary (mean / max |strength| over "
        "generated tokens and layers; empty for the prompt baselines and LoRA, which record "
        "none), its metrics and its judge score.",
        "",
        f"Intervals: `value [low, high]` is a {LEVEL:.0%} percentile bootstrap interval over "
        f"test rows ({N_RESAMPLES:,} resamples, seed {SEED}; `clas_lens.bench.stats`). Test NLL "
        "is the token-weighted mean (weights: target tokens per row), the other measures plain "
        "means over rows. Values without brackets come from results without intervals.",
        "",
        "## Test NLL (lower is better; best per benchmark in bold)",
        "",
        "Token-weighted mean cross-entropy of the target completion given the prompt "
        "(`steer_prompt`: given the steer-template prompt), targets cut at "
        "`max_completion_tokens`.",
        "",
        nll_table(rows),
        "",
    ]
    if paired:
        parts += ["## Paired comparisons: CLAS against each method", "", paired_summary(paired), ""]
    parts += [
        "## Embedding similarity with the target (higher is better; best in bold)",
        "",
        "Mean cosine similarity (all-MiniLM-L6-v2) between the greedy generation and the "
        "target, over the generated test rows: the first `gen_rows` test rows of each "
        "benchmark (all when empty), each generated with up to that benchmark's "
        "`max_new_tokens` new tokens (see Settings).",
        "",
        nll_table(rows, col="embed_sim", lower_is_better=False),
        "",
        "## Behaviour metrics per benchmark",
        "",
        "Means over the generations of the offline rule-based metrics in "
        "`clas_lens/bench/metrics/` (heuristic checks; the LLM judge, when run, has its own "
        "section). Benchmarks without specific metrics get only NLL and embedding similarity.",
        "",
        metric_tables(rows),
        "",
        *_judge_section(rows),
        "## Cost",
        "",
        "`train s` is the wall time of training (LAS: the grid search); CPU, shared machine.",
        "",
        cost_table(rows),
        "",
        *([total, ""] if total else []),
        "## Directions",
        "",
        "The probe directions of `las`, `las_layerwise` and `clas`, fitted once per benchmark "
        "on its train and valid rows: on the template contrast (base against steer template) "
        "where the two templates differ, otherwise on a response contrast (the target "
        "completion against the unsteered model's greedy answer, read at the last completion "
        "token). `direction_acc_mean` is the held-out probe accuracy averaged over layers.",
        "",
        directions_table(rows),
        "",
        "## Settings",
        "",
        settings_summary(rows),
        "",
        "Generation per benchmark (`gen_rows`: test rows generated; `max_new_tokens`: "
        "new-token budget):",
        "",
        _generation_table(rows),
        "",
        "Methods: `base_prompt` / `steer_prompt` are the unsteered model on the base / steer "
        "prompt; `las` has one coefficient for all layers chosen on the train pairs' NLL (targets "
        "capped as in training) over the grid in the `las_grid` column "
        "(`clas_lens.training.las_grid`: evenly spaced from 0 to 4 |h| / L); `las_layerwise`, "
        "`clas`, `reft` and `lora` are trained with "
        "`clas_lens.training.train` (AdamW, default learning rates, full batch, checkpoint chosen "
        "on the valid pairs). The `protocol` column names the training protocol "
        "(`clas_lens.training.PROTOCOLS`: `clas_lens` caps targets at `max_completion_tokens` "
        "and ends every target with the end-of-turn token; `reference` follows the CLAS "
        "reference trainer). Directions: see above. Generation is greedy, without "
        "repetition penalty (`repetition_penalty` 1.0: "
        "a penalty would hide the looping the Repetition benchmark measures). Pairs are "
        "sorted by token length before batching (less padding; the means are unchanged).",
    ]
    if notes:
        parts += ["", notes]
    if errors:
        parts += ["", "## Failed cells", ""] + [
            f"- {r.get('benchmark')} / {r.get('method')}: {r.get('error')}" for r in errors]
    return "\n".join(parts) + "\n"


def write_markdown(rows: list[dict], path: str | os.PathLike, *, paired: Iterable[Mapping] = (),
                   command: str | None = None, notes: str = "",
                   total_seconds: float | None = None) -> Path:
    """Write :func:`render_markdown` to ``path`` (atomically); the arguments are the same."""
    path = Path(path)
    atomic_write_text(path, render_markdown(rows, paired=paired, command=command, notes=notes,
                                            total_seconds=total_seconds))
    return path


def nll_figure(rows: list[dict], col: str = "test_nll", *, ylabel: str | None = None):
    """Grouped bars of one result column: benchmarks on the x axis, one bar per method.

    Bars whose row has ``<col>_ci_low`` and ``<col>_ci_high`` get an error bar spanning
    that interval (clipped at the bar's value if the interval does not contain it).

    Args:
        rows: result rows, as read back from ``benchmarks.csv``.
        col: the column drawn.
        ylabel: label of the y axis (default: ``test NLL (nats/token)`` for ``test_nll``,
            else the column name).

    Returns:
        A matplotlib ``Figure`` (not shown, not saved).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    rows = _ok(rows)
    benches, methods = benchmarks_and_methods(rows)
    fig = Figure(figsize=(max(6.0, 1.3 * len(benches) + 2), 4.4), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(methods))
    cmap = matplotlib.colormaps["tab10"]
    any_ci = False
    for k, m in enumerate(methods):
        xs, ys, err = [], [], []
        for i, b in enumerate(benches):
            r = _row(rows, b, m)
            v = None if r is None else _num(r.get(col))
            if v is None:
                continue
            xs.append(i - 0.4 + width * (k + 0.5))
            ys.append(v)
            lo, hi = _num(r.get(f"{col}_ci_low")), _num(r.get(f"{col}_ci_high"))
            if lo is not None and hi is not None:
                err.append((xs[-1], v, max(0.0, v - lo), max(0.0, hi - v)))
        ax.bar(xs, ys, width=width, label=m, color=cmap(k % 10))
        if err:
            any_ci = True
            ex, ey, down, up = zip(*err)
            ax.errorbar(ex, ey, yerr=[down, up], fmt="none", ecolor="black", elinewidth=0.8,
                        capsize=2, label="_nolegend_")
    ax.set_xticks(range(len(benches)), benches, rotation=20, ha="right")
    ax.set_ylabel(ylabel or ("test NLL (nats/token)" if col == "test_nll" else col))
    title = (f"{col} per benchmark and method (lower is better)" if col == "test_nll"
             else f"{col} per benchmark and method")
    if any_ci:
        title += f"\n{LEVEL:.0%} bootstrap intervals over test rows"
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=min(4, max(1, len(methods))), loc="upper left",
              bbox_to_anchor=(0, -0.18) if len(benches) > 1 else None)
    ax.grid(axis="y", alpha=0.3)
    return fig


__all__ = ["cost_table", "directions_table", "metric_tables", "nll_figure", "nll_table",
           "paired_summary", "paired_table", "render_markdown", "write_markdown"]
