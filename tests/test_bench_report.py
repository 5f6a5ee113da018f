"""The benchmark report: intervals next to values, paired comparisons, the judge and cost lines,
error bars on the figure, and paired.csv written and read back, all from hand-made rows."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from clas_lens.bench import report, store
from clas_lens.bench.stats import N_RESAMPLES, SEED


def cell(method, bench="B", **cols):
    return {"benchmark": bench, "method": method, "status": "ok", **cols}


def with_ci(method, value, lo, hi, bench="B", col="test_nll", **cols):
    return cell(method, bench, **{col: value, f"{col}_ci_low": lo, f"{col}_ci_high": hi}, **cols)


def comparison(bench, method, verdict, diff, lo, hi, measure="test_nll", higher=False):
    return {"benchmark": bench, "method": method, "measure": measure, "reference": "clas",
            "mean_diff": diff, "ci_low": lo, "ci_high": hi, "verdict": verdict, "n": 50,
            "n_missing": 0, "higher_is_better": higher}


def table_line(table: str, first: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"| {first} |"))


def test_intervals_are_shown_and_the_best_value_is_bold():
    # base_prompt's interval reaches below clas's value: the best is picked by value, not by bound
    rows = [with_ci("base_prompt", 2.0, 0.5, 3.0), with_ci("clas", 1.5, 1.4, 1.62)]
    low = report.nll_table(rows)
    assert table_line(low, "B") == "| B | 2.000 [0.500, 3.000] | **1.500** [1.400, 1.620] |"
    high = report.nll_table(rows, lower_is_better=False)
    assert table_line(high, "B") == "| B | **2.000** [0.500, 3.000] | 1.500 [1.400, 1.620] |"


def test_rows_without_intervals_render_as_before():
    rows = [cell("base_prompt", test_nll=2.0, embed_sim=0.5, m_refusal=0.25),
            cell("clas", test_nll=1.5, embed_sim=0.75, m_refusal=0.5,
                 test_nll_ci_low=1.4, test_nll_ci_high=None)]  # half an interval shows none
    assert table_line(report.nll_table(rows), "B") == "| B | 2.000 | **1.500** |"
    metrics = report.metric_tables(rows)
    assert "[" not in metrics and table_line(metrics, "clas") == "| clas | 0.750 | 0.500 | - | - |"
    text = report.render_markdown(rows)
    assert "## Paired comparisons" not in text and "## LLM judge" not in text


def test_metric_tables_show_intervals_without_extra_columns():
    rows = [with_ci("clas", 0.4, 0.3, 0.55, col="m_refusal", embed_sim=0.6, embed_sim_ci_low=0.5,
                    embed_sim_ci_high=0.7, m_refusal_n=50, n_gen=50)]
    table = report.metric_tables(rows)
    assert table_line(table, "method") == "| method | embed_sim | refusal | strength_mean_abs | n_gen |"
    assert table_line(table, "clas") == "| clas | 0.600 [0.500, 0.700] | 0.400 [0.300, 0.550] | - | 50 |"


def test_paired_table_cells_from_csv_text():
    paired = [comparison("B", "lora", "better", "-0.031", "-0.05", "-0.01"),
              comparison("B", "base_prompt", "worse", "0.2", "0.1", "0.3"),
              comparison("C", "base_prompt", "indistinguishable", -0.004, -0.02, 0.012),
              comparison("C", "lora", "better", 0.5, 0.4, 0.6, measure="embed_sim", higher=True)]
    table = report.paired_table(paired)
    assert table_line(table, "benchmark") == "| benchmark | base_prompt | lora |"
    assert table_line(table, "B") == "| B | worse +0.200 [+0.100, +0.300] | better −0.031 [−0.050, −0.010] |"
    assert table_line(table, "C") == "| C | indistinguishable −0.004 [−0.020, +0.012] | - |"
    assert report.paired_table(paired, "judge_score") == ""


def test_paired_summary_counts_verdicts_per_measure():
    verdicts = ["better"] * 3 + ["worse"] + ["indistinguishable"] * 2
    paired = [comparison(f"B{i}", "lora", v, -0.1, -0.2, 0.0) for i, v in enumerate(verdicts)]
    paired.append(comparison("B9", "lora", "indistinguishable", None, None, None))  # no data
    paired += [comparison(f"B{i}", "reft", v, 0.1, 0.05, 0.2, measure="judge_score", higher=True)
               for i, v in enumerate(["worse", "better"])]
    paired.append(comparison("B0", "reft", "better", 0.1, 0.05, 0.2, measure="embed_sim", higher=True))
    text = report.paired_summary(paired)
    lines = [line for line in text.splitlines() if line.startswith("- ")]
    assert lines == [
        "- test_nll: CLAS better in 3, worse in 1, indistinguishable in 2 of 7 comparisons; 1 without data",
        "- embed_sim: CLAS better in 1, worse in 0, indistinguishable in 0 of 1 comparison",
        "- judge_score: CLAS better in 1, worse in 1, indistinguishable in 0 of 2 comparisons"]
    assert f"({N_RESAMPLES:,} resamples, seed {SEED}, 95% percentile intervals" in text
    assert "### test_nll (lower is better" in text and "### judge_score (higher is better" in text
    assert "### embed_sim" not in text


def test_render_markdown_places_paired_judge_and_total_time():
    rows = [with_ci("base_prompt", 2.0, 1.9, 2.1, cell_seconds=3000.0, judge_model="judge-7b",
                    judge_ok=48, judge_unparseable=1, judge_missing=1, judge_score=1.25),
            with_ci("clas", 1.5, 1.4, 1.6, cell_seconds=4800.0, judge_model="judge-7b", judge_ok=50,
                    judge_unparseable=0, judge_missing=0, judge_score=1.5, judge_score_ci_low=1.25,
                    judge_score_ci_high=1.75)]
    for r in rows:
        r.update(gen_rows=8, max_new_tokens=64)
    paired = [comparison("B", "base_prompt", "better", -0.5, -0.6, -0.4)]
    text = report.render_markdown(rows, paired=paired)
    assert "| B | 8 | 64 |" in text and "`records.jsonl`" in text and "generations.jsonl" not in text
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads[:4] == ["## Test NLL (lower is better; best per benchmark in bold)",
                         "## Paired comparisons: CLAS against each method",
                         "## Embedding similarity with the target (higher is better; best in bold)",
                         "## Behaviour metrics per benchmark"]
    assert "## LLM judge (higher is better; best in bold)" in heads
    judge = text.split("## LLM judge")[1].split("## Cost")[0]
    assert "Judge model: `judge-7b`." in judge and "| B | 48/1/1 | 50/0/0 |" in judge
    assert "| B | 1.250 | **1.500** [1.250, 1.750] |" in judge
    assert "Total cell time: 2 h 10 min (sum of cell_seconds)" in text  # 7800 s
    given = report.render_markdown(rows, total_seconds=5 * 3600 + 59 * 60 + 40)
    assert "Total cell time: 6 h 0 min (sum of cell_seconds)" in given


def test_write_markdown_writes_the_rendered_text(tmp_path):
    rows = [with_ci("clas", 1.5, 1.4, 1.6)]
    paired = [comparison("B", "lora", "worse", 0.1, 0.05, 0.2)]
    path = report.write_markdown(rows, tmp_path / "benchmarks.md", paired=paired, command="make bench")
    assert path.read_text(encoding="utf-8") == report.render_markdown(rows, paired=paired,
                                                                      command="make bench")
    assert "worse +0.100 [+0.050, +0.200]" in path.read_text(encoding="utf-8")


def error_segments(fig) -> list[tuple[float, float, float]]:
    """(x, low end, high end) of every error bar drawn on the figure's axes."""
    out = []
    for c in fig.axes[0].containers:
        if isinstance(c, ErrorbarContainer):
            for seg in c.lines[2][0].get_segments():
                out.append((float(seg[0][0]), float(seg[0][1]), float(seg[1][1])))
    return out


def test_figure_error_bars_span_the_planted_intervals():
    rows = [with_ci("base_prompt", 2.0, 1.75, 2.5), with_ci("clas", 1.5, 1.625, 2.0),  # above the value
            cell("lora", test_nll=1.25)]
    fig = report.nll_figure(rows)
    bars = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]
    assert [len(b) for b in bars] == [1, 1, 1]
    segs = error_segments(fig)
    xs = [b[0].get_x() + b[0].get_width() / 2 for b in bars[:2]]
    assert np.allclose(segs, [(xs[0], 1.75, 2.5), (xs[1], 1.5, 2.0)])
    assert fig.axes[0].get_title().endswith("\n95% bootstrap intervals over test rows")
    plain = report.nll_figure([cell("clas", test_nll=1.5)])
    assert error_segments(plain) == [] and "bootstrap" not in plain.axes[0].get_title()


def test_paired_csv_round_trips_exactly(tmp_path):
    paired = [comparison("B", "lora", "better", 0.1 + 0.2, -1 / 3, np.float64(1e-17)),
              {**comparison("C", "reft", "indistinguishable", None, None, None, measure="judge_score",
                            higher=True), "n": 0, "n_missing": 7}]
    path = store.write_paired(tmp_path / "paired.csv", paired)
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == ",".join(store.PAIRED_COLUMNS)
    assert text.splitlines()[2] == "C,reft,judge_score,clas,,,,indistinguishable,0,7,True"
    back = store.read_paired(path)
    assert back == paired
    assert [type(r["n"]) for r in back] == [int, int] and back[0]["higher_is_better"] is False
    assert store.read_paired(tmp_path / "absent.csv") == []


def test_read_paired_names_a_bad_number(tmp_path):
    path = tmp_path / "paired.csv"
    path.write_text(",".join(store.PAIRED_COLUMNS) + "\nB,lora,test_nll,clas,oops,,,better,50,0,False\n",
                    encoding="utf-8")
    with pytest.raises(ValueError, match=r"paired\.csv, line 2: column 'mean_diff' holds 'oops'"):
        store.read_paired(path)
