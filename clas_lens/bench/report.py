"""Reports of benchmark results: the markdown tables and the test-NLL figure.

Everything here only formats rows already computed by
:func:`clas_lens.bench.harness.run_benchmarks` (dicts as read back from
``results/benchmarks.csv``); nothing is computed on a model.

Example:
    >>> from clas_lens.bench.harness import read_results          # doctest: +SKIP
    >>> rows = read_results("results/benchmarks.csv")             # doctest: +SKIP
    >>> fig = nll_figure(rows)                                    # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from clas_lens.io import atomic_write_text

METHOD_ORDER = ("base_prompt", "steer_prompt", "las", "las_layerwise", "clas", "reft", "lora")
SETTING_COLUMNS = ("model", "protocol", "direction_method", "seed", "n_test", "epochs",
                   "las_grid_size", "max_completion_tokens", "gen_rows", "max_new_tokens",
                   "repetition_penalty", "clas_lens", "transformer_lens", "torch")


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


def _cell(rows, bench, method, col):
    for r in rows:
        if str(r["benchmark"]) == bench and str(r["method"]) == method:
            return _num(r.get(col))
    return None


def _fmt(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def nll_table(rows: list[dict], *, col: str = "test_nll", lower_is_better: bool = True) -> str:
    """Markdown table benchmark x method of one column, the best value per row in bold."""
    rows = _ok(rows)
    benches, methods = benchmarks_and_methods(rows)
    body = []
    for b in benches:
        vals = [_cell(rows, b, m, col) for m in methods]
        present = [v for v in vals if v is not None]
        best = (min if lower_is_better else max)(present) if present else None
        body.append([b] + [("**" + _fmt(v) + "**") if v is not None and v == best else _fmt(v)
                           for v in vals])
    return _table(["benchmark"] + methods, body)


def metric_tables(rows: list[dict]) -> str:
    """Per benchmark: one row per method with embedding similarity and behaviour metrics."""
    rows = _ok(rows)
    benches, methods = benchmarks_and_methods(rows)
    parts = []
    for b in benches:
        brows = [r for r in rows if str(r["benchmark"]) == b]
        mcols = sorted({k for r in brows for k, v in r.items()
                        if k.startswith("m_") and _num(v) is not None})
        cols = ["embed_sim"] + mcols + ["strength_mean_abs", "n_gen"]
        body = []
        for m in methods:
            if not any(str(r["method"]) == m for r in brows):
                continue
            body.append([m] + [_fmt(_cell(brows, b, m, c), 0 if c == "n_gen" else 3)
                               for c in cols])
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


def render_markdown(rows: list[dict], *, command: str | None = None, notes: str = "") -> str:
    """The whole ``benchmarks.md`` text."""
    errors = [r for r in rows if r.get("status", "ok") != "ok"]
    parts = ["# Steering benchmarks", ""]
    if command:
        parts += ["Reproduce (from the repository root, with the reference data in "
                  "`../shared/benchmarks`):", "", "```bash", command, "```", ""]
    parts += [
        "Data: the reference-format CSVs (rows 0-9 train, 10-19 valid, 20+ test). Only the "
        "test rows are scored. No prompt or target text is copied here or into "
        "`generations.jsonl`: each generation names its prompt by `row` (0-based row of "
        "the CSV) and `row_id` (the CSV's `id` column), next to the method, the generated "
        "text and its strength summary (mean / max |strength| over generated tokens and "
        "layers; empty for the prompt baselines and LoRA, which record none).",
        "",
        "## Test NLL (lower is better; best per benchmark in bold)",
        "",
        "Token-weighted mean cross-entropy of the target completion given the prompt "
        "(`steer_prompt`: given the steer-template prompt), targets cut at "
        "`max_completion_tokens`.",
        "",
        nll_table(rows),
        "",
        "## Embedding similarity with the target (higher is better; best in bold)",
        "",
        "Mean cosine similarity (all-MiniLM-L6-v2) between the greedy generation and the "
        "target, over the first `gen_rows` test rows.",
        "",
        nll_table(rows, col="embed_sim", lower_is_better=False),
        "",
        "## Behaviour metrics per benchmark",
        "",
        "Means over the generations of the offline rule-based metrics in "
        "`clas_lens/bench/metrics/` (heuristic stand-ins for the reference's LLM judge). "
        "Benchmarks without specific metrics get only NLL and embedding similarity.",
        "",
        metric_tables(rows),
        "",
        "## Cost",
        "",
        "`train s` is the wall time of training (LAS: the grid search); CPU, shared machine.",
        "",
        cost_table(rows),
        "",
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


def write_markdown(rows: list[dict], path: str | os.PathLike, *, command: str | None = None,
                   notes: str = "") -> Path:
    """Write :func:`render_markdown` to ``path`` (atomically)."""
    path = Path(path)
    atomic_write_text(path, render_markdown(rows, command=command, notes=notes))
    return path


def nll_figure(rows: list[dict], *, col: str = "test_nll", ylabel: str = "test NLL (nats/token)"):
    """Grouped bars of one result column: benchmarks on the x axis, one bar per method.

    Returns:
        A matplotlib ``Figure`` (not shown, not saved).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    rows = _ok(rows)
    benches, methods = benchmarks_and_methods(rows)
    fig = Figure(figsize=(max(6.0, 1.3 * len(benches) + 2), 4.2), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(methods))
    cmap = matplotlib.colormaps["tab10"]
    for k, m in enumerate(methods):
        xs, ys = [], []
        for i, b in enumerate(benches):
            v = _cell(rows, b, m, col)
            if v is not None:
                xs.append(i - 0.4 + width * (k + 0.5))
                ys.append(v)
        ax.bar(xs, ys, width=width, label=m, color=cmap(k % 10))
    ax.set_xticks(range(len(benches)), benches, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{col} per benchmark and method (lower is better)" if col == "test_nll"
                 else f"{col} per benchmark and method")
    ax.legend(fontsize=8, ncols=min(4, max(1, len(methods))), loc="upper left",
              bbox_to_anchor=(0, -0.18) if len(benches) > 1 else None)
    ax.grid(axis="y", alpha=0.3)
    return fig


__all__ = ["cost_table", "directions_table", "metric_tables", "nll_figure", "nll_table", "render_markdown",
           "write_markdown"]
