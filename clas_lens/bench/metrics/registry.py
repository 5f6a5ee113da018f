"""The benchmark registry: benchmark name -> metric function, and the lookups built on it."""

from __future__ import annotations

from collections.abc import Callable

from clas_lens.bench.metrics.alpaca import alpaca_metrics
from clas_lens.bench.metrics.gsm8k import gsm8k_metrics
from clas_lens.bench.metrics.jailbreak import jailbreak_metrics
from clas_lens.bench.metrics.leetcode import leetcode_metrics
from clas_lens.bench.metrics.mmlu import mmlu_metrics
from clas_lens.bench.metrics.repetition import repetition_metrics
from clas_lens.bench.metrics.text import clean_generation
from clas_lens.bench.metrics.toxicchat import toxicchat_metrics
from clas_lens.data import benchmark_name

MetricFn = Callable[[str, dict], dict[str, float]]


BENCHMARK_METRICS: dict[str, MetricFn] = {
    "GSM8K": gsm8k_metrics,
    "Alpaca": alpaca_metrics,
    "JailbreakBench": jailbreak_metrics,
    "LeetCode": leetcode_metrics,
    "MMLU": mmlu_metrics,
    "Repetition": repetition_metrics,
    "ToxicChat": toxicchat_metrics,
}


def metric_function(benchmark: str) -> MetricFn | None:
    """The metric function of a benchmark.

    Args:
        benchmark: As in ``behaviour_metrics``: a name, file name or path (case-insensitive).

    Returns:
        The function, or None for a benchmark without specific metrics.
    """
    name = benchmark_name(benchmark)
    for key, fn in BENCHMARK_METRICS.items():
        if key.lower() == name.lower():
            return fn
    return None


def behaviour_metrics(benchmark: str, generation: str, row: dict) -> dict[str, float]:
    """Benchmark-specific behaviour metrics of one generation.

    End-of-turn markers such as ``<|eot_id|>`` are stripped first.

    Args:
        benchmark: Benchmark name ("GSM8K"), also accepted as a CSV file name
            or path (``GSM8K_SteerDataset.csv``); case-insensitive.
        generation: The model output.
        row: The CSV row as a dict of strings.

    Returns:
        Metric name to value; an empty dict for an unknown benchmark.
    """
    fn = metric_function(benchmark)
    return fn(clean_generation(generation), row) if fn else {}


def metric_names(benchmark: str) -> list[str]:
    """Names of the behaviour metrics of a benchmark (empty when unknown).

    Args:
        benchmark: As in ``behaviour_metrics``.

    Returns:
        The metric names, in the order ``behaviour_metrics`` returns them.
    """
    return list(behaviour_metrics(benchmark, "", {}))


__all__ = ["BENCHMARK_METRICS", "MetricFn", "behaviour_metrics", "benchmark_name", "metric_function",
           "metric_names"]
