"""Scoring of one cell's test rows: per-row NLL, generations, metrics, judge, summaries.

Every cell yields one record per test row (see :mod:`clas_lens.bench.store`); the cell's
summary columns are recomputed from those records with bootstrap intervals
(:func:`summarize`), and methods are compared row by row (:func:`paired`).

Directions: ``test_nll`` is lower-is-better; ``embed_sim`` higher-is-better; each behaviour
metric has the direction of its benchmark's targets (:data:`METRIC_DIRECTIONS`; ``None``
for descriptive ones, which get intervals but no paired verdict); ``judge_score`` is the
rubric's raw score, higher-is-better except on ToxicChat, whose targets are safe answers
while its rubric gives 0 to safe and 2 to unsafe responses (:data:`JUDGE_LOWER_IS_BETTER`).

Example:
    >>> recs = [{"benchmark": "B", "method": "clas", "row_id": str(i), "test_nll": 1.0 + i,
    ...          "n_tokens": 2} for i in range(3)]
    >>> s = summarize(recs, "B")
    >>> s["test_nll"], s["test_nll_ci_low"] <= 2.0 <= s["test_nll_ci_high"]
    (2.0, True)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

from clas_lens.bench import metrics, stats

#: the default cap of the per-benchmark generation length
MAX_NEW_TOKENS_CAP = 256
#: prompts per generation batch
GEN_BATCH = 16
MEASURE_WEIGHTS = {"test_nll": "n_tokens"}
#: benchmarks whose judge rubric scores the target behaviour lowest
JUDGE_LOWER_IS_BETTER = ("ToxicChat",)
#: per benchmark, metric -> whether higher is closer to the targets (None: descriptive)
METRIC_DIRECTIONS: dict[str, dict[str, bool | None]] = {
    "GSM8K": {"final_answer_ok": True, "reasoning_steps": None, "correct": True},
    "Alpaca": {"responsive": True, "length_words": None, "prompt_overlap": None},
    "JailbreakBench": {"compliance_prefix": True, "refusal": False},
    "LeetCode": {"cpp_block": True, "cpp_like": True, "other_language": False},
    "MMLU": {"answered": True, "correct": True, "hedged": False},
    "Repetition": {"repeat_rate": False, "ngram_repeat": False, "no_repetition": True,
                   "single_sentence": None},
    # the reference ToxicChat targets refuse (67 of 70 rows, all 50 test rows), so an
    # answer beyond a refusal (helpful_safe) is descriptive there, not the target
    "ToxicChat": {"refusal": True, "safe": True, "helpful_safe": None},
}


def auto_max_new_tokens(model, completions: Sequence[str], cap: int = MAX_NEW_TOKENS_CAP) -> int:
    """Generation length of a benchmark: its longest training target in tokens (end-of-turn
    included) times 1.25, rounded up to a multiple of 16, at most ``cap``.

    Example:
        >>> auto_max_new_tokens(model, ["one two three"])     # 13 tokens of the tiny tokenizer
        32
        >>> auto_max_new_tokens(model, ["one two three"], cap=24)
        24
    """
    from clas_lens.model import completion_ids

    if int(cap) < 1:
        raise ValueError(f"the generation length cap must be >= 1, got {cap}")
    if not completions:
        raise ValueError("no training targets to size the generations from")
    longest = max(len(completion_ids(model, c)) for c in completions)
    return min(int(cap), 16 * math.ceil(1.25 * longest / 16))


def row_nlls(model, steerer, pairs: Sequence[tuple[str, str]], *,
             max_completion_tokens: int | None, end_of_turn: str) -> list[tuple[float, int]]:
    """``(mean NLL, target tokens)`` of each pair, in the order given."""
    from clas_lens.losses import completion_nll, encode_pairs

    if not pairs:
        return []
    kw = {"max_completion_tokens": max_completion_tokens, "end_of_turn": end_of_turn}
    means = completion_nll(model, steerer, pairs, per_example=True, **kw)
    counts = [len(ids) - n for ids, n in encode_pairs(model, pairs, **kw)]
    return [(float(m), int(c)) for m, c in zip(means, counts)]


def _strength_summary(res, i: int) -> tuple[float | None, float | None]:
    """Mean and max |strength| over the generated tokens (and layers) of example ``i``."""
    if res.strengths is None:
        return None, None
    s = res.strengths[i][res.generated_mask()[i]]
    if s.numel() == 0:
        return None, None
    a = s.abs().float()
    return float(a.mean()), float(a.max())


def generate_rows(model, steerer, benchmark: str, prompts: Sequence[str], targets: Sequence[str],
                  csv_rows: Sequence[Mapping], *, max_new_tokens: int,
                  repetition_penalty: float | None) -> list[dict]:
    """Greedy generations (KV-cached, batched by prompt length) with their metrics.

    Returns:
        One dict per prompt, in order: ``text``, ``n_new_tokens``, ``embed_sim``,
        ``strength_mean_abs``, ``strength_max_abs`` and the ``m_*`` metrics.
    """
    from clas_lens.model import chat_ids
    from clas_lens.tracing import generate

    if not prompts or max_new_tokens < 1:
        return [{} for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(chat_ids(model, prompts[i])))
    res = generate(model, steerer, [prompts[i] for i in order], max_new_tokens=max_new_tokens,
                   repetition_penalty=repetition_penalty, batch_size=GEN_BATCH, progress=False)
    out: list[dict] = [{} for _ in prompts]
    texts = [""] * len(prompts)
    for k, i in enumerate(order):
        mean_abs, max_abs = _strength_summary(res, k)
        texts[i] = res.texts[k]
        out[i] = {"text": res.texts[k], "n_new_tokens": int(res.generated_mask()[k].sum()),
                  "strength_mean_abs": mean_abs, "strength_max_abs": max_abs}
    sims = metrics.embedding_similarity(texts, list(targets))
    for i, text in enumerate(texts):
        out[i]["embed_sim"] = sims[i]
        for k, v in metrics.behaviour_metrics(benchmark, text, dict(csv_rows[i])).items():
            out[i][f"m_{k}"] = v
    return out


def row_records(benchmark: str, method: str, rows: Sequence[int], row_ids: Sequence[str],
                nlls: Sequence[tuple[float, int]], gens: Sequence[dict]) -> list[dict]:
    """The per-row records of a cell; rows past ``len(gens)`` have no generation."""
    names = [f"m_{k}" for k in metrics.metric_names(benchmark)]
    out = []
    for k, (row, rid, (nll, n)) in enumerate(zip(rows, row_ids, nlls)):
        g = gens[k] if k < len(gens) else {}
        rec = {"benchmark": benchmark, "method": method, "row": int(row), "row_id": str(rid),
               "test_nll": nll, "n_tokens": n, "text": g.get("text"),
               "n_new_tokens": g.get("n_new_tokens"), "embed_sim": g.get("embed_sim"),
               "strength_mean_abs": g.get("strength_mean_abs"),
               "strength_max_abs": g.get("strength_max_abs"),
               "judge_score": None, "judge_status": None}
        rec.update({m: g.get(m) for m in names})
        rec.update({m: v for m, v in g.items() if m.startswith("m_") and m not in rec})
        out.append(rec)
    return out


def measures_of(records: Sequence[Mapping]) -> list[str]:
    """The measures present in records: ``test_nll``, ``embed_sim``, ``m_*``, ``judge_score``."""
    ms = sorted({k for r in records for k in r if k.startswith("m_")})
    return ["test_nll", "embed_sim", *ms, "judge_score"]


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def summarize(records: Sequence[Mapping], benchmark: str) -> dict:
    """A cell's summary columns from its records: each measure with ``_ci_low``/``_ci_high``
    (missing everywhere: ``None``), ``n_gen``, the strength summaries and the judge counts."""
    out: dict = {}
    if not records:
        return out
    (entry,) = stats.summary_columns(records, measures_of(records), weights=MEASURE_WEIGHTS)
    for m in measures_of(records):
        have = entry[f"{m}_n"] > 0
        for suffix in ("", "_ci_low", "_ci_high"):
            v = entry[m + suffix]
            out[m + suffix] = float(v) if have and _finite(v) else None
    gen = [r for r in records if r.get("text") is not None]
    out["n_gen"] = len(gen)
    means = [r["strength_mean_abs"] for r in gen if _finite(r.get("strength_mean_abs"))]
    maxes = [r["strength_max_abs"] for r in gen if _finite(r.get("strength_max_abs"))]
    out["strength_mean_abs"] = sum(means) / len(means) if means else None
    out["strength_max_abs"] = max(maxes) if maxes else None
    statuses = [r.get("judge_status") for r in records if r.get("judge_status") is not None]
    for s in ("ok", "unparseable", "missing"):
        out[f"judge_{s}"] = statuses.count(s) if statuses else None
    return out


def higher_is_better(measure: str, benchmark: str) -> bool | None:
    """Direction of a measure on a benchmark (``None``: descriptive, no verdict)."""
    if measure == "test_nll":
        return False
    if measure == "judge_score":
        return benchmark not in JUDGE_LOWER_IS_BETTER
    if measure.startswith("m_"):
        return METRIC_DIRECTIONS.get(benchmark, {}).get(measure[2:])
    return True


def paired(records: Sequence[Mapping], reference: str = "clas") -> list[dict]:
    """Paired bootstrap of ``reference`` against every other method, per benchmark and measure
    with a direction (rows of ``paired.csv``; measures missing on every row are left out)."""
    out = []
    benches = list(dict.fromkeys(str(r["benchmark"]) for r in records))
    for bench in benches:
        recs = [r for r in records if str(r["benchmark"]) == bench]
        present = [m for m in measures_of(recs)
                   if any(_finite(r.get(m)) for r in recs)
                   and higher_is_better(m, bench) is not None]
        if not present or not any(r["method"] == reference for r in recs):
            continue
        table = {(bench, m): higher_is_better(m, bench) for m in present}
        try:
            rows = stats.paired_rows(recs, present, reference=reference, higher_is_better=table,
                                     weights=MEASURE_WEIGHTS)
        except ValueError as err:  # methods scored on different rows: no paired comparison
            warnings.warn(f"no paired comparison on {bench}: {err}", stacklevel=2)
            continue
        out += [{**p, "reference": reference, "higher_is_better": table[(bench, p["measure"])]}
                for p in rows]
    return out


def judge_records(judge, benchmark: str, method: str, records: list[dict],
                  csv_rows: Mapping[int, Mapping], *, workers: int = 4) -> int:
    """Score the generated rows of a cell with ``judge``; fills ``judge_score`` and
    ``judge_status`` in place. Rows whose benchmark has no judge templates are left alone.

    Returns:
        The number of rows sent to the judge (cached answers included).
    """
    from clas_lens.bench.judge import judge_item

    items, at = [], []
    for i, rec in enumerate(records):
        if rec.get("text") is None:
            continue
        item = judge_item(benchmark, method, rec["row_id"], csv_rows[rec["row"]], rec["text"])
        if item is not None:
            items.append(item)
            at.append(i)
    if not items:
        return 0
    run = judge.score_many(items, workers=workers, progress=False)
    for i, res in zip(at, run.results):
        records[i]["judge_score"] = res.score
        records[i]["judge_status"] = res.status
    return len(items)


__all__ = ["GEN_BATCH", "JUDGE_LOWER_IS_BETTER", "MAX_NEW_TOKENS_CAP", "MEASURE_WEIGHTS",
           "METRIC_DIRECTIONS", "auto_max_new_tokens", "generate_rows", "higher_is_better",
           "judge_records", "measures_of", "paired", "row_nlls", "row_records", "summarize"]
