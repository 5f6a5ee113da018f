"""Concept data: contrast sets for probes and (prompt, completion) sets for steering.

Example:
    >>> cs = ContrastSet.from_templates(["a cat"], "Describe {prompt}.",
    ...                                 "Describe {prompt} cheerfully.")
    >>> cs.prompts, cs.labels
    (['Describe a cat.', 'Describe a cat cheerfully.'], [0, 1])
"""

from __future__ import annotations

import csv
import io
import json
import operator
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "valid", "test")
REFERENCE_COLUMNS = ("x", "y", "base_template", "steer_template", "base_input")
LLAMA_EOT = "<|eot_id|>"
_REFERENCE_SPLIT = ((0, 10, "train"), (10, 20, "valid"), (20, None, "test"))


class DataError(ValueError):
    """A data file or argument is malformed; the message names the file, row and column."""


def _fill(template: str, value: str) -> str:
    # str.format would choke on the braces of code prompts; replace only the field.
    return template.replace("{prompt}", value)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        # bytes, not read_text(): no newline translation, so a "\r" inside a quoted CSV
        # cell is kept as written
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err})") from err


def read_jsonl(path: str | os.PathLike, required: Sequence[str]) -> list[dict]:
    """Read a JSONL file; every line must be an object holding the ``required`` keys."""
    path = Path(path)
    rows = []
    # JSON Lines are separated by "\n" only: str.splitlines() would also cut at U+2028,
    # U+0085, form feeds... which may appear raw inside a JSON string
    for n, line in enumerate(_read_text(path).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {n}: invalid JSON ({err.msg})") from err
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {n}: expected a JSON object")
        for key in required:
            if key not in row:
                raise DataError(f"{path}, line {n}: missing field {key!r}")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def read_csv(path: str | os.PathLike, required: Sequence[str]) -> list[dict]:
    """Read a CSV file with a header holding the ``required`` columns."""
    path = Path(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    text = _read_text(path)
    # newline="" as the csv module asks: quoted cells may hold any line break, and only
    # \r, \n end a record (str.splitlines() would also cut at U+2028, U+0085, ...)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        header = list(reader.fieldnames or [])
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(map(repr, missing))}")
        dup = sorted({c for c in header if header.count(c) > 1})
        if dup:
            raise DataError(f"{path}: duplicate column(s) {', '.join(map(repr, dup))}")
        for r in reader:
            if None in r:
                raise DataError(f"{path}, line {reader.line_num}: more cells than the header "
                                f"has columns ({len(header)})")
            short = [c for c in required if r.get(c) is None]
            if short:
                raise DataError(f"{path}, line {reader.line_num}: too few cells (no value for "
                                f"column(s) {', '.join(map(repr, short))})")
            rows.append(dict(r))
    except csv.Error as err:
        raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({err})") from err
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _nonempty(value, where: str) -> str:
    if value is None:
        raise DataError(f"{where}: missing (empty cell or null)")
    if not isinstance(value, str):
        raise DataError(f"{where}: expected text, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: empty")
    return value


def _label(value, where: str) -> int:
    """A 0/1 label from an int, an integral float or the text "0"/"1"; anything else is refused
    (``int(0.7)`` would silently give 0)."""
    if isinstance(value, bool):
        raise DataError(f"{where}: {value!r} is not 0 or 1 (write the number, not a boolean)")
    if isinstance(value, str):
        value = value.strip()
        if value in ("0", "1"):
            return int(value)
    elif isinstance(value, int) and value in (0, 1):
        return int(value)
    elif isinstance(value, float) and value in (0.0, 1.0):
        return int(value)
    else:
        try:  # numpy / torch integer scalars
            v = operator.index(value)
            if v in (0, 1):
                return int(v)
        except TypeError:
            pass
    raise DataError(f"{where}: {value!r} is not 0 or 1")


@dataclass(frozen=True)
class ContrastSet:
    """Prompts with binary labels: 0 = without the behaviour, 1 = with it.

    Attributes:
        prompts: user prompts (chat formatting is applied when activations are read).
        labels: 0 or 1 per prompt; both classes must be present.
        pair_ids: optional pairing (same id = same input with and without the
            behaviour), used by the ``pca`` method and by paired splits.
        name: a label recorded in provenance.
        completions: optional assistant text after each prompt (response contrasts):
            activations are then read over the completion instead of the prompt (an
            empty completion, a model that answered nothing, is read at the last prompt
            token).
        source: where the contrast comes from, recorded with the directions:
            ``"template"`` (a base and a steer template), ``"response"`` (target vs the
            model's own answer) or ``"prompts"`` (prompts given as they are).
    """

    prompts: list[str]
    labels: list[int]
    pair_ids: list[int] | None = None
    name: str = ""
    completions: list[str] | None = None
    source: str = "prompts"

    def __post_init__(self):
        if isinstance(self.prompts, str):
            raise DataError("ContrastSet: prompts must be a list of strings, not one string")
        prompts = list(self.prompts)
        labels = [_label(x, f"ContrastSet label {i}") for i, x in enumerate(self.labels)]
        if not prompts:
            raise DataError("ContrastSet: no prompts")
        if len(prompts) != len(labels):
            raise DataError(f"ContrastSet: {len(prompts)} prompts but {len(labels)} labels")
        for i, (p, y) in enumerate(zip(prompts, labels)):
            _nonempty(p, f"ContrastSet prompt {i}")
            if y not in (0, 1):
                raise DataError(f"ContrastSet label {i} is {y!r}; labels must be 0 or 1")
        if len(set(labels)) < 2:
            raise DataError(
                f"ContrastSet has only label {labels[0]}: a probe needs both classes (0 and 1)"
            )
        if self.pair_ids is not None and len(self.pair_ids) != len(prompts):
            raise DataError("ContrastSet: pair_ids must have one entry per prompt")
        if self.completions is not None:
            if isinstance(self.completions, str) or len(self.completions) != len(prompts):
                raise DataError("ContrastSet: completions must be a list with one text per prompt")
            for i, c in enumerate(self.completions):
                if not isinstance(c, str):
                    raise DataError(f"ContrastSet completion {i}: expected text, "
                                    f"got {type(c).__name__}")
            object.__setattr__(self, "completions", list(self.completions))
        object.__setattr__(self, "prompts", prompts)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def items(self) -> list[tuple[str, str | None]]:
        """``(prompt, completion)`` per example (completion ``None`` for prompt contrasts)."""
        completions = self.completions or [None] * len(self.prompts)
        return list(zip(self.prompts, completions))

    def signal_problem(self) -> str | None:
        """Why this contrast cannot carry a signal, or ``None`` when it can.

        A contrast has no signal when the two labels' examples are identical pair by
        pair, or when the examples of one label are exactly those of the other.
        """
        items, labels = self.items, self.labels
        way_out = ("Use a contrast whose labels differ: templates that differ, or a response "
                   "contrast (clas_lens.response_contrast(model, steer_set): the target "
                   "completion against the model's own answer).")
        if self.pair_ids is not None:
            pairs: dict = {}
            for it, y, p in zip(items, labels, self.pair_ids):
                pairs.setdefault(p, (set(), set()))[y].add(it)
            both = [(a, b) for a, b in pairs.values() if a and b]
            if both and all(a == b for a, b in both):
                return (f"contrast {self.name!r}: the label-0 and label-1 prompts are identical "
                        f"pair by pair ({len(both)} pairs), so a probe has nothing to separate "
                        f"(are the base and steer templates the same?). {way_out}")
        zero = {it for it, y in zip(items, labels) if y == 0}
        one = {it for it, y in zip(items, labels) if y == 1}
        if zero == one:
            return (f"contrast {self.name!r}: the label-0 prompts are exactly the label-1 "
                    f"prompts, so a probe has nothing to separate. {way_out}")
        return None

    def check_signal(self) -> None:
        """Raise :class:`DataError` (a ``ValueError``) when :meth:`signal_problem` finds one."""
        problem = self.signal_problem()
        if problem is not None:
            raise DataError(problem)

    @classmethod
    def from_templates(
        cls, inputs: Iterable[str], base_template: str, steer_template: str, *, name: str = ""
    ) -> "ContrastSet":
        """Paired prompts: each input filled into the base (label 0) and steer (label 1) template."""
        inputs = list(inputs)
        if not inputs:
            raise DataError("ContrastSet.from_templates: no inputs")
        for t, which in ((base_template, "base_template"), (steer_template, "steer_template")):
            if "{prompt}" not in t:
                raise DataError(f"ContrastSet.from_templates: {which} has no '{{prompt}}' field")
        prompts, labels, pairs = [], [], []
        for i, x in enumerate(inputs):
            prompts += [_fill(base_template, x), _fill(steer_template, x)]
            labels += [0, 1]
            pairs += [i, i]
        return cls(prompts, labels, pairs, name, source="template")

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, *, name: str | None = None) -> "ContrastSet":
        """Lines ``{"prompt": str, "label": 0|1}``; consecutive 0/1 lines with equal
        ``pair`` fields (optional) are paired."""
        rows = read_jsonl(path, ("prompt", "label"))
        return cls._from_rows(rows, Path(path), name, "line")

    @classmethod
    def from_csv(cls, path: str | os.PathLike, *, name: str | None = None) -> "ContrastSet":
        """A CSV with columns ``prompt`` and ``label`` (and optionally ``pair``)."""
        rows = read_csv(path, ("prompt", "label"))
        return cls._from_rows(rows, Path(path), name, "row")

    @classmethod
    def _from_rows(cls, rows, path: Path, name, unit: str) -> "ContrastSet":
        prompts, labels, pairs = [], [], []
        for n, row in enumerate(rows, start=1):
            prompts.append(_nonempty(row["prompt"], f"{path}, {unit} {n}, field 'prompt'"))
            labels.append(_label(row["label"], f"{path}, {unit} {n}, field 'label'"))
            pairs.append(row.get("pair"))
        if any(p in (None, "") for p in pairs):
            pair_ids = None
        else:
            order: dict[str, int] = {}
            pair_ids = [order.setdefault(str(p), len(order)) for p in pairs]
        if pair_ids is None and _alternating(labels):
            pair_ids = [i // 2 for i in range(len(labels))]
        return cls(prompts, labels, pair_ids, name if name is not None else path.parent.name)


def _alternating(labels: list[int]) -> bool:
    return len(labels) % 2 == 0 and all(
        labels[i] == 0 and labels[i + 1] == 1 for i in range(0, len(labels), 2)
    )


@dataclass(frozen=True)
class SteerSet:
    """(prompt, target completion) pairs with train / valid / test splits.

    Attributes:
        prompts: user prompts.
        completions: target completions showing the behaviour (no end-of-turn marker:
            the model's own is appended when pairs are tokenised for training).
        splits: ``"train"``, ``"valid"`` or ``"test"`` per pair.
        name: the concept or benchmark name.
        rows: the source rows (for reference CSVs: ids, templates, labels), if any.
    """

    prompts: list[str]
    completions: list[str]
    splits: list[str]
    name: str = ""
    rows: list[dict] | None = field(default=None, repr=False)

    def __post_init__(self):
        for what in ("prompts", "completions", "splits"):
            if isinstance(getattr(self, what), str):
                raise DataError(f"SteerSet: {what} must be a list of strings, not one string")
        n = len(self.prompts)
        if n == 0:
            raise DataError("SteerSet: no pairs")
        if len(self.completions) != n or len(self.splits) != n:
            raise DataError("SteerSet: prompts, completions and splits differ in length")
        for i, s in enumerate(self.splits):
            if s not in SPLITS:
                raise DataError(f"SteerSet pair {i}: split {s!r} is not one of {SPLITS}")
        for i, (p, c) in enumerate(zip(self.prompts, self.completions)):
            _nonempty(p, f"SteerSet pair {i}, prompt")
            if not isinstance(c, str):
                raise DataError(f"SteerSet pair {i}, completion: expected text")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """The (prompt, completion) tuples."""
        return list(zip(self.prompts, self.completions))

    def split(self, name: str) -> "SteerSet":
        """The subset of one split (an error if it is empty)."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; choose one of {SPLITS}")
        idx = [i for i, s in enumerate(self.splits) if s == name]
        if not idx:
            raise DataError(f"SteerSet {self.name!r} has no {name!r} pairs")
        return self.subset(idx)

    def subset(self, idx: Sequence[int]) -> "SteerSet":
        """The pairs at the given indices."""
        return SteerSet(
            [self.prompts[i] for i in idx],
            [self.completions[i] for i in idx],
            [self.splits[i] for i in idx],
            self.name,
            None if self.rows is None else [self.rows[i] for i in idx],
        )

    @property
    def train(self) -> "SteerSet":
        return self.split("train")

    @property
    def valid(self) -> "SteerSet":
        return self.split("valid")

    @property
    def test(self) -> "SteerSet":
        return self.split("test")

    def steer_prompts(self) -> list[str]:
        """Prompts filled into the steer template (the behaviour asked for in words)."""
        if not self.rows or "steer_template" not in self.rows[0]:
            raise DataError(f"SteerSet {self.name!r} has no steer_template (not a reference CSV)")
        return [_fill(r["steer_template"], r["base_input"]) for r in self.rows]

    def contrast_set(self, splits: Sequence[str] = ("train", "valid")) -> ContrastSet:
        """Template contrasts for probing, from the given splits only (never test by default).

        Each input is filled into ``base_template`` (label 0) and ``steer_template`` (label 1).
        """
        if not self.rows or "base_template" not in self.rows[0]:
            raise DataError(f"SteerSet {self.name!r} has no templates (not a reference CSV)")
        rows = [r for r, s in zip(self.rows, self.splits) if s in splits]
        if not rows:
            raise DataError(f"SteerSet {self.name!r}: no rows in splits {tuple(splits)}")
        prompts, labels, pairs = [], [], []
        for i, r in enumerate(rows):
            prompts += [_fill(r["base_template"], r["base_input"]),
                        _fill(r["steer_template"], r["base_input"])]
            labels += [0, 1]
            pairs += [i, i]
        return ContrastSet(prompts, labels, pairs, self.name, source="template")

    def templates_differ(self, splits: Sequence[str] = ("train", "valid")) -> bool:
        """Whether the template contrast of these splits has any pair whose prompts differ."""
        return self.contrast_set(splits).signal_problem() is None

    def response_contrast(self, answers: Sequence[str],
                          splits: Sequence[str] = ("train", "valid")) -> ContrastSet:
        """Response contrast from the model's own answers to the prompts of ``splits``.

        Label 1 is each prompt with its target completion, label 0 the same prompt with
        the answer the model gave (``answers``, one per pair of ``splits``, in order; an
        empty answer is allowed); activations are read over the completion. Greedy answers
        of the unsteered model come from :func:`clas_lens.contrast.response_contrast`, which calls this.
        """
        if isinstance(answers, str):
            raise DataError("response_contrast: answers must be a list of strings, not one string")
        idx = [i for i, s in enumerate(self.splits) if s in splits]
        if not idx:
            raise DataError(f"SteerSet {self.name!r}: no rows in splits {tuple(splits)}")
        answers = list(answers)
        if len(answers) != len(idx):
            raise DataError(f"response_contrast: {len(answers)} answers for the {len(idx)} pairs "
                            f"of splits {tuple(splits)}")
        prompts, completions, labels, pairs = [], [], [], []
        for k, (i, answer) in enumerate(zip(idx, answers)):
            if not isinstance(answer, str):
                raise DataError(f"response_contrast: the answer to pair {i} is not text")
            prompts += [self.prompts[i], self.prompts[i]]
            completions += [answer, self.completions[i]]
            labels += [0, 1]
            pairs += [k, k]
        return ContrastSet(prompts, labels, pairs, self.name, completions, source="response")

    def end_of_turn_marks(self) -> list[bool]:
        """Per pair: does the source target carry the end-of-turn marker ``<|eot_id|>``?

        For a reference CSV the raw ``y`` cell is read (the marker is stripped from
        :attr:`completions`); otherwise the completion's own text.
        """
        if self.rows is not None and all("y" in r for r in self.rows):
            return [LLAMA_EOT in (r["y"] or "") for r in self.rows]
        return [c.rstrip().endswith(LLAMA_EOT) for c in self.completions]

    @classmethod
    def from_reference_csv(cls, path: str | os.PathLike, *, name: str | None = None) -> "SteerSet":
        """Read the CLAS reference CSV format (rows 0-9 train, 10-19 valid, 20+ test).

        The Llama end-of-turn marker ``<|eot_id|>`` is stripped from targets.
        """
        path = Path(path)
        rows = read_csv(path, REFERENCE_COLUMNS)
        prompts, completions, splits = [], [], []
        for n, row in enumerate(rows):
            where = f"{path}, row {n} (id {row.get('id', '?')})"
            prompts.append(_nonempty(row["x"], f"{where}, column 'x'"))
            y = (row["y"] or "").replace(LLAMA_EOT, "").rstrip()
            completions.append(_nonempty(y, f"{where}, column 'y'"))
            _nonempty(row["base_input"], f"{where}, column 'base_input'")
            for col in ("base_template", "steer_template"):
                if "{prompt}" not in (row[col] or ""):
                    raise DataError(f"{where}, column {col!r}: no '{{prompt}}' field")
            splits.append(next(s for a, b, s in _REFERENCE_SPLIT if n >= a and (b is None or n < b)))
        if name is None:
            name = benchmark_name(path)
        return cls(prompts, completions, splits, name, rows)

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, *, name: str | None = None) -> "SteerSet":
        """Lines ``{"prompt": str, "completion": str, "split": "train"|"valid"|"test"}``."""
        path = Path(path)
        rows = read_jsonl(path, ("prompt", "completion", "split"))
        prompts, completions, splits = [], [], []
        for n, row in enumerate(rows, start=1):
            prompts.append(_nonempty(row["prompt"], f"{path}, line {n}, field 'prompt'"))
            completions.append(_nonempty(row["completion"], f"{path}, line {n}, field 'completion'"))
            if not isinstance(row["split"], str) or row["split"] not in SPLITS:
                raise DataError(f"{path}, line {n}, field 'split': {row['split']!r} not in {SPLITS}")
            splits.append(row["split"])
        return cls(prompts, completions, splits, name if name is not None else path.parent.name, rows)


def benchmark_name(path: str | os.PathLike) -> str:
    """The benchmark a reference CSV holds: its file name before ``_SteerDataset``.

    ``GSM8K`` for ``.../GSM8K_SteerDataset.csv``; a file without that suffix gives its name
    less ``.csv`` (``Toy.csv``: ``Toy``). :meth:`SteerSet.from_reference_csv`, the benchmark
    harness and its metrics all name a benchmark this way.
    """
    return Path(path).name.removesuffix(".csv").split("_SteerDataset")[0]


def load_concept(folder: str | os.PathLike) -> tuple[ContrastSet, SteerSet]:
    """Load a ``data/<concept>/`` folder: ``(contrast.jsonl, pairs.jsonl)``."""
    folder = Path(folder)
    return ContrastSet.from_jsonl(folder / "contrast.jsonl"), SteerSet.from_jsonl(folder / "pairs.jsonl")
