"""Bootstrap intervals and paired comparisons over test rows (clas_lens.bench.stats)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from clas_lens.bench import stats
from clas_lens.bench.stats import bootstrap_ci, paired_bootstrap, paired_rows, summary_columns


def test_doctests_run():
    result = doctest.testmod(stats)
    assert result.attempted >= 3 and result.failed == 0


def test_interval_covers_the_true_mean_and_narrows_with_more_rows():
    """Fails if the interval is centred wrongly, or its width ignores the number of rows."""
    rng = np.random.default_rng(123)
    draws = rng.normal(loc=2.0, scale=1.0, size=800)
    small, big = bootstrap_ci(draws[:50]), bootstrap_ci(draws)
    assert small.ci_low < 2.0 < small.ci_high and big.ci_low < 2.0 < big.ci_high
    # standard error ~ 1/sqrt(n): 16x the rows -> about a quarter of the width
    ratio = (big.ci_high - big.ci_low) / (small.ci_high - small.ci_low)
    assert 0.15 < ratio < 0.4
    # a 95% interval of a normal mean is about 2 * 1.96 / sqrt(n) wide
    assert (small.ci_high - small.ci_low) == pytest.approx(2 * 1.96 / math.sqrt(50), rel=0.25)


def test_coverage_over_repeated_samples_is_near_95_percent():
    """Fails if the percentile interval is computed at the wrong quantiles (e.g. 25%/75%)."""
    rng = np.random.default_rng(7)
    hits = 0
    for rep in range(200):
        x = rng.exponential(scale=1.0, size=60)  # skewed, true mean 1
        ci = bootstrap_ci(x, n_resamples=1000, seed=rep)
        hits += ci.ci_low <= 1.0 <= ci.ci_high
    assert 0.86 <= hits / 200 <= 0.99


def test_missing_values_are_left_out_and_counted():
    values = [1.0, None, 3.0, float("nan"), 5.0]
    ci = bootstrap_ci(values)
    assert (ci.n, ci.n_missing) == (3, 2)
    assert ci.mean == pytest.approx(3.0)
    assert 1.0 <= ci.ci_low < 3.0 < ci.ci_high <= 5.0
    empty = bootstrap_ci([None, float("nan")])
    assert (empty.n, empty.n_missing) == (0, 2) and math.isnan(empty.mean)


def test_fixed_seed_reproduces_and_another_seed_differs():
    x = np.random.default_rng(0).normal(size=40)
    assert bootstrap_ci(x) == bootstrap_ci(x)
    assert bootstrap_ci(x, seed=1).ci_low != bootstrap_ci(x, seed=0).ci_low


def test_weighted_mean_is_token_weighted():
    """Per-row mean NLLs with token counts as weights give sum(nll_sum) / sum(tokens)."""
    nll = [1.0, 3.0]
    tokens = [3, 1]
    ci = bootstrap_ci(nll, weights=tokens)
    assert ci.mean == pytest.approx((1.0 * 3 + 3.0 * 1) / 4)
    with pytest.raises(ValueError, match="weights has 1 entries for 2 values"):
        bootstrap_ci(nll, weights=[1])


@pytest.mark.parametrize("higher_is_better, expected", [(True, "better"), (False, "worse")])
def test_planted_difference_gets_the_right_verdict(higher_is_better, expected):
    """A is B plus 0.5 on every row: better when higher is better, worse when lower is."""
    rng = np.random.default_rng(3)
    b = rng.normal(size=50)
    a = b + 0.5 + rng.normal(scale=0.2, size=50)
    c = paired_bootstrap(a, b, higher_is_better=higher_is_better)
    assert c.verdict == expected
    assert c.mean_diff == pytest.approx(float(np.mean(a - b)))
    assert 0 < c.ci_low < c.mean_diff < c.ci_high
    swapped = paired_bootstrap(b, a, higher_is_better=higher_is_better)
    assert swapped.verdict == ("worse" if expected == "better" else "better")
    assert swapped.ci_high < 0


def test_identical_inputs_are_indistinguishable():
    x = np.random.default_rng(5).normal(size=50)
    c = paired_bootstrap(x, x.copy())
    assert c.verdict == "indistinguishable"
    assert (c.mean_diff, c.ci_low, c.ci_high) == (0.0, 0.0, 0.0)
    noisy = paired_bootstrap(x, x + np.random.default_rng(6).normal(scale=0.3, size=50))
    assert noisy.ci_low < 0 < noisy.ci_high and noisy.verdict == "indistinguishable"


def test_pairing_matters():
    """Rows differ a lot from each other, methods by a small consistent shift: the unpaired
    intervals overlap (no difference visible), the paired one excludes zero."""
    rng = np.random.default_rng(11)
    row_effect = rng.normal(scale=3.0, size=50)
    a = row_effect + 0.3 + rng.normal(scale=0.05, size=50)
    b = row_effect
    ia, ib = bootstrap_ci(a), bootstrap_ci(b)
    assert ia.ci_low < ib.mean < ia.ci_high and ib.ci_low < ia.mean < ib.ci_high
    assert paired_bootstrap(a, b).verdict == "better"
    # shuffling B's rows breaks the pairing: the same values no longer give a verdict
    assert paired_bootstrap(a, rng.permutation(b)).verdict == "indistinguishable"


def test_paired_missing_rows_counted_and_lengths_checked():
    c = paired_bootstrap([1.0, 2.0, None, 4.0], [0.0, float("nan"), 1.0, 3.0])
    assert (c.n, c.n_missing) == (2, 2)
    assert c.mean_diff == pytest.approx(1.0)
    with pytest.raises(ValueError, match="a has 3 rows and b has 2"):
        paired_bootstrap([1.0, 2.0, 3.0], [1.0, 2.0])


def _records(rng, methods, shift, n=30, bench="Toy"):
    base = rng.normal(size=n)
    recs = []
    for m in methods:
        for i in range(n):
            recs.append({"benchmark": bench, "method": m, "row_id": f"r{i}",
                         "test_nll": base[i] + shift.get(m, 0.0) + rng.normal(scale=0.05),
                         "n_tokens": 1 + i % 4, "m_score": float(i % 2) + shift.get(m, 0.0)})
    return recs


def test_summary_columns_match_bootstrap_ci():
    rng = np.random.default_rng(0)
    recs = _records(rng, ["clas", "lora"], {"lora": 1.0})
    recs[0]["m_score"] = None
    table = summary_columns(recs, ["test_nll", "m_score"], weights={"test_nll": "n_tokens"})
    assert [(r["benchmark"], r["method"]) for r in table] == [("Toy", "clas"), ("Toy", "lora")]
    clas = [r for r in recs if r["method"] == "clas"]
    want = bootstrap_ci([r["test_nll"] for r in clas], weights=[r["n_tokens"] for r in clas])
    got = table[0]
    assert (got["test_nll"], got["test_nll_ci_low"], got["test_nll_ci_high"], got["test_nll_n"]) == (
        want.mean, want.ci_low, want.ci_high, 30)
    assert got["m_score_n"] == 29
    assert got["m_score"] == pytest.approx(np.mean([r["m_score"] for r in clas[1:]]))


def test_paired_rows_compare_clas_with_every_other_method_in_the_right_direction():
    rng = np.random.default_rng(1)
    # lora: NLL 0.5 higher (clas better), base_prompt: NLL 0.5 lower (clas worse), twin: same values
    recs = _records(rng, ["clas", "lora", "base_prompt"], {"lora": 0.5, "base_prompt": -0.5})
    recs += [dict(r, method="twin") for r in recs if r["method"] == "clas"]
    recs += _records(rng, ["lora"], {}, bench="NoClas")  # no reference: no rows
    rows = paired_rows(list(reversed(recs)), ["test_nll"], weights={"test_nll": "n_tokens"})
    verdicts = {(r["benchmark"], r["method"]): r["verdict"] for r in rows}
    assert verdicts == {("Toy", "lora"): "better", ("Toy", "base_prompt"): "worse",
                        ("Toy", "twin"): "indistinguishable"}
    lora = next(r for r in rows if r["method"] == "lora")
    assert lora["mean_diff"] < 0 and lora["n"] == 30 and lora["measure"] == "test_nll"
    # the same shift on a higher-is-better measure flips the verdict
    flipped = paired_rows(recs, ["test_nll"], higher_is_better={"test_nll": True})
    assert {r["method"]: r["verdict"] for r in flipped}["lora"] == "worse"
    # a (benchmark, measure) key overrides the measure's direction on that benchmark only
    other = [dict(r, benchmark="Other") for r in recs if r["benchmark"] == "Toy"]
    per_bench = paired_rows(recs + other, ["test_nll"],
                            higher_is_better={("Toy", "test_nll"): True, "test_nll": False})
    assert {(r["benchmark"], r["method"]): r["verdict"] for r in per_bench if r["method"] == "lora"} == {
        ("Toy", "lora"): "worse", ("Other", "lora"): "better"}
    by_function = paired_rows(recs, ["test_nll"], higher_is_better=lambda m, b: b != "Toy")
    assert {r["method"]: r["verdict"] for r in by_function}["lora"] == "better"


def test_unequal_row_sets_raise_a_clear_error():
    rng = np.random.default_rng(2)
    recs = _records(rng, ["clas", "reft"], {})
    recs = [r for r in recs if not (r["method"] == "reft" and r["row_id"] == "r3")]
    expected = r"'clas' and 'reft' cover different test rows \(only clas: \['r3'\]"
    with pytest.raises(ValueError, match=expected):
        paired_rows(recs, ["test_nll"])


def test_duplicate_rows_and_malformed_records_raise():
    rec = {"benchmark": "Toy", "method": "clas", "row_id": 1, "test_nll": 1.0}
    with pytest.raises(ValueError, match="row_id 1 appears twice"):
        summary_columns([rec, dict(rec)], ["test_nll"])
    with pytest.raises(ValueError, match=r"record 0 lacks \['row_id'\]"):
        paired_rows([{"benchmark": "Toy", "method": "clas"}], ["test_nll"])
