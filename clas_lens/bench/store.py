"""The files of a benchmark run: the summary CSV, the per-row records, the resume keys.

``benchmarks.csv`` has one row per (benchmark, method) cell; ``records.jsonl`` one line
per (benchmark, method, test row) with the row's completion NLL, token count, generation,
metrics and judge score, from which every summary column can be recomputed. Both are
rewritten atomically after every cell. A cell is identified for resuming by the values of
:data:`SETTING_KEYS` (:func:`cell_key`).

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> store = ResultStore(out)
    >>> row = {"benchmark": "GSM8K", "method": "clas", "status": "ok", "test_nll": 0.5}
    >>> store.put(row, [{"benchmark": "GSM8K", "method": "clas", "row": 20, "row_id": "7",
    ...                  "test_nll": 0.5, "n_tokens": 12}], cell_key(row))
    >>> read_results(out / CSV_NAME)[0]["test_nll"], len(read_records(out / RECORDS_NAME))
    (0.5, 1)
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from clas_lens.io import atomic_write_text

CSV_NAME = "benchmarks.csv"
MD_NAME = "benchmarks.md"
RECORDS_NAME = "records.jsonl"
PAIRED_NAME = "paired.csv"
#: the per-benchmark work shared by the methods (directions, unsteered results); not committed
CACHE_DIR = "cache"

#: columns that must match for a finished cell to be reused
SETTING_KEYS = ("benchmark", "method", "data_sha256", "model", "direction_method", "seed",
                "n_test", "gen_rows", "max_new_tokens", "max_completion_tokens", "epochs",
                "las_grid_size", "repetition_penalty", "protocol", "contrast")

COLUMNS = (
    "benchmark", "method", "status", "test_nll", "test_nll_ci_low", "test_nll_ci_high",
    "embed_sim", "embed_sim_ci_low", "embed_sim_ci_high", "n_test", "n_gen",
    "max_new_tokens", "max_completion_tokens", "gen_rows", "repetition_penalty", "protocol",
    "epochs", "las_grid_size", "train_seconds", "eval_seconds", "cell_seconds", "direction_seconds",
    "n_params", "best_epoch", "valid_loss_before", "valid_loss_after", "las_c", "las_grid",
    "las_search", "direction_acc_mean", "contrast", "strength_mean_abs", "strength_max_abs",
    "direction_method", "seed", "model", "data_sha256", "clas_lens", "transformer_lens", "torch",
    "error", "judge_model", "judge_score", "judge_score_ci_low", "judge_score_ci_high",
    "judge_ok", "judge_unparseable", "judge_missing",
)

#: the columns of ``paired.csv``, in order (see :func:`write_paired`)
PAIRED_COLUMNS = ("benchmark", "method", "measure", "reference", "mean_diff", "ci_low", "ci_high",
                  "verdict", "n", "n_missing", "higher_is_better")
_PAIRED_FLOATS = ("mean_diff", "ci_low", "ci_high")
_PAIRED_INTS = ("n", "n_missing")
_PAIRED_STRINGS = ("benchmark", "method", "measure", "reference", "verdict")

STRING_COLUMNS = {"benchmark", "method", "status", "model", "data_sha256", "direction_method",
                  "clas_lens", "transformer_lens", "torch", "error", "las_grid", "protocol",
                  "contrast", "las_search", "judge_model"}


def fmt(v) -> str:
    """A cell's text: ``""`` for ``None``, ``repr`` for floats (exact round trip)."""
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else repr(v)
    return str(v)


def parse(v: str):
    """A cell's value: ``None`` for ``""``, else an int, a float or the text."""
    if v == "":
        return None
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def read_results(path: str | os.PathLike) -> list[dict]:
    """Rows of a results CSV with numbers parsed (empty cells are ``None``)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: (v if k in STRING_COLUMNS and v != "" else parse(v)) for k, v in r.items()}
                for r in csv.DictReader(fh)]


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping], columns: Iterable[str],
              cell=fmt) -> Path:
    """Write ``rows`` atomically: ``columns`` first, every other key after them, sorted.

    Args:
        path: the CSV path.
        rows: dicts (absent keys are empty cells).
        columns: the leading columns, in order.
        cell: the text of a value (default :func:`fmt`).
    """
    rows, columns = list(rows), list(columns)
    cols = columns + sorted({k for r in rows for k in r} - set(columns))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: cell(r.get(k)) for k in cols})
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def write_results(path: str | os.PathLike, rows: list[dict]) -> None:
    """Rewrite the results CSV atomically (fixed columns, then the ``m_*`` columns)."""
    metric_cols = sorted({k for r in rows for k in r if k.startswith("m_")})
    write_csv(path, rows, list(COLUMNS) + metric_cols)


def truth(v) -> bool | None:
    """A boolean from a bool, a number or CSV text (``True`` / ``False``); ``None`` when empty."""
    if v is None or v == "":
        return None
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


def _paired_text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, numbers.Integral):
        return str(int(v))
    return repr(float(v)) if isinstance(v, numbers.Real) else str(v)


def write_paired(path: str | os.PathLike, paired: Iterable[Mapping]) -> Path:
    """Write the paired comparisons as ``paired.csv`` (atomically).

    Args:
        path: the CSV path.
        paired: dicts with the :data:`PAIRED_COLUMNS` (absent keys are left empty; other
            keys follow as extra columns, sorted by name).

    Returns:
        The path written. Floats are written with ``repr`` (read back exactly), ``None`` as
        an empty cell, booleans as ``True`` / ``False``.
    """
    return write_csv(path, paired, PAIRED_COLUMNS, cell=_paired_text)


def _parse_paired(key: str, text: str):
    if text == "":
        return None
    if key in _PAIRED_STRINGS:
        return text
    if key == "higher_is_better":
        return truth(text)
    kinds = (float,) if key in _PAIRED_FLOATS else (int,) if key in _PAIRED_INTS else (int, float, str)
    for kind in kinds:
        try:
            return kind(text)
        except ValueError:
            pass
    kind = "a number" if kinds == (float,) else "an integer"
    raise ValueError(f"column {key!r} holds {text!r}, not {kind}")


def read_paired(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``paired.csv`` with numbers and booleans parsed (empty cells are ``None``).

    Args:
        path: the CSV written by :func:`write_paired`.

    Returns:
        One dict per comparison; ``[]`` when the file does not exist.

    Raises:
        ValueError: a number column holds text that is not a number of its kind.
    """
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        out = []
        for i, r in enumerate(csv.DictReader(fh), start=2):
            try:
                out.append({k: _parse_paired(k, v) for k, v in r.items()})
            except ValueError as e:
                raise ValueError(f"{path}, line {i}: {e}") from None
        return out


def cell_key(row: dict) -> tuple:
    """The resume key of a cell: its :data:`SETTING_KEYS` values as text (numbers normalised)."""
    return tuple(fmt(row.get(k)) if k in STRING_COLUMNS else fmt(parse(fmt(row.get(k))))
                 for k in SETTING_KEYS)


def read_records(path: str | os.PathLike) -> list[dict]:
    """The per-row records of a JSON-lines file (``[]`` when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def write_records(path: str | os.PathLike, records: list[dict]) -> None:
    """Rewrite a JSON-lines file of records atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


class ResultStore:
    """``benchmarks.csv`` and ``records.jsonl`` of a run folder, rewritten after every cell.

    Attributes:
        rows: the cell rows, in order.
        records: the per-row records of every cell.
        done: resume keys of the cells finished with status ``ok``.
    """

    def __init__(self, out: str | os.PathLike):
        out = Path(out)
        self.csv_path, self.records_path = out / CSV_NAME, out / RECORDS_NAME
        self.rows = read_results(self.csv_path)
        self.records = read_records(self.records_path)
        self.done = {cell_key(r) for r in self.rows if r.get("status") == "ok"}

    def cell_records(self, benchmark: str, method: str) -> list[dict]:
        """The records of one cell, in row order."""
        return [r for r in self.records if (r.get("benchmark"), r.get("method")) == (benchmark, method)]

    def put(self, row: dict, records: list[dict], key: tuple) -> None:
        """Replace the cell's row (in place, or appended) and its records; write both."""
        cell = (row["benchmark"], row["method"])
        at = [i for i, r in enumerate(self.rows) if (r.get("benchmark"), r.get("method")) == cell]
        if at:
            self.rows = [r for i, r in enumerate(self.rows) if i not in at[1:]]
            self.rows[at[0]] = row
        else:
            self.rows.append(row)
        self.records = [r for r in self.records
                        if (r.get("benchmark"), r.get("method")) != cell] + list(records)
        write_records(self.records_path, self.records)
        write_results(self.csv_path, self.rows)
        if row.get("status") == "ok":
            self.done.add(key)


__all__ = ["CACHE_DIR", "COLUMNS", "CSV_NAME", "MD_NAME", "PAIRED_COLUMNS", "PAIRED_NAME",
           "RECORDS_NAME", "ResultStore", "SETTING_KEYS", "STRING_COLUMNS", "cell_key", "fmt",
           "parse", "read_paired", "read_records", "read_results", "truth", "write_csv",
           "write_paired", "write_records", "write_results"]
