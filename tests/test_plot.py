"""Figures from synthetic traces (fast, exact data checks), token strings from the tiny
model's tokenizer, and make_figures(quick=True) on the embedded model."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from matplotlib.figure import Figure

from clas_lens import plot
from clas_lens.directions import Directions
from clas_lens.plot.common import GREY
from clas_lens.tracing import GenerationResult
from clas_lens.training import TrainHistory

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SYSTEM_TURN = 7  # tokens of example 0's system turn (<|im_start|> system \n Be kind <|im_end|> \n)


def fake_result(rank: int | None = None, seed: int = 0) -> GenerationResult:
    """Two examples (21 and 8 real tokens, prompts of 17 and 5), 3 steered layers [2, 5, 7].

    Example 0 has a system turn (positions 0-6) whose strengths are made extreme (50),
    so a colour limit that counted them would be about 50.
    """
    g = torch.Generator().manual_seed(seed)
    toks = [["<|im_start|>", "system", "\n", "Be", " kind", "<|im_end|>", "\n",
             "<|im_start|>", "user", "\n", "Tell", " me", "<|im_end|>", "\n",
             "<|im_start|>", "assistant", "\n", " The", " sun", " is", "!"],
            ["<|im_start|>", "user", "\n", "Hi", "<|im_end|>", " Hello", " there", " wonderfully"]]
    B, P, L = 2, 21, 3
    shape = (B, P, L) if rank is None else (B, P, L, rank)
    s = torch.randn(*shape, generator=g) * 2 + 0.5
    s[0, :SYSTEM_TURN] = 50.0
    mask = torch.zeros(B, P, dtype=torch.bool)
    mask[0, :21] = True
    mask[1, :8] = True
    s[~mask] = 0
    return GenerationResult(["Tell me", "Hi"], ["The sun is!", "Hello there wonderfully"],
                            [list(range(21)), list(range(8))], [17, 5], toks, s, s.clone() * 0.1,
                            mask, [2, 5, 7], "clas")


def q99(x) -> float:
    return float(np.quantile(np.abs(np.asarray(x, dtype=float)), 0.99))


def heat(fig, k: int = 0):
    return [t for t in fig.data if isinstance(t, go.Heatmap)][k]


# ----------------------------------------------------------------- tokens, special positions, limits
def test_token_label():
    assert plot.token_label(" hello") == "·hello"
    assert plot.token_label("\n") == "↵"
    assert plot.token_label("a\tb\r") == "a⇥b"
    assert plot.token_label("") == "∅"
    assert plot.token_label("<|im_start|>") == "<|im_start|>"
    assert plot.token_label(" wonderfully") == "·wonderfully"  # no cut-off


def test_special_positions():
    toks = fake_result().str_tokens
    assert plot.special_positions(toks[0]).nonzero()[0].tolist() == list(range(SYSTEM_TURN))
    assert plot.special_positions(toks[1]).nonzero()[0].tolist() == [0]  # no system turn
    llama3 = ["<|begin_of_text|>", "<|start_header_id|>", "system", "<|end_header_id|>", "\n\n",
              "Be", "<|eot_id|>", "<|start_header_id|>", "user", "<|end_header_id|>", "Hi"]
    assert plot.special_positions(llama3).nonzero()[0].tolist() == list(range(7))
    split_role = ["<|im_start|>", "sys", "tem", "\n", "x", "<|im_end|>", "<|im_start|>", "user"]
    assert plot.special_positions(split_role).tolist() == [True] * 6 + [False] * 2
    unfinished = ["<|im_start|>", "system", "\n", "Be"]  # no user turn after it
    assert plot.special_positions(unfinished).tolist() == [True, False, False, False]
    assert plot.special_positions([]).shape == (0,)


def test_colour_limit():
    z = np.ones((3, 50))
    z[:, 0] = -300.0   # first-token outlier
    z[1, 7] = 40.0     # one extreme cell
    first = np.zeros(50, dtype=bool)
    first[0] = True
    assert plot.colour_limit(z, first) == pytest.approx(1.0)
    assert plot.colour_limit(z, first, quantile=None) == pytest.approx(40.0)
    assert plot.colour_limit(z, quantile=None) == pytest.approx(300.0)
    assert plot.token_range(z) == pytest.approx(1.0)
    assert plot.token_range(z, skip_first=False, quantile=None) == pytest.approx(300.0)
    assert plot.colour_limit([[2.0, -3.0]], [True, True], quantile=None) == 3.0  # nothing left
    assert plot.colour_limit(np.zeros((2, 1))) == 1e-8
    assert plot.colour_limit([np.nan, -4.0], quantile=None) == 4.0


# ----------------------------------------------------------------- strength heatmap (plotly)
def test_strength_heatmap_plotly():
    r = fake_result()
    fig = plot.strength_heatmap(r, 0)
    h = heat(fig)
    z = np.asarray(h.z)
    np.testing.assert_allclose(z, r.strengths[0, :21].numpy().T, rtol=1e-6)  # layers x tokens
    # the grey overlay holds the system turn's values and nothing else
    g = np.asarray(heat(fig, 1).z, dtype=float)
    np.testing.assert_allclose(g[:, :SYSTEM_TURN], z[:, :SYSTEM_TURN])
    assert np.isnan(g[:, SYSTEM_TURN:]).all()
    assert heat(fig, 1).colorscale[0][1] == GREY and heat(fig, 1).showscale is False
    # limit: 99th percentile of |alpha| outside the grey cells, zero-centred
    assert h.zmax == pytest.approx(q99(z[:, SYSTEM_TURN:]), rel=1e-6)
    assert h.zmax < 20 and h.zmid == 0 and h.zmin == pytest.approx(-h.zmax)
    # hover carries the token, labels are readable, axes are named
    flat = [t for row in h.customdata for t in row]
    assert "·sun" in flat and "↵" in flat and "&lt;|im_start|&gt;" in flat
    for key in ("token", "position", "layer", "value"):
        assert key in h.hovertemplate
    assert list(fig.layout.xaxis.ticktext[17:19]) == ["·The", "·sun"]
    assert fig.layout.xaxis.title.text == "token" and fig.layout.yaxis.title.text == "layer"
    assert [s.x0 for s in fig.layout.shapes] == [16.5]  # prompt | answer
    # include_special: one trace, limit over every cell (the 50s count)
    full = plot.strength_heatmap(r, 0, include_special=True)
    assert len(full.data) == 1
    assert heat(full).zmax == pytest.approx(q99(z), rel=1e-6) and heat(full).zmax > 40


def test_strength_heatmap_special_override_and_vmax():
    r = fake_result()
    flags = [False] * 21
    flags[18] = True
    g = np.asarray(heat(plot.strength_heatmap(r, 0, special=flags), 1).z, dtype=float)
    assert np.isfinite(g).any(axis=0).nonzero()[0].tolist() == [18]
    with pytest.raises(ValueError, match="special has shape"):
        plot.strength_heatmap(r, 0, special=[True, False])
    assert heat(plot.strength_heatmap(r, 0, vmax=5.0)).zmax == 5.0
    top = float(r.strengths[0, SYSTEM_TURN:21].abs().max())
    assert heat(plot.strength_heatmap(r, 0, quantile=None)).zmax == pytest.approx(top)
    inside = np.concatenate([r.strengths[0, SYSTEM_TURN:21, 0].numpy(), r.strengths[1, 1:8, 0].numpy()])
    q50 = float(np.quantile(np.abs(inside), 0.5))
    assert heat(plot.prompts_heatmap(r, 2, quantile=0.5)).zmax == pytest.approx(q50) and q50 < top
    r.strengths = torch.zeros_like(r.strengths)
    h = heat(plot.strength_heatmap(r, 0))
    assert math.isfinite(h.zmax) and h.zmax > 0 and h.zmin == -h.zmax


def test_strength_heatmap_hide_special():
    r = fake_result()
    fig = plot.strength_heatmap(r, 0, hide_special=True)
    assert len(fig.data) == 1 and list(fig.data[0].x) == list(range(SYSTEM_TURN, 21))
    np.testing.assert_allclose(np.asarray(fig.data[0].z), r.strengths[0, SYSTEM_TURN:21].numpy().T)
    assert fig.layout.xaxis.ticktext[0] == "&lt;|im_start|&gt;" and fig.layout.shapes[0].x0 == 16.5
    ax = plot.strength_heatmap(r, 0, hide_special=True, backend="matplotlib").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()][:2] == ["<|im_start|>", "user"]
    assert any(abs(line.get_xdata()[0] - (16.5 - SYSTEM_TURN)) < 1e-9 for line in ax.get_lines())
    assert "first 7 tokens" in ax.get_xlabel()
    assert len(plot.strength_heatmap(r, 1, hide_special=True).data[0].x) == 7  # position 0 only


def test_strength_heatmap_subset_and_errors():
    r = fake_result()
    fig = plot.strength_heatmap(r, 1, layers=[7, 2], title="t")
    h = heat(fig)
    assert list(h.y) == ["7", "2"]
    assert fig.layout.title.text == "t"
    np.testing.assert_allclose(np.asarray(h.z), r.strengths[1, :8][:, [2, 0]].numpy().T, rtol=1e-6)
    with pytest.raises(ValueError, match="not steered"):
        plot.strength_heatmap(r, 0, layers=[3])
    with pytest.raises(IndexError, match="out of range for 2 examples"):
        plot.strength_heatmap(r, 5)
    with pytest.raises(ValueError, match="which must be"):
        plot.strength_heatmap(r, 0, which="alpha")
    r.strengths = None
    with pytest.raises(ValueError, match="no strengths"):
        plot.strength_heatmap(r, 0)


def test_strength_heatmap_projections_and_rank():
    r = fake_result(rank=2)
    z = np.asarray(heat(plot.strength_heatmap(r, 0)).z)
    np.testing.assert_allclose(z, r.strengths[0, :21].sum(-1).numpy().T, rtol=1e-6)
    zp = np.asarray(heat(plot.strength_heatmap(r, 0, which="projections")).z)
    np.testing.assert_allclose(zp, r.projections[0, :21].sum(-1).numpy().T, rtol=1e-5)


def test_backend_is_checked():
    r = fake_result()
    with pytest.raises(ValueError, match="backend must be one of"):
        plot.strength_heatmap(r, 0, backend="svg")
    fig = Figure()
    with pytest.raises(ValueError, match="ax= is a matplotlib axes"):
        plot.similarity_plot([0], [0.1], ax=fig.add_subplot())


# ----------------------------------------------------------------- strength heatmap (matplotlib)
def test_strength_heatmap_matplotlib(tmp_path):
    r = fake_result()
    fig = plot.strength_heatmap(r, 0, backend="matplotlib")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    z = r.strengths[0, :21].numpy().T
    main, grey = ax.images
    np.testing.assert_allclose(np.asarray(main.get_array()), z, rtol=1e-6)
    lim = q99(z[:, SYSTEM_TURN:])
    assert main.norm.vcenter == 0 and main.norm.vmax == pytest.approx(lim, rel=1e-6)
    assert main.norm.vmin == pytest.approx(-lim, rel=1e-6)
    gmask = np.ma.getmaskarray(grey.get_array())
    assert (~gmask).all(axis=0).nonzero()[0].tolist() == list(range(SYSTEM_TURN))
    assert gmask[:, SYSTEM_TURN:].all()
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[:3] == ["<|im_start|>", "system", "↵"] and labels[18] == "·sun"
    assert ax.get_ylabel() == "layer" and "grey" in ax.get_xlabel()
    assert fig.axes[1].get_ylabel() == "alpha"  # the colour bar
    assert any(abs(line.get_xdata()[0] - 16.5) < 1e-9 for line in ax.get_lines())
    assert len(plot.strength_heatmap(r, 0, include_special=True, backend="matplotlib")
               .axes[0].images) == 1
    path = plot.save_png(fig, tmp_path / "sub" / "h.png")
    assert open(path, "rb").read(8) == PNG_MAGIC


def test_strength_heatmap_matplotlib_long_sequence():
    r = fake_result()
    n = 120
    r.str_tokens[0] = [f" t{i}" for i in range(n)]
    r.strengths = torch.randn(2, n, 3)
    r.mask = torch.zeros(2, n, dtype=torch.bool)
    r.mask[0] = True
    r.mask[1, :8] = True
    fig = plot.strength_heatmap(r, 0, backend="matplotlib")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][-1] == "·t119"
    assert len(fig.axes[0].get_xticklabels()) == n
    assert fig.get_size_inches()[0] > 15


# ----------------------------------------------------------------- prompts x tokens
def test_prompts_heatmap_plotly():
    r = fake_result()
    fig = plot.prompts_heatmap(r, 5)
    h = heat(fig)
    z = np.asarray(h.z, dtype=float)
    assert z.shape == (2, 21)
    np.testing.assert_allclose(z[0], r.strengths[0, :, 1].numpy(), rtol=1e-6)
    assert np.isnan(z[1, 8:]).all() and np.isfinite(z[1, :8]).all()
    g = np.isfinite(np.asarray(heat(fig, 1).z, dtype=float))
    assert g[0].nonzero()[0].tolist() == list(range(SYSTEM_TURN)) and g[1].nonzero()[0].tolist() == [0]
    inside = np.concatenate([z[0, SYSTEM_TURN:], z[1, 1:8]])
    assert h.zmax == pytest.approx(q99(inside), rel=1e-6) and h.zmin == pytest.approx(-h.zmax)
    assert "·Hello" in [c[0] for c in h.customdata[1]]
    gen = plot.prompts_heatmap(r, None, generated_only=True)
    assert len(gen.data) == 1  # answers only: nothing to grey
    zg = np.asarray(heat(gen).z, dtype=float)
    assert zg.shape == (2, 4)  # answers of 4 and 3 tokens
    np.testing.assert_allclose(zg[1, :3], r.strengths[1, 5:8].mean(-1).numpy(), rtol=1e-6)
    assert gen.layout.xaxis.title.text == "generated token"


def test_prompts_heatmap_matplotlib_labels_are_whole():
    r = fake_result()
    fig = plot.prompts_heatmap(r, 2, generated_only=True, backend="matplotlib")
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert "·wonderfully" in texts and "·sun" in texts  # 12 characters, not cut
    np.testing.assert_allclose(np.ma.filled(ax.images[0].get_array(), np.nan)[1, :3],
                               r.strengths[1, 5:8, 0].numpy(), rtol=1e-6)
    full = plot.prompts_heatmap(r, 2, backend="matplotlib")
    assert len(full.axes[0].images) == 2  # values, grey overlay


# ----------------------------------------------------------------- coloured tokens
def test_token_html():
    r = fake_result()
    r.strengths[0, SYSTEM_TURN:, :] = 0.0
    r.strengths[0, 18, :] = 3.0   # " sun": strongly positive
    r.strengths[0, 19, :] = -3.0  # " is": strongly negative
    page = plot.token_html(r, 0)
    spans = {int(s.split("pos ")[1].split(" ")[0]): s for s in page.split("<span")[1:] if "pos " in s}
    red = spans[18].split("background:")[1][:7]
    blue = spans[19].split("background:")[1][:7]
    assert int(red[1:3], 16) > int(red[5:7], 16)   # red channel > blue channel
    assert int(blue[5:7], 16) > int(blue[1:3], 16)
    assert all(GREY in spans[k] for k in range(SYSTEM_TURN)) and GREY not in spans[18]
    assert "start of the answer" in page and "&lt;|im_start|&gt;" in page
    assert "+3" in page.split("scale")[1][:400]  # the limit ignores the 50s of the system turn
    included = plot.token_html(r, 0, include_special=True)
    assert GREY not in included and "+50" in included.split("scale")[1][:400]
    only = plot.token_html(r, 0, 5, show_prompt=False)
    assert "pos 0 " not in only and "pos 17" in only


def test_token_colours_centred():
    (bg0, _), (bgp, _), (bgn, _) = plot.token_colours([0.0, 1.0, -1.0], vmax=1.0)
    r, g, b = (int(bg0[i:i + 2], 16) for i in (1, 3, 5))
    assert min(r, g, b) > 230  # white-ish at zero
    assert int(bgp[1:3], 16) > int(bgp[5:7], 16) and int(bgn[5:7], 16) > int(bgn[1:3], 16)


# ----------------------------------------------------------------- similarity, matrices, sweeps
def test_similarity_plot_both_backends():
    fig = plot.similarity_plot([0, 1, 2], [0.1, 0.5, -0.2], null_low=[-0.1] * 3,
                               null_high=[0.1] * 3, extra={"other": [0, 0, 0.3]})
    band, main, other = fig.data
    assert band.fill == "toself" and list(band.y) == [0.1, 0.1, 0.1, -0.1, -0.1, -0.1]
    assert list(main.y) == [0.1, 0.5, -0.2] and other.name == "other" and list(other.y)[2] == 0.3
    fig = plot.similarity_plot([0, 1, 2], [0.1, 0.5, -0.2], null_low=[-0.1] * 3,
                               null_high=[0.1] * 3, backend="matplotlib")
    ax = fig.axes[0]
    assert list(ax.lines[0].get_ydata()) == [0.1, 0.5, -0.2]
    assert ax.collections and ax.get_ylabel() == "cosine similarity"
    with pytest.raises(ValueError, match="3 values for 2 layers"):
        plot.similarity_plot([0, 1], [0.1, 0.2, 0.3])


def test_analysis_adapters():
    from clas_lens import analysis as an

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    cos = an.cosine_per_layer(a, b, layers=[1, 3, 5, 7], labels=("w", "v"), n_null=200)
    fig = plot.cosine_plot(cos)
    assert fig.data[0].fill == "toself" and list(fig.data[1].x) == [1, 3, 5, 7]
    np.testing.assert_allclose(fig.data[1].y, cos.cos.numpy(), rtol=1e-6)
    two = plot.cosine_plot([cos, cos], backend="matplotlib")
    assert len(two.axes[0].lines) == 3  # two curves and the zero line
    sm = an.layer_similarity_matrix(a, n_null=200)
    h = heat(plot.similarity_matrix_plot(sm))
    np.testing.assert_allclose(np.asarray(h.z), sm.matrix.numpy(), rtol=1e-6)
    assert h.zmid == 0
    im = plot.similarity_matrix_plot(sm, backend="matplotlib").axes[0].images[0]
    assert im.norm.vmax == pytest.approx(float(sm.matrix.abs().max()), rel=1e-6)
    d = {n: Directions(torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1),
                       torch.rand(4, generator=g), [1, 3, 5, 7], n, "m", 8, 16, "c")
         for n in ("x", "y", "z")}
    ms = an.method_similarity(d, n_null=200)
    fig = plot.method_similarity_plot(ms)
    assert [t.name for t in fig.data[1:]] == ["x vs y", "x vs z", "y vs z"]
    np.testing.assert_allclose(fig.data[3].y, ms.cos[1, 2].numpy(), rtol=1e-6)
    assert len(plot.method_similarity_plot(ms, backend="matplotlib").axes[0].lines) == 4
    acc = plot.probe_accuracy(d)
    assert [t.name for t in acc.data] == ["x", "y", "z"]
    np.testing.assert_allclose(acc.data[1].y, d["y"].accuracy.numpy(), rtol=1e-6)
    mpl = plot.probe_accuracy(list(d.values()), backend="matplotlib").axes[0]
    np.testing.assert_allclose(mpl.lines[0].get_ydata(), d["x"].accuracy.numpy(), rtol=1e-6)


def test_matrix_and_sweeps():
    from clas_lens.analysis import SweepResult

    m = np.array([[1.0, -0.5], [0.2, 0.3]])
    h = heat(plot.matrix_heatmap(m, [0, 1], [0, 1]))
    assert h.zmid == 0 and h.zmax == 1.0 and h.zmin == -1.0
    assert heat(plot.matrix_heatmap(m, symmetric=False)).zmid is None
    ax = plot.matrix_heatmap(m, backend="matplotlib", fmt=".1f").axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["-0.5", "0.2", "0.3", "1.0"]
    nll = torch.tensor([[3.0, 2.5, 4.0], [3.2, 2.9, 3.1]])
    sw = SweepResult([4, 8], nll, 3.1, [-1.0, 1.0, 2.0], "las")
    h = heat(plot.sweep_plot(sw))
    np.testing.assert_allclose(np.asarray(h.z), (nll - 3.1).numpy().T, atol=1e-6)
    assert h.zmid == 0 and list(h.x) == ["4", "8"] and list(h.y) == ["-1", "1", "2"]
    ax = plot.sweep_plot(sw, backend="matplotlib").axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), (nll - 3.1).numpy().T, atol=1e-6)
    assert ax.patches[0].get_xy() == (-0.5, 0.5)  # box on the lowest: layer 4, c = 1
    assert heat(plot.sweep_plot(sw, relative=False)).zmid is None
    one = SweepResult([4, 8, 12], torch.tensor([3.0, 2.0, 2.5]), 3.1, None, "clas_cumulative")
    fig = plot.sweep_plot(one)
    assert list(fig.data[0].y) == [3.0, 2.0, 2.5]
    assert fig.layout.xaxis.title.text == "number of steered layers k"
    assert plot.sweep_plot(one, backend="matplotlib").axes[0].get_xlabel() == \
        "number of steered layers k"
    curves = plot.sweep_curves([4, 8], nll, coefficients=[-1, 1, 2])
    assert [t.name for t in curves.data] == ["c = -1", "c = 1", "c = 2"]
    assert list(curves.data[2].y) == pytest.approx([4.0, 3.1])
    ax = plot.sweep_curves([4, 8], nll, labels=["a", "b", "c"], backend="matplotlib").axes[0]
    assert [line.get_label() for line in ax.lines] == ["a", "b", "c"]


# ----------------------------------------------------------------- attribution
def test_attribution_plots():
    from clas_lens.analysis import Attribution

    contrib = {"embed": 0.1, "L0.H0": -0.4, "L0.mlp": 0.05, "L1.H2": 0.9, "L1.steer": 0.2}
    attr = Attribution(2, 5, " sun", 1.0, 0.15, contrib, 1e-7, [])
    fig = plot.attribution_plot(attr, top=3)
    bar = fig.data[0]
    assert list(bar.y) == ["L1.H2", "L0.H0", "L1.steer"]  # sorted by |value|
    assert list(bar.x) == [0.9, -0.4, 0.2]
    assert bar.marker.color[1] != bar.marker.color[0]      # negative in another colour
    assert "+1" in fig.layout.title.text and "·sun" in fig.layout.title.text
    g = plot.attribution_plot(attr, grouped=True).data[0]
    assert set(g.y) == {"embed", "attn", "mlp", "steer", "bias b"}
    ax = plot.attribution_plot(attr, top=3, backend="matplotlib").axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["L1.H2", "L0.H0", "L1.steer"]
    assert [p.get_width() for p in ax.patches] == pytest.approx([0.9, -0.4, 0.2])
    attrs = [attr, Attribution(3, 5, " sun", 2.0, 0.1, contrib, 0.0, [])]
    fig = plot.attribution_layers_plot(attrs)
    assert [t.name for t in fig.data] == ["embed", "attn", "mlp", "steer", "bias", "alpha"]
    assert list(fig.data[-1].y) == [1.0, 2.0] and fig.layout.barmode == "relative"
    ax = plot.attribution_layers_plot(attrs, backend="matplotlib").axes[0]
    assert list(ax.lines[0].get_ydata()) == [1.0, 2.0]
    with pytest.raises(ValueError, match="1 names for 2 values"):
        plot.attribution_bars(["a"], [1.0, 2.0])


# ----------------------------------------------------------------- training, dose-response, profile
def test_training_curves():
    h = TrainHistory(
        steps=[{"step": k + 1, "epoch": k // 2 + 1, "train_loss": 3 - 0.1 * k, "seconds": k,
                "norm_W": 0.1 * k, "norm_b": 0.2 * k} for k in range(6)],
        valid=[{"epoch": e, "valid_loss": 3.5 - 0.2 * e} for e in range(4)], best_epoch=3)
    fig = plot.training_curves(h)
    assert [t.name for t in fig.data] == ["train", "valid", "|W|", "|b|"]
    assert list(fig.data[0].x) == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert list(fig.data[1].y) == pytest.approx([3.5, 3.3, 3.1, 2.9])
    fig = plot.training_curves(h, backend="matplotlib")
    loss, norms = fig.axes
    assert list(loss.lines[1].get_ydata()) == pytest.approx([3.5, 3.3, 3.1, 2.9])
    assert [line.get_label() for line in norms.lines] == ["|W|", "|b|"]
    assert len(plot.training_curves(TrainHistory(), backend="matplotlib").axes[0].lines) == 1


def test_dose_response_and_profile():
    d = {"scales": [0, 1, 2], "nll": [3.0, 2.5, 2.8], "behaviour": [0.0, 1.0, 3.0]}
    fig = plot.dose_response_plot(d)
    assert [list(t.y) for t in fig.data] == [[3.0, 2.5, 2.8], [0.0, 1.0, 3.0]]
    assert fig.data[1].yaxis == "y2"
    fig = plot.dose_response_plot(d, backend="matplotlib")
    assert list(fig.axes[0].lines[0].get_ydata()) == [3.0, 2.5, 2.8]
    assert list(fig.axes[1].lines[0].get_ydata()) == [0.0, 1.0, 3.0]
    two = plot.dose_response_curve([0, 1], [[1.0, 2.0], [3.0, 4.0]], labels=["a", "b"])
    assert [(t.name, list(t.y)) for t in two.data] == [("a", [1.0, 3.0]), ("b", [2.0, 4.0])]
    bars = plot.layer_profile_plot([1, 2], torch.tensor([0.5, -0.1]), backend="matplotlib").axes[0]
    assert [p.get_height() for p in bars.patches] == pytest.approx([0.5, -0.1])
    assert bars.patches[0].get_facecolor() != bars.patches[1].get_facecolor()  # sign colours
    assert list(plot.layer_profile_plot([1, 2], [0.5, 0.1]).data[0].x) == ["1", "2"]


# ----------------------------------------------------------------- deprecated names
OLD_CALLS = {
    "strength_heatmap_mpl": lambda f: f(fake_result(), 0),
    "prompts_heatmap_mpl": lambda f: f(fake_result(), 2),
    "layer_profile_plot_mpl": lambda f: f([1, 2], [0.5, 0.1]),
    "similarity_plot_mpl": lambda f: f([0, 1], [0.1, 0.2]),
    "matrix_heatmap_mpl": lambda f: f(np.eye(2)),
    "sweep_curves_mpl": lambda f: f([4, 8], [1.0, 2.0]),
    "sweep_heatmap_mpl": lambda f: f([4, 8], [1.0], [[1.0], [2.0]]),
    "attribution_bars_mpl": lambda f: f(["a", "b"], [1.0, -1.0]),
    "training_curves_mpl": lambda f: f(TrainHistory()),
    "dose_response_mpl": lambda f: f([0, 1], [1.0, 2.0]),
}


@pytest.mark.parametrize("old", sorted(OLD_CALLS))
def test_deprecated_mpl_names_warn_and_draw(old):
    new = "dose_response_curve" if old == "dose_response_mpl" else old[: -len("_mpl")]
    with pytest.warns(DeprecationWarning, match=rf"plot\.{old} is deprecated; use plot\.{new}\("
                                                r"\.\.\., backend='matplotlib'\)"):
        fig = OLD_CALLS[old](getattr(plot, old))
    assert isinstance(fig, Figure)


def test_deprecated_names_cover_every_twin():
    for old in plot.DEPRECATED:
        if old.endswith("_mpl") and old != "dose_response_mpl":
            assert getattr(plot, old).__wrapped__ is getattr(plot, old[: -len("_mpl")]), old
    with pytest.warns(DeprecationWarning, match=r"use plot\.dose_response_curve\(\.\.\.\)"):
        fig = plot.dose_response([0, 1], [1.0, 2.0])
    assert isinstance(fig, go.Figure) and list(fig.data[0].y) == [1.0, 2.0]
    with pytest.warns(DeprecationWarning, match="token strings come readable"):
        assert plot.clean_token(" x") == " x"
    assert set(plot.VIEWS) | set(plot.DEPRECATED) <= set(plot.__all__)


# ----------------------------------------------------------------- token strings from the tokenizer
def test_str_tokens_come_from_the_tokenizer(tiny):
    from clas_lens.tracing import trace

    res = trace(tiny, None, ["Hello there"], ["I love cats"], system="Be nice")
    toks, ids = res.str_tokens[0], res.token_ids[0]
    assert "".join(toks) == tiny.tokenizer.decode(ids, skip_special_tokens=False)
    assert not any("Ġ" in t or "Ċ" in t for t in toks)
    user_turn = [k for k, i in enumerate(ids) if i == tiny.tokenizer.bos_token_id][1]
    assert plot.special_positions(toks).nonzero()[0].tolist() == list(range(user_turn))


# ----------------------------------------------------------------- make_figures on the embedded model
@pytest.mark.embedded
def test_make_figures_quick(smol, tmp_path):
    from clas_lens.figures import FIGURES, make_figures

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # much faster on small shared CPUs
    try:
        written = make_figures(tmp_path / "figs", quick=True, model=smol, verbose=False)
    finally:
        torch.set_num_threads(threads)
    for name in FIGURES:
        assert name in written, name
        p = tmp_path / "figs" / name
        assert p.stat().st_size > 1000, name
        if name.endswith(".png"):
            assert p.read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "figs" / "figures.json").exists()
