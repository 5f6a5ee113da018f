"""Uncertainty over test rows: bootstrap intervals and paired comparisons.

Every benchmark measure is a mean over test rows, so its uncertainty is that of a mean
over a small sample (50 rows per benchmark in the reference split). This module gives

* :func:`bootstrap_ci` - a 95% percentile bootstrap interval for a (optionally
  weighted) mean of one method's per-row values;
* :func:`paired_bootstrap` - a paired bootstrap of method A minus method B over the
  SAME rows (each resample draws row indices once and uses them for both methods), with
  a verdict ``better`` / ``worse`` / ``indistinguishable`` that respects the measure's
  direction (``higher_is_better``);
* :func:`summary_columns` and :func:`paired_rows` - the same, from per-row records
  (dicts with ``benchmark``, ``method``, ``row_id`` and measure values), as the
  ``<measure>``, ``<measure>_ci_low``, ``<measure>_ci_high`` columns of a summary table
  and the rows of a paired table comparing one method (``clas``) with every other.

Conventions: :data:`N_RESAMPLES` (10,000) resamples, seed :data:`SEED` (0), level
:data:`LEVEL` (0.95), percentile intervals (the 2.5% and 97.5% quantiles of the
resampled means). A fresh generator is seeded for every interval, so a result does not
depend on which other intervals were computed before it. Missing values (``None`` or
NaN) are left out and counted; in a paired comparison a row counts as missing when
either method lacks it. Weighted means (``sum(w x) / sum(w)``: per-row mean NLLs weighted
by their target token counts give the token-weighted test NLL) are resampled as ratios:
the rows are drawn, then both sums are taken over the drawn rows.

Example:
    >>> import numpy as np
    >>> ci = bootstrap_ci(np.arange(10.0))
    >>> round(ci.mean, 2), ci.n, ci.ci_low < 4.5 < ci.ci_high
    (4.5, 10, True)
    >>> paired_bootstrap([3.0, 5.0, 7.0, 9.0], [2.0, 4.0, 6.0, 8.0]).verdict
    'better'
    >>> paired_bootstrap([3.0, 5.0, 7.0, 9.0], [2.0, 4.0, 6.0, 8.0], higher_is_better=False).verdict
    'worse'
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float

N_RESAMPLES = 10_000
SEED = 0
LEVEL = 0.95
#: resampled values held in memory at once (rows x resamples), to bound memory on big inputs
_CHUNK_VALUES = 4_000_000
VERDICTS = ("better", "worse", "indistinguishable")
KEYS = ("benchmark", "method", "row_id")
#: one number per test row; ``None`` or NaN marks a missing value
Values = Float[np.ndarray, "row"] | Sequence[float | None]  # noqa: F821


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap interval.

    Attributes:
        mean: the (weighted) mean of the values present (NaN when none is).
        ci_low: lower end of the percentile interval.
        ci_high: upper end of the percentile interval.
        n: number of values used.
        n_missing: number of values left out (``None`` or NaN).
    """

    mean: float
    ci_low: float
    ci_high: float
    n: int
    n_missing: int


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of method A against method B (difference A - B).

    Attributes:
        mean_diff: mean of A minus mean of B over the rows both have.
        ci_low: lower end of the paired percentile interval of the difference.
        ci_high: upper end.
        n: rows both methods have.
        n_missing: rows left out because either method lacks a value.
        verdict: ``better`` when the interval excludes 0 on A's good side, ``worse`` when it
            excludes 0 on the bad side, else ``indistinguishable`` (also with no rows).
    """

    mean_diff: float
    ci_low: float
    ci_high: float
    n: int
    n_missing: int
    verdict: str


def _as_array(values, name: str) -> np.ndarray:
    arr = np.array([np.nan if v is None else v for v in values], dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, got shape {arr.shape}")
    return arr


def _weights(weights, n: int, name: str) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = _as_array(weights, name)
    if w.shape != (n,):
        raise ValueError(f"{name} has {w.shape[0]} entries for {n} values: give one weight per value")
    if np.any(w[np.isfinite(w)] < 0):
        raise ValueError(f"{name} must be non-negative (e.g. token counts)")
    return w


@functools.lru_cache(maxsize=8)
def _draw_counts(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """How often each of ``n`` rows is drawn in each resample: ``[n_resamples, n]``, read-only."""
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    flat = (idx + np.arange(n_resamples)[:, None] * n).ravel()
    counts = np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(float)
    counts.setflags(write=False)
    return counts


def _resampled_means(parts: Sequence[tuple[np.ndarray, np.ndarray]], n_resamples: int,
                     seed: int) -> np.ndarray:
    """Bootstrap statistic ``sum_k wmean_k`` over shared row draws.

    ``parts`` holds ``(w * x, w)`` arrays of equal length (signed through ``w * x``); every
    resample draws row indices once and uses them for every part, which is what pairs them.
    Small problems reuse one matrix of draw counts per ``(n, n_resamples, seed)``; big ones
    draw indices in chunks to bound memory.
    """
    n = parts[0][0].shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        if n * n_resamples <= _CHUNK_VALUES:
            counts = _draw_counts(n, n_resamples, seed)
            # einsum rather than a BLAS product: no thread pool to contend for on a busy machine
            return sum(np.einsum("rn,n->r", counts, wx) / np.einsum("rn,n->r", counts, w) for wx, w in parts)
        rng = np.random.default_rng(seed)
        out = np.empty(n_resamples)
        step = max(1, _CHUNK_VALUES // n)
        for start in range(0, n_resamples, step):
            stop = min(n_resamples, start + step)
            idx = rng.integers(0, n, size=(stop - start, n))
            out[start:stop] = sum(wx[idx].sum(axis=1) / w[idx].sum(axis=1) for wx, w in parts)
        return out


def _bounds(stat: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    stat = stat[np.isfinite(stat)]  # resamples whose weights are all zero
    if stat.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2
    lo, hi = np.quantile(stat, [tail, 1 - tail])
    return float(lo), float(hi)


def bootstrap_ci(values: Values, *, weights: Values | None = None, n_resamples: int = N_RESAMPLES,
                 level: float = LEVEL, seed: int = SEED) -> Interval:
    """Percentile bootstrap interval of a (weighted) mean over rows.

    Args:
        values: one value per row; ``None`` or NaN marks a missing value.
        weights: optional non-negative weight per row (e.g. target token counts, which
            turns per-row mean NLLs into the token-weighted mean).
        n_resamples: number of bootstrap resamples.
        level: coverage of the interval.
        seed: seed of the generator drawing the resamples.

    Returns:
        The mean, its interval, and the counts of used and missing values.
    """
    x = _as_array(values, "values")
    w = _weights(weights, x.shape[0], "weights")
    keep = np.isfinite(x) & np.isfinite(w)
    x, w = x[keep], w[keep]
    n, n_missing = int(x.shape[0]), int((~keep).sum())
    if n == 0 or w.sum() == 0:
        return Interval(math.nan, math.nan, math.nan, n, n_missing)
    mean = float((w * x).sum() / w.sum())
    lo, hi = _bounds(_resampled_means([(w * x, w)], n_resamples, seed), level)
    return Interval(mean, lo, hi, n, n_missing)


def verdict(ci_low: float, ci_high: float, *, higher_is_better: bool) -> str:
    """Verdict on a difference A - B from its interval: A ``better``, ``worse`` or neither."""
    if ci_low > 0 or ci_high < 0:
        return "better" if (ci_low > 0) == higher_is_better else "worse"
    return "indistinguishable"


def paired_bootstrap(a: Values, b: Values, *, higher_is_better: bool = True,
                     weights_a: Values | None = None, weights_b: Values | None = None,
                     n_resamples: int = N_RESAMPLES, level: float = LEVEL, seed: int = SEED) -> Comparison:
    """Paired bootstrap of mean(A) - mean(B) over the same rows.

    Args:
        a: values of method A, one per row, aligned with ``b``.
        b: values of method B for the same rows in the same order.
        higher_is_better: direction of the measure (``False`` for NLL).
        weights_a: optional per-row weights of A's mean (e.g. token counts).
        weights_b: optional per-row weights of B's mean.
        n_resamples: number of bootstrap resamples.
        level: coverage of the interval.
        seed: seed of the generator drawing the resamples.

    Returns:
        The mean difference, its interval, the counts, and the verdict for A.

    Raises:
        ValueError: ``a`` and ``b`` differ in length (they must be aligned by row).
    """
    xa, xb = _as_array(a, "a"), _as_array(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"a has {xa.shape[0]} rows and b has {xb.shape[0]}: a paired comparison "
                         "needs the same rows for both methods (align them by row id)")
    wa, wb = _weights(weights_a, xa.shape[0], "weights_a"), _weights(weights_b, xb.shape[0], "weights_b")
    keep = np.isfinite(xa) & np.isfinite(xb) & np.isfinite(wa) & np.isfinite(wb)
    n, n_missing = int(keep.sum()), int((~keep).sum())
    xa, xb, wa, wb = xa[keep], xb[keep], wa[keep], wb[keep]
    if n == 0 or wa.sum() == 0 or wb.sum() == 0:
        return Comparison(math.nan, math.nan, math.nan, n, n_missing, "indistinguishable")
    diff = float((wa * xa).sum() / wa.sum() - (wb * xb).sum() / wb.sum())
    stat = _resampled_means([(wa * xa, wa), (-wb * xb, wb)], n_resamples, seed)
    lo, hi = _bounds(stat, level)
    return Comparison(diff, lo, hi, n, n_missing, verdict(lo, hi, higher_is_better=higher_is_better))


def default_higher_is_better(measure: str, benchmark: str | None = None) -> bool:
    """Default direction rule: a measure is higher-is-better unless its name contains ``nll``."""
    return "nll" not in measure.lower()


def _value(record: Mapping, key: str | None) -> float:
    if key is None:
        return 1.0
    v = record.get(key)
    try:
        return math.nan if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return math.nan


def _group(records: Iterable[Mapping]) -> dict[tuple[str, str], dict[object, Mapping]]:
    """Records by (benchmark, method), then by row id; duplicate rows are refused."""
    groups: dict[tuple[str, str], dict[object, Mapping]] = {}
    for i, rec in enumerate(records):
        missing = [k for k in KEYS if k not in rec]
        if missing:
            raise ValueError(f"record {i} lacks {missing}: every per-row record needs {list(KEYS)}")
        rows = groups.setdefault((str(rec["benchmark"]), str(rec["method"])), {})
        if rec["row_id"] in rows:
            raise ValueError(f"row_id {rec['row_id']!r} appears twice for benchmark {rec['benchmark']!r}, "
                             f"method {rec['method']!r}: keep one record per test row")
        rows[rec["row_id"]] = rec
    return groups


def summary_columns(records: Iterable[Mapping], measures: Sequence[str], *,
                    weights: Mapping[str, str] | None = None, n_resamples: int = N_RESAMPLES,
                    level: float = LEVEL, seed: int = SEED) -> list[dict]:
    """Per (benchmark, method): ``<m>``, ``<m>_ci_low``, ``<m>_ci_high``, ``<m>_n`` for each measure.

    Args:
        records: per-row records (``benchmark``, ``method``, ``row_id`` and measure values).
        measures: record keys to summarise.
        weights: optional measure -> record key of its weight (e.g. ``{"test_nll": "n_tokens"}``).
        n_resamples: number of bootstrap resamples.
        level: coverage of the intervals.
        seed: seed of every interval's generator.

    Returns:
        One dict per (benchmark, method), in order of first appearance.
    """
    weights = dict(weights or {})
    out = []
    for (bench, method), rows in _group(records).items():
        entry: dict = {"benchmark": bench, "method": method}
        recs = list(rows.values())
        for m in measures:
            ci = bootstrap_ci([_value(r, m) for r in recs],
                              weights=[_value(r, weights.get(m)) for r in recs],
                              n_resamples=n_resamples, level=level, seed=seed)
            entry.update({m: ci.mean, f"{m}_ci_low": ci.ci_low, f"{m}_ci_high": ci.ci_high, f"{m}_n": ci.n})
        out.append(entry)
    return out


def paired_rows(records: Iterable[Mapping], measures: Sequence[str], *, reference: str = "clas",
                higher_is_better: Callable[[str, str], bool] | Mapping = default_higher_is_better,
                weights: Mapping[str, str] | None = None, n_resamples: int = N_RESAMPLES,
                level: float = LEVEL, seed: int = SEED) -> list[dict]:
    """Paired comparisons of ``reference`` against every other method, per benchmark and measure.

    Args:
        records: per-row records (``benchmark``, ``method``, ``row_id`` and measure values).
        measures: record keys to compare.
        reference: the method compared with all others (A in A - B).
        higher_is_better: direction of each measure: a function ``(measure, benchmark) ->
            bool``, or a mapping keyed by ``(benchmark, measure)`` or by measure (the pair
            wins; a measure in neither follows :func:`default_higher_is_better`, under which
            only measures whose name contains ``nll`` are lower-is-better). A judge rubric
            can point either way per benchmark, hence the pair keys.
        weights: optional measure -> record key of its weight (e.g. ``{"test_nll": "n_tokens"}``).
        n_resamples: number of bootstrap resamples.
        level: coverage of the intervals.
        seed: seed of every comparison's generator.

    Returns:
        Dicts with ``benchmark``, ``method``, ``measure``, ``mean_diff`` (reference minus
        method), ``ci_low``, ``ci_high``, ``verdict`` (for the reference), ``n``, ``n_missing``.
        Benchmarks without the reference method give no rows.

    Raises:
        ValueError: a method's test rows differ from the reference's on a benchmark, or a
            record is malformed or duplicated.
    """
    weights = dict(weights or {})
    if isinstance(higher_is_better, Mapping):
        table = higher_is_better

        def direction(m: str, bench: str) -> bool:
            return bool(table.get((bench, m), table.get(m, default_higher_is_better(m, bench))))
    else:
        direction = higher_is_better
    groups = _group(records)
    out = []
    for (bench, method), rows in groups.items():
        ref = groups.get((bench, reference))
        if method == reference or ref is None:
            continue
        if set(rows) != set(ref):
            only_ref = sorted(map(str, set(ref) - set(rows)))
            only_other = sorted(map(str, set(rows) - set(ref)))
            raise ValueError(
                f"benchmark {bench!r}: methods {reference!r} and {method!r} cover different test rows "
                f"(only {reference}: {only_ref[:5]}{'...' if len(only_ref) > 5 else ''}; only {method}: "
                f"{only_other[:5]}{'...' if len(only_other) > 5 else ''}); a paired comparison needs the "
                "same rows: record missing values as None instead of dropping rows")
        ids = list(ref)
        for m in measures:
            wkey = weights.get(m)
            c = paired_bootstrap([_value(ref[i], m) for i in ids], [_value(rows[i], m) for i in ids],
                                 higher_is_better=direction(m, bench),
                                 weights_a=[_value(ref[i], wkey) for i in ids],
                                 weights_b=[_value(rows[i], wkey) for i in ids],
                                 n_resamples=n_resamples, level=level, seed=seed)
            out.append({"benchmark": bench, "method": method, "measure": m, "mean_diff": c.mean_diff,
                        "ci_low": c.ci_low, "ci_high": c.ci_high, "verdict": c.verdict, "n": c.n,
                        "n_missing": c.n_missing})
    return out
