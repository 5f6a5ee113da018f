"""The HTML report: self-contained, its token data equal to the trace it came from, its hover
attribution equal to the analysis, its colour limits robust, and the CLI path that writes it."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import random_directions, randomize

import clas_lens as cl
from clas_lens.analysis import attribute_layers, top_components
from clas_lens.data import DataError
from clas_lens.reporting import colour_limits, load_prompts, render_page, shown_start

PROMPTS = ["Tell me about cats.", "Hello world"]
PAIRS = [("Hi", "Great day!"), ("cats", "I love cats")]
GEN = dict(max_new_tokens=4, repetition_penalty=1.2, progress=False)


def page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="lens-data">(.*?)</script>', html, re.S)
    assert m, "the page has no embedded token data"
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def built(tiny):
    dirs = random_directions(tiny)
    steerer = randomize(cl.CLASSteerer(dirs), scale=0.3)
    other = randomize(cl.LayerwiseLASSteerer(dirs), seed=1, scale=0.5)
    html = cl.report(tiny, steerer, PROMPTS, directions=dirs, pairs=PAIRS, other=other,
                     progress=False, **{k: v for k, v in GEN.items() if k != "progress"})
    return {"html": html, "steerer": steerer, "dirs": dirs, "data": page_data(html)}


def test_page_is_one_self_contained_file(built):
    from plotly.offline import get_plotlyjs

    html = built["html"]
    # plotly.js inlined exactly once, however many figures
    assert html.count(get_plotlyjs()) == 1
    # the rest: a figure written with include_plotlyjs="cdn" or a linked stylesheet would request
    # the network (plotly.js itself holds URLs in strings for map tiles it never loads here)
    rest = html.replace(get_plotlyjs(), "")
    assert not re.search(r"<script[^>]*\bsrc\s*=", rest, re.I)
    assert not re.search(r"<link\b", rest, re.I)
    assert not re.search(r"https?://", rest, re.I)
    assert html.count('class="plotly-graph-div"') >= 6
    for heading in ("Where the steering acts", "Probe accuracy and strength per layer",
                    "alpha against the projection", "CLAS beside las_layerwise",
                    "Similarity, with null bands", "Dose-response", "Provenance"):
        assert heading in html, heading


def test_token_data_equal_the_steered_trace(tiny, built):
    """Bug caught: an off-by-one between the shown tokens and their rows, or layers misordered."""
    res = cl.generate(tiny, built["steerer"], PROMPTS, **GEN)
    data = built["data"]
    assert data["layers"] == res.layers
    for i, ex in enumerate(data["examples"]):
        assert ex["prompt"] == PROMPTS[i]
        side = ex["sides"][1]
        n = int(res.mask[i].sum())
        start = shown_start(res.str_tokens[i], res.prompt_lengths[i])
        assert (side["start"], side["plen"]) == (start, res.prompt_lengths[i])
        assert "".join(side["text"]) == tiny.tokenizer.decode(res.token_ids[i][start:n])
        np.testing.assert_allclose(side["alpha"], res.strengths[i, start:n].numpy(), rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(side["proj"], res.projections[i, start:n].numpy(), rtol=1e-3, atol=1e-6)


def test_unsteered_side_is_the_unsteered_answer(tiny, built):
    base = cl.generate(tiny, None, PROMPTS, **GEN)
    for i, ex in enumerate(built["data"]["examples"]):
        side = ex["sides"][0]
        shown = "".join(side["text"][side["plen"] - side["start"]:])
        assert shown.startswith(base.texts[i]), (shown, base.texts[i])


def test_hover_components_are_the_largest_attributed(tiny, built):
    """Bug caught: attributions of the wrong token or layer, or prompt tokens claiming some."""
    res = cl.generate(tiny, built["steerer"], PROMPTS, **GEN)
    side = built["data"]["examples"][0]["sides"][1]
    k = side["plen"] - side["start"]  # first answer token
    assert all(a is None for a in side["attr"][:k])
    attrs = attribute_layers(tiny, built["steerer"], res.token_ids[0][: int(res.mask[0].sum())],
                             position=side["plen"])
    for j, a in enumerate(attrs):
        want = top_components(a, 3)
        assert [c[0] for c in side["attr"][k][j]] == [name for name, _ in want]
        np.testing.assert_allclose([c[1] for c in side["attr"][k][j]], [v for _, v in want], rtol=5e-3)


def test_colour_limit_leaves_out_the_first_token():
    alpha = np.full((20, 2), 0.5)
    alpha[0] = 1e6  # the attention sink at position 0
    ex = [{"sides": [{"alpha": alpha.tolist(), "start": 0}]}]
    lim = colour_limits(ex, 2)
    assert lim["0"] == pytest.approx(0.5) and lim["mean"] == pytest.approx(0.5)
    # when the view starts later (system turn hidden), its first row is a real token and counts
    ex = [{"sides": [{"alpha": alpha[:, :1].tolist(), "start": 5}]}]
    assert colour_limits(ex, 1)["0"] > 1e3


def test_text_cannot_close_the_data_script():
    evil = "</script><script>alert(1)</script>"
    data = {"examples": [{"prompt": evil, "sides": []}], "layers": [0], "vmax": {"mean": 1.0, "0": 1.0}}
    html = render_page("t", data, [], [("k", evil)])
    assert html.count("<script") == 2  # the data and the token-view script, nothing injected
    assert page_data(html)["examples"][0]["prompt"] == evil


def test_report_rejects_bad_input(tiny):
    dirs = random_directions(tiny)
    with pytest.raises(ValueError, match="CLAS-form steerer"):
        cl.report(tiny, cl.LASSteerer(dirs), PROMPTS)
    with pytest.raises(ValueError, match="prompts is empty"):
        cl.report(tiny, cl.CLASSteerer(dirs), [])
    with pytest.raises(ValueError, match="attribute must be"):
        cl.report(tiny, cl.CLASSteerer(dirs), PROMPTS, attribute="heads")


def test_load_prompts_formats(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\n second \n")
    assert load_prompts(tmp_path / "p.txt") == (["first", "second"], [])
    (tmp_path / "p.json").write_text(json.dumps({"prompts": ["a"], "pairs": [["a", "b"]]}))
    assert load_prompts(tmp_path / "p.json") == (["a"], [("a", "b")])
    (tmp_path / "bad.json").write_text(json.dumps({"texts": []}))
    with pytest.raises(DataError, match="expected"):
        load_prompts(tmp_path / "bad.json")
    with pytest.raises(DataError, match="no such prompts file"):
        load_prompts(tmp_path / "missing.txt")


def test_cli_train_then_report(tiny, tmp_path, monkeypatch, capsys):
    """`clas-lens train` saves what `clas-lens report RUN` needs (steerer, directions, prompts.json)."""
    from clas_lens import cli
    from clas_lens import model as model_mod

    folder = tmp_path / "toy"
    folder.mkdir()
    words = ["cats", "dogs", "rain", "Paris", "music", "cake"]
    (folder / "contrast.jsonl").write_text("".join(
        json.dumps({"prompt": f"Describe {w}{end}", "label": y}) + "\n"
        for w in words for end, y in ((".", 0), (" cheerfully!", 1))))
    (folder / "pairs.jsonl").write_text("".join(
        json.dumps({"prompt": f"Tell me about {w}", "completion": "Wonderful!", "split": split}) + "\n"
        for w, split in zip(words, ["train", "train", "valid", "test", "test"])))
    monkeypatch.setattr(cl, "load_model", lambda name=None, **kw: tiny)
    monkeypatch.setattr(model_mod, "load_model", lambda name=None, **kw: tiny)
    run, out = tmp_path / "run", tmp_path / "r.html"
    assert cli.main(["train", str(folder), "--out", str(run), "--epochs", "0", "--method", "mean_diff"]) == 0
    saved = json.loads((run / "prompts.json").read_text())
    assert saved == {"prompts": ["Tell me about Paris", "Tell me about music"],
                     "pairs": [["Tell me about rain", "Wonderful!"]]}
    assert cli.main(["report", str(run), "--out", str(out), "--n-prompts", "1", "--max-new-tokens", "3"]) == 0
    html = out.read_text()
    assert [ex["prompt"] for ex in page_data(html)["examples"]] == ["Tell me about Paris"]
    assert "Dose-response" in html and "mean_diff on toy" in html  # pairs and directions were found
    (run / "prompts.json").unlink()
    capsys.readouterr()
    assert cli.main(["report", str(run), "--out", str(out)]) == 1
    assert "--prompts" in capsys.readouterr().err  # no prompts: the error names the way out
