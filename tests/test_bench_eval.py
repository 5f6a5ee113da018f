"""The harness's evaluation on the tiny model: per-row records, intervals, paired
verdicts, shared per-benchmark work and the judge through a real local server."""

import csv
import json
import math

import pytest
from chat_server import completion, user_text
from test_harness import write_reference_csv

import clas_lens as cl
from clas_lens import losses
from clas_lens.bench import cell, harness, scoring, shared, stats
from clas_lens.bench.judge import Judge
from clas_lens.model import completion_ids
from clas_lens.training import resolve_protocol


@pytest.fixture(scope="module")
def quick_run(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evalrun")
    known = write_reference_csv(tmp / "JailbreakBench_SteerDataset.csv")
    out = tmp / "r"
    rows = harness.run_benchmarks([known], out=out, quick=True, model=tiny, progress=False,
                                  figure="")
    return known, out, rows


def _records(out):
    return [json.loads(l) for l in (out / "records.jsonl").read_text().splitlines()]


def test_summary_columns_are_recomputed_from_the_records(quick_run):
    _, out, rows = quick_run
    recs = _records(out)
    for row in rows:
        mine = [r for r in recs if r["method"] == row["method"]]
        assert len(mine) == row["n_test"] == 4
        weighted = sum(r["test_nll"] * r["n_tokens"] for r in mine) / sum(r["n_tokens"] for r in mine)
        assert row["test_nll"] == pytest.approx(weighted, rel=1e-12)
        ci = stats.bootstrap_ci([r["test_nll"] for r in mine], weights=[r["n_tokens"] for r in mine])
        assert (row["test_nll_ci_low"], row["test_nll_ci_high"]) == pytest.approx(
            (ci.ci_low, ci.ci_high), rel=1e-12)
        assert row["test_nll_ci_low"] < row["test_nll"] < row["test_nll_ci_high"]
        sims = [r["embed_sim"] for r in mine if r["embed_sim"] is not None]
        assert len(sims) == row["n_gen"] == 2
        assert row["embed_sim"] == pytest.approx(sum(sims) / 2, rel=1e-12)
        assert row["m_refusal_ci_low"] <= row["m_refusal"] <= row["m_refusal_ci_high"]


def test_paired_csv_compares_clas_with_every_method_on_the_same_rows(quick_run):
    _, out, _ = quick_run
    with open(out / "paired.csv", newline="") as fh:
        paired = list(csv.DictReader(fh))
    nll = {p["method"]: p for p in paired if p["measure"] == "test_nll"}
    assert sorted(nll) == sorted(m for m in harness.STEERING_METHODS if m != "clas")
    recs = _records(out)
    for method, p in nll.items():
        a = {r["row_id"]: r for r in recs if r["method"] == "clas"}
        b = {r["row_id"]: r for r in recs if r["method"] == method}
        want = stats.paired_bootstrap([a[i]["test_nll"] for i in a], [b[i]["test_nll"] for i in a],
                                      higher_is_better=False,
                                      weights_a=[a[i]["n_tokens"] for i in a],
                                      weights_b=[b[i]["n_tokens"] for i in a])
        assert float(p["mean_diff"]) == pytest.approx(want.mean_diff, rel=1e-9, abs=1e-12)
        assert p["verdict"] == want.verdict and p["reference"] == "clas"
        assert p["higher_is_better"] == "False"
    assert {p["measure"] for p in paired} >= {"test_nll", "embed_sim", "m_refusal",
                                              "m_compliance_prefix"}
    md = (out / "benchmarks.md").read_text()
    assert "Paired comparisons" in md


def test_planted_differences_get_verdicts_and_identical_rows_do_not():
    def recs(method, values, bench="ToxicChat"):
        return [{"benchmark": bench, "method": method, "row_id": str(i), "test_nll": v,
                 "n_tokens": 3, "judge_score": 2.0 - v} for i, v in enumerate(values)]

    base = [1.0 + 0.01 * (i % 7) for i in range(40)]
    rows = scoring.paired(recs("clas", [v - 0.5 for v in base]) + recs("lora", base)
                          + recs("reft", base[:]) + recs("las", [v - 0.5 for v in base]))
    got = {(r["method"], r["measure"]): r["verdict"] for r in rows}
    assert got[("lora", "test_nll")] == "better"       # lower NLL for clas
    assert got[("las", "test_nll")] == "indistinguishable"   # identical rows
    # ToxicChat's judge scores the safe target 0: clas scoring higher is worse
    assert got[("lora", "judge_score")] == "worse"
    assert scoring.higher_is_better("judge_score", "Alpaca") is True
    assert scoring.higher_is_better("m_length_words", "Alpaca") is None


def test_identity_steerer_reuses_the_unsteered_results(tiny, tmp_path, monkeypatch):
    known = write_reference_csv(tmp_path / "JailbreakBench_SteerDataset.csv")
    calls = []
    real = scoring.row_nlls
    monkeypatch.setattr(scoring, "row_nlls", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    rows = harness.run_benchmarks([known], out=tmp_path / "r", quick=True, model=tiny,
                                  progress=False, figure="", methods="base_prompt,clas", epochs=0)
    assert calls == [None]  # scored once, unsteered
    by = {r["method"]: r for r in rows}
    assert by["clas"]["reused_unsteered"] == 1 and by["clas"]["best_epoch"] == 0
    assert by["clas"]["test_nll"] == by["base_prompt"]["test_nll"]
    recs = _records(tmp_path / "r")
    strip = [{k: v for k, v in r.items() if k not in ("method", "strength_mean_abs",
                                                      "strength_max_abs")} for r in recs]
    assert strip[:4] == strip[4:]
    assert [r["strength_max_abs"] for r in recs if r["method"] == "clas"] == [0.0, 0.0, None, None]


def test_unsteered_valid_loss_is_computed_once_per_benchmark(tiny, tmp_path, monkeypatch):
    """LAS's loss before its search and every trained method's step-0 loss are the unsteered
    valid loss, evaluated once and then read from the benchmark's cache."""
    known = write_reference_csv(tmp_path / "JailbreakBench_SteerDataset.csv")
    calls, real = [], losses.completion_nll

    def counted(*a, **k):
        if not k.get("per_example"):  # test rows are scored per example
            calls.append(a[1])
        return real(*a, **k)

    monkeypatch.setattr(losses, "completion_nll", counted)
    kw = dict(out=tmp_path / "r", quick=True, model=tiny, progress=False, figure="")
    first = harness.run_benchmarks([known], methods="las,clas,reft", **kw)
    assert calls == [None]
    second = harness.run_benchmarks([known], methods="lora", **kw)  # a later run: from the cache
    assert calls == [None]
    before = {r["method"]: r["valid_loss_before"] for r in first + second}
    assert len(before) == 4 and len(set(before.values())) == 1
    steer = cl.SteerSet.from_reference_csv(known)
    rule = resolve_protocol(None)["end_of_turn"]
    valid = cell.target_pairs(steer.valid.prompts, steer.valid, rule)
    want = real(tiny, None, valid, end_of_turn=rule,
                max_completion_tokens=harness.QUICK["max_completion_tokens"])
    assert before["lora"] == pytest.approx(want, rel=1e-6)  # summed in another order


def test_directions_are_fitted_once_and_reused_from_the_cache(tiny, tmp_path, monkeypatch):
    known = write_reference_csv(tmp_path / "JailbreakBench_SteerDataset.csv")
    fits = []
    real = cl.fit_directions
    monkeypatch.setattr(cl, "fit_directions", lambda *a, **k: fits.append(1) or real(*a, **k))
    kw = dict(out=tmp_path / "r", quick=True, model=tiny, progress=False, figure="")
    first = harness.run_benchmarks([known], methods="las,clas", **kw)
    assert len(fits) == 1
    cached = list((tmp_path / "r" / "cache" / "JailbreakBench").glob("directions-*"))
    assert len(cached) == 1
    second = harness.run_benchmarks([known], methods="las_layerwise", **kw)  # a new cell
    assert len(fits) == 1  # loaded from the cache, not fitted again
    assert second[0]["direction_acc_mean"] == first[0]["direction_acc_mean"]
    assert second[0]["direction_seconds"] == 0.0


def test_generation_length_follows_the_training_targets(tiny):
    targets = ["short", "a much longer target with many more words in it " * 3]
    longest = max(len(completion_ids(tiny, t)) for t in targets)
    want = 16 * math.ceil(1.25 * longest / 16)
    assert scoring.auto_max_new_tokens(tiny, targets) == want
    assert scoring.auto_max_new_tokens(tiny, targets, cap=16) == 16
    with pytest.raises(ValueError, match="cap must be >= 1"):
        scoring.auto_max_new_tokens(tiny, targets, cap=0)


def test_settings_resolve_every_row_and_the_benchmark_length(tiny, tmp_path):
    steer = cl.SteerSet.from_reference_csv(write_reference_csv(tmp_path / "Toy.csv"))
    s = harness.benchmark_settings(tiny, steer, harness.resolve_settings(False))
    assert s["n_test"] == s["gen_rows"] == 4
    assert s["max_new_tokens"] == scoring.auto_max_new_tokens(tiny, list(steer.train.completions))
    assert "max_new_tokens_cap" not in s
    with pytest.raises(ValueError, match="max_new_tokens_cap must be positive"):
        harness.resolve_settings(False, max_new_tokens_cap=0)


def test_settings_hash_tells_settings_apart():
    assert shared.settings_hash({"a": 1, "b": 2}) == shared.settings_hash({"b": 2, "a": 1})
    assert shared.settings_hash({"a": 1}) != shared.settings_hash({"a": 2})


def _judge_run(tiny, tmp_path, server, **judge_kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    known = write_reference_csv(tmp_path / "JailbreakBench_SteerDataset.csv")
    judge = Judge(server.url, "judge-x", cache_path=tmp_path / "r" / "judge_cache.jsonl",
                  **{"timeout": 0.3, "retries": 1, "backoff": 0.01, "max_backoff": 0.02, **judge_kw})
    return harness.run_benchmarks([known], out=tmp_path / "r", quick=True, model=tiny,
                                  progress=False, figure="", methods="base_prompt,clas", judge=judge)


def test_judge_scores_become_columns_and_records(tiny, tmp_path, serve):
    def respond(request):  # rows 20 and 21 are "hello 20" and "wonderful 21": scores 2 and 1
        return 200, completion("2" if "hello 20" in user_text(request) else "**Score:** 1"), {}

    server = serve(respond)
    rows = _judge_run(tiny, tmp_path, server)
    recs = _records(tmp_path / "r")
    for method in ("base_prompt", "clas"):
        mine = [r for r in recs if r["method"] == method]
        assert [r["judge_score"] for r in mine] == [2.0, 1.0, None, None]
        assert [r["judge_status"] for r in mine] == ["ok", "ok", None, None]
    for row in rows:
        assert row["judge_score"] == pytest.approx(1.5)
        assert row["judge_score_ci_low"] == pytest.approx(1.0)
        assert row["judge_score_ci_high"] == pytest.approx(2.0)
        assert (row["judge_ok"], row["judge_unparseable"], row["judge_missing"]) == (2, 0, 0)
        assert row["judge_model"] == "judge-x"
    assert len(server.requests) == 4
    assert all(r["body"]["messages"][0]["content"] == "Judge it." for r in server.requests)
    _judge_run(tiny, tmp_path, server)  # rerun: cells and scores cached, nothing asked twice
    assert len(server.requests) == 4


def test_garbage_and_silent_judges_never_lose_a_cell(tiny, tmp_path, serve):
    garbage = serve(lambda request: (200, completion("I cannot rate this."), {}))
    with pytest.warns(UserWarning, match="2 unparseable, 0 missing"):
        rows = _judge_run(tiny, tmp_path / "g", garbage)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert [(r["judge_ok"], r["judge_unparseable"], r["judge_score"]) for r in rows] == [
        (0, 2, None), (0, 2, None)]
    silent = serve(lambda request: None)
    with pytest.warns(UserWarning, match="0 unparseable, 2 missing"):
        rows = _judge_run(tiny, tmp_path / "s", silent)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert [r["judge_missing"] for r in rows] == [2, 2]
    assert all(math.isfinite(r["test_nll"]) for r in rows)
    saved = harness.read_results(tmp_path / "s" / "r" / "benchmarks.csv")
    assert [r["method"] for r in saved] == ["base_prompt", "clas"]
