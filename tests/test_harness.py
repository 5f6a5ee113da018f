"""Tests of the benchmark harness on the tiny random model (hand-written CSV rows only)."""

import csv
import json
import math
import time

import pytest

import clas_lens as cl
from clas_lens.bench import cell as cell_module
from clas_lens.bench import harness, report

COLUMNS = ["id", "x", "y", "base_template", "steer_template", "base_input", "base_label",
           "label_score", "label_accuracy", "label_instructions_template",
           "label_prompt_template"]
WORDS = ["cats", "dogs", "rain", "Paris", "hello", "wonderful", "weekend", "morning"]


def write_reference_csv(path, n=24, base="Tell me about {prompt}.",
                        steer="Tell me about {prompt}, cheerfully!"):
    """A reference-format CSV with ``n`` short hand-written rows (splits 10/10/rest)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for i in range(n):
            word = WORDS[i % len(WORDS)] + ("" if i < len(WORDS) else f" {i}")
            w.writerow({
                "id": 100 + i, "x": base.replace("{prompt}", word),
                "y": f"Sure, here is something wonderful about {word}!"
                     + ("<|eot_id|>" if i % 2 else ""),
                "base_template": base, "steer_template": steer, "base_input": word,
                "base_label": "", "label_score": "1", "label_accuracy": "1",
                "label_instructions_template": "Judge it.", "label_prompt_template": "{prompt}",
            })
    return path


@pytest.fixture(scope="module")
def bench_run(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    known = write_reference_csv(tmp / "JailbreakBench_SteerDataset.csv")
    out = tmp / "r"
    t = time.perf_counter()
    rows = harness.run_benchmarks([known], out=out, quick=True, model=tiny, progress=False)
    return tmp, known, out, rows, time.perf_counter() - t


def test_one_finite_row_per_method(bench_run):
    tmp, _, out, rows, _ = bench_run
    saved = harness.read_results(out / "benchmarks.csv")
    assert [r["method"] for r in saved] == list(harness.STEERING_METHODS)
    assert [r["method"] for r in rows] == list(harness.STEERING_METHODS)
    for r in saved:
        assert r["status"] == "ok", r.get("error")
        assert r["benchmark"] == "JailbreakBench"
        assert math.isfinite(r["test_nll"]) and r["test_nll"] > 0
        assert -1 <= r["embed_sim"] <= 1
        assert r["n_test"] == 4 and r["n_gen"] == 2 and r["max_new_tokens"] == 8
        assert r["m_compliance_prefix"] is not None and r["m_refusal"] is not None
        for k in ("clas_lens", "transformer_lens", "torch", "model", "max_completion_tokens"):
            assert r[k] not in (None, "")
    by = {r["method"]: r for r in saved}
    assert by["base_prompt"]["n_params"] == 0 and by["las"]["n_params"] == 1
    assert by["clas"]["n_params"] > by["las_layerwise"]["n_params"] > 1
    assert by["clas"]["best_epoch"] in (0, 1)
    assert by["las"]["las_c"] is not None
    assert by["lora"]["strength_mean_abs"] is None and by["clas"]["strength_mean_abs"] is not None


def test_outputs_hold_no_prompt_or_target_text(bench_run):
    _, _, out, _, _ = bench_run
    recs = [json.loads(l) for l in (out / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 4 * len(harness.STEERING_METHODS)  # every scored test row
    assert {r["row"] for r in recs} == {20, 21, 22, 23}
    assert {r["row_id"] for r in recs} == {"120", "121", "122", "123"}
    gens = [r for r in recs if r["text"] is not None]
    assert {g["row"] for g in gens} == {20, 21} and len(gens) == 2 * len(harness.STEERING_METHODS)
    for g in recs:
        assert set(g) >= {"benchmark", "method", "row", "row_id", "text", "strength_mean_abs",
                          "test_nll", "n_tokens", "judge_score", "m_refusal"}
        assert "prompt" not in g and "target" not in g
        assert all("Sure, here is something wonderful" not in str(v) for v in g.values())
    md = (out / "benchmarks.md").read_text()
    assert "Sure, here is something wonderful" not in md and "Tell me about" not in md
    assert "clas-lens bench" in md and "**" in md
    assert (out.parent / "figures" / "bench_test_nll.png").stat().st_size > 1000


def test_rerun_skips_finished_cells(bench_run, tiny, monkeypatch):
    _, known, out, rows, _ = bench_run
    before = (out / "benchmarks.csv").read_text()
    calls = []

    def run_cell(*a, **k):
        calls.append(a)
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(cell_module, "run_cell", run_cell)
    again = harness.run_benchmarks([known], out=out, quick=True, model=tiny, progress=False)
    assert calls == []
    assert (out / "benchmarks.csv").read_text() == before
    assert [r["test_nll"] for r in again] == [r["test_nll"] for r in rows]


def test_unknown_benchmark_gets_nll_and_embed_sim_only(bench_run, tiny):
    tmp, _, out, _, _ = bench_run
    unknown = write_reference_csv(tmp / "Toy.csv")
    rows = harness.run_benchmarks([unknown], out=out, quick=True, model=tiny, progress=False,
                                  methods="base_prompt, clas")
    assert [(r["benchmark"], r["method"]) for r in rows] == [("Toy", "base_prompt"),
                                                            ("Toy", "clas")]
    for r in rows:
        assert math.isfinite(r["test_nll"]) and r["embed_sim"] is not None
        assert all(v is None for k, v in r.items() if k.startswith("m_"))
    saved = harness.read_results(out / "benchmarks.csv")
    assert len(saved) == len(harness.STEERING_METHODS) + 2  # the earlier benchmark's rows are kept


def test_methods_and_paths_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        harness.parse_methods("clas,nope")
    assert harness.parse_methods("lora, clas") == ["clas", "lora"]
    with pytest.raises(FileNotFoundError, match=r"missing\.csv: no such file or folder"):
        harness.find_csvs([tmp_path / "missing.csv"])


def test_report_formats_rows_without_a_model():
    rows = [{"benchmark": "B", "method": m, "status": "ok", "test_nll": v, "embed_sim": 0.5}
            for m, v in (("base_prompt", 2.0), ("clas", 1.5))]
    table = report.nll_table(rows)
    assert "**1.500**" in table and "2.000" in table
    fig = report.nll_figure(rows)
    assert len(fig.axes[0].patches) == 2


def test_cli_bench_help_exits_zero(capsys):
    from clas_lens.cli import main

    with pytest.raises(SystemExit, match="^0$") as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    assert "--gen-rows" in capsys.readouterr().out


def test_rerun_with_all_test_rows_skips_finished_cells(tiny, tmp_path, monkeypatch):
    """The default n_test (all rows) must match the stored row count on resume."""
    known = write_reference_csv(tmp_path / "JailbreakBench_SteerDataset.csv")
    out = tmp_path / "r"
    kw = dict(out=out, model=tiny, progress=False, methods="base_prompt", gen_rows=1,
              max_new_tokens=2, max_completion_tokens=16, figure="")
    first = harness.run_benchmarks([known], **kw)
    assert first[0]["n_test"] == 4  # 24 rows: 10 train, 10 valid, 4 test
    before = (out / "benchmarks.csv").read_text()
    calls = []
    real = cell_module.run_cell
    monkeypatch.setattr(cell_module, "run_cell", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = harness.run_benchmarks([known], **kw)
    assert calls == []
    assert (out / "benchmarks.csv").read_text() == before
    assert [r["test_nll"] for r in again] == [r["test_nll"] for r in first]


def test_identical_templates_get_response_directions_and_the_reference_protocol(tiny, tmp_path):
    """Base and steer templates both ``{prompt}``: the directions come from a response
    contrast, recorded in the ``contrast`` column; the protocol is recorded and applied."""
    same = write_reference_csv(tmp_path / "JailbreakBench_SteerDataset.csv", base="{prompt}",
                               steer="{prompt}")
    out = tmp_path / "r"
    kw = dict(out=out, model=tiny, progress=False, methods="base_prompt,clas", quick=True,
              n_test=2, gen_rows=1, max_new_tokens=3, figure="")
    rows = harness.run_benchmarks([same], protocol="reference", **kw)
    by = {r["method"]: r for r in rows}
    assert by["clas"]["contrast"] == "response" and by["base_prompt"]["contrast"] is None
    assert {r["protocol"] for r in rows} == {"reference"}
    assert all(r["max_completion_tokens"] is None for r in rows)  # not capped
    steer = cl.SteerSet.from_reference_csv(same)
    test = [(p, c + ("<|eot_id|>" if m else "")) for p, c, m in
            zip(steer.test.prompts, steer.test.completions, steer.test.end_of_turn_marks())][:2]
    assert by["base_prompt"]["test_nll"] == pytest.approx(
        cl.completion_nll(tiny, None, test, end_of_turn="marker"), rel=1e-5)
    assert by["base_prompt"]["test_nll"] != pytest.approx(
        cl.completion_nll(tiny, None, test), rel=1e-5)
    # the default protocol is another setting: its cells are run, not taken from the above
    again = harness.run_benchmarks([same], **kw)
    assert {r["protocol"] for r in again} == {"clas_lens"}
    assert {r["max_completion_tokens"] for r in again} == {32}
    saved = harness.read_results(out / "benchmarks.csv")
    assert [r["protocol"] for r in saved] == ["clas_lens", "clas_lens"]


def test_template_directions_are_recorded(bench_run):
    _, _, out, _, _ = bench_run
    by = {r["method"]: r for r in harness.read_results(out / "benchmarks.csv")}
    assert [by[m]["contrast"] for m in harness.STEERING_METHODS] == [
        None, None, "template", "template", "template", None, None]
    assert {r["protocol"] for r in by.values()} == {"clas_lens"}


def test_a_failing_cell_becomes_an_error_row_and_the_run_goes_on(tiny, tmp_path, monkeypatch):
    """The serial loop and a Ray worker's job share one guarded runner: a training error
    becomes an ``error`` row (NaN NLL, no records) and the next method still runs."""
    from clas_lens.bench.parallel import bench_cell

    known = write_reference_csv(tmp_path / "JailbreakBench_SteerDataset.csv")
    real = cell_module.run_cell

    def failing(model, steer, method, *a, **k):
        if method == "clas":
            raise cl.TrainingError("non-finite training loss (nan) at step 1")
        return real(model, steer, method, *a, **k)

    monkeypatch.setattr(cell_module, "run_cell", failing)
    kw = dict(quick=True, model=tiny, progress=False, figure="", n_test=2, gen_rows=1,
              max_new_tokens=2)
    rows = harness.run_benchmarks([known], out=tmp_path / "r", methods="clas,lora", **kw)
    by = {r["method"]: r for r in rows}
    assert by["clas"]["status"] == "error" and math.isnan(by["clas"]["test_nll"])
    assert by["clas"]["error"] == "TrainingError: non-finite training loss (nan) at step 1"
    assert by["clas"]["direction_seconds"] is not None and by["clas"]["cell_seconds"] >= 0
    assert by["lora"]["status"] == "ok" and math.isfinite(by["lora"]["test_nll"])
    records = [json.loads(line) for line in (tmp_path / "r" / "records.jsonl").open()]
    assert {r["method"] for r in records} == {"lora"}

    settings = {**harness.resolve_settings(True), "repetition_penalty": 1.0, "n_test": 2,
                "gen_rows": 1, "max_new_tokens": 2}
    row, recs, dir_seconds = bench_cell(tiny, known, "clas", settings, "rfm", 0)
    assert row["status"] == "error" and row["error"] == by["clas"]["error"] and recs == []
    assert dir_seconds is not None
