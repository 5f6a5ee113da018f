"""Figures from synthetic traces (fast), and make_figures(quick=True) on the embedded model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clas_lens import plot
from clas_lens.directions import Directions
from clas_lens.tracing import GenerationResult
from clas_lens.training import TrainHistory

go = pytest.importorskip("plotly.graph_objects")
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_result(rank: int | None = None, seed: int = 0) -> GenerationResult:
    """Two examples (10 and 6 real tokens, prompts of 6 and 4), 3 steered layers [2, 5, 7]."""
    g = torch.Generator().manual_seed(seed)
    toks = [["<|im_start|>", "user", "Ċ", "Tell", "Ġme", "<b>", "The", "Ġsun", "Ġis", "!"],
            ["<|im_start|>", "user", "Ċ", "Hi", "ĠHello", "Ġthere"]]
    B, P, L = 2, 10, 3
    shape = (B, P, L) if rank is None else (B, P, L, rank)
    s = torch.randn(*shape, generator=g) * 2 + 0.5
    mask = torch.zeros(B, P, dtype=torch.bool)
    mask[0, :10] = True
    mask[1, :6] = True
    s[~mask] = 0
    return GenerationResult(["Tell me", "Hi"], ["The sun is!", "Hello there"],
                            [list(range(10)), list(range(6))], [6, 4], toks, s, s.clone() * 0.1,
                            mask, [2, 5, 7], "clas")


def heat(fig):
    return [t for t in fig.data if isinstance(t, go.Heatmap)][0]


# ----------------------------------------------------------------- tokens
def test_clean_token_and_label():
    assert plot.clean_token("Ġhello") == " hello"
    assert plot.clean_token("Ċ") == "\n"
    assert plot.clean_token("<|im_start|>") == "<|im_start|>"
    assert plot.clean_token("▁bonjour") == " bonjour"
    assert plot.token_label("Ġhello") == "·hello"
    assert plot.token_label("Ċ") == "↵"
    assert plot.clean_token("Ã©") == "é"


# ----------------------------------------------------------------- strength heatmap (plotly)
def test_strength_heatmap_plotly():
    r = fake_result()
    fig = plot.strength_heatmap(r, 0)
    assert isinstance(fig, go.Figure)
    h = heat(fig)
    z = np.asarray(h.z)
    assert z.shape == (3, 10)  # layers x real tokens
    np.testing.assert_allclose(z, r.strengths[0, :10].numpy().T, rtol=1e-6)
    # hover carries the token, position, layer and value
    flat = [t for row in h.customdata for t in row]
    assert "·me" in flat and "&lt;b&gt;" in flat and "↵" in flat
    for key in ("token", "position", "layer", "value"):
        assert key in h.hovertemplate
    # diverging scale centred at zero, symmetric limits
    assert h.zmid == 0 and h.zmin == pytest.approx(-h.zmax)
    assert h.zmax == pytest.approx(plot.token_range(z), rel=1e-6)
    assert 0 < h.zmax <= float(r.strengths[0, :10].abs().max())
    # a line between the prompt (6 tokens) and the answer
    xs = [s.x0 for s in fig.layout.shapes]
    assert 5.5 in xs


def test_strength_heatmap_subset_and_errors():
    r = fake_result()
    fig = plot.strength_heatmap(r, 1, layers=[7, 2], title="t")
    h = heat(fig)
    assert np.asarray(h.z).shape == (2, 6)
    assert list(h.y) == ["7", "2"]
    assert fig.layout.title.text == "t"
    np.testing.assert_allclose(np.asarray(h.z)[0], r.strengths[1, :6, 2].numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="not steered"):
        plot.strength_heatmap(r, 0, layers=[3])
    with pytest.raises(IndexError):
        plot.strength_heatmap(r, 5)
    r.strengths = None
    with pytest.raises(ValueError, match="no strengths"):
        plot.strength_heatmap(r, 0)


def test_strength_heatmap_projections_and_rank():
    r = fake_result(rank=2)
    z = np.asarray(heat(plot.strength_heatmap(r, 0)).z)
    np.testing.assert_allclose(z, r.strengths[0, :10].sum(-1).numpy().T, rtol=1e-6)
    zp = np.asarray(heat(plot.strength_heatmap(r, 0, which="projections")).z)
    np.testing.assert_allclose(zp, r.projections[0, :10].sum(-1).numpy().T, rtol=1e-5)


def test_token_range_is_robust():
    z = np.ones((3, 50))
    z[:, 0] = -300.0   # first-token outlier
    z[1, 7] = 40.0     # one extreme cell
    assert plot.token_range(z) == pytest.approx(1.0)
    assert plot.token_range(z, quantile=None) == pytest.approx(40.0)
    assert plot.token_range(z, skip_first=False, quantile=None) == pytest.approx(300.0)
    assert plot.token_range(np.zeros((2, 1))) > 0
    r = fake_result()
    r.strengths[0, 0] = -1000.0
    h = heat(plot.strength_heatmap(r, 0))
    assert h.zmax < 100 and np.asarray(h.z).min() == -1000.0   # hover keeps the true value
    assert h.zmin == -h.zmax
    assert plot.strength_heatmap(r, 0, vmax=5.0).data[0].zmax == 5.0


def test_strength_heatmap_all_zero_is_finite():
    r = fake_result()
    r.strengths = torch.zeros_like(r.strengths)
    h = heat(plot.strength_heatmap(r, 0))
    assert math.isfinite(h.zmax) and h.zmax > 0 and h.zmin == -h.zmax


# ----------------------------------------------------------------- strength heatmap (mpl)
def test_strength_heatmap_mpl(tmp_path):
    r = fake_result()
    fig = plot.strength_heatmap_mpl(r, 0)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    im = ax.images[0]
    assert isinstance(im.norm, TwoSlopeNorm)
    assert im.norm.vcenter == 0 and im.norm.vmin == pytest.approx(-im.norm.vmax)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[:5] == ["<|im_start|>", "user", "↵", "Tell", "·me"]
    assert any(abs(line.get_xdata()[0] - 5.5) < 1e-9 for line in ax.get_lines())
    path = plot.save_png(fig, tmp_path / "sub" / "h.png")
    assert open(path, "rb").read(8) == PNG_MAGIC


def test_strength_heatmap_mpl_long_sequence():
    r = fake_result()
    n = 120
    r.str_tokens[0] = [f"Ġt{i}" for i in range(n)]
    r.strengths = torch.randn(2, n, 3)
    r.mask = torch.zeros(2, n, dtype=torch.bool)
    r.mask[0] = True
    r.mask[1, :6] = True
    fig = plot.strength_heatmap_mpl(r, 0)
    assert len(fig.axes[0].get_xticklabels()) == n
    assert fig.get_size_inches()[0] > 15


# ----------------------------------------------------------------- prompts x tokens
def test_prompts_heatmap():
    r = fake_result()
    fig = plot.prompts_heatmap(r, 5)
    h = heat(fig)
    z = np.asarray(h.z, dtype=float)
    assert z.shape == (2, 10)
    assert np.isnan(z[1, 6:]).all() and np.isfinite(z[1, :6]).all()
    np.testing.assert_allclose(z[0], r.strengths[0, :, 1].numpy(), rtol=1e-6)
    assert h.zmid == 0 and h.zmin == pytest.approx(-h.zmax)
    assert "·Hello" in [c[0] for c in h.customdata[1]]
    gen = heat(plot.prompts_heatmap(r, None, generated_only=True))
    zg = np.asarray(gen.z, dtype=float)
    assert zg.shape == (2, 4)  # answers of 4 and 2 tokens
    np.testing.assert_allclose(zg[1, :2], r.strengths[1, 4:6].mean(-1).numpy(), rtol=1e-6)
    fig = plot.prompts_heatmap_mpl(r, 2)
    assert isinstance(fig.axes[0].images[0].norm, TwoSlopeNorm)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "·sun" in texts


# ----------------------------------------------------------------- coloured tokens
def test_token_html():
    r = fake_result()
    r.strengths[0, :, :] = 0.0
    r.strengths[0, 7, :] = 3.0   # "Ġsun": strongly positive
    r.strengths[0, 8, :] = -3.0  # "Ġis": strongly negative
    html = plot.token_html(r, 0)
    assert "&lt;b&gt;" in html and "<b>" not in html
    assert "pos 7" in html and "+3" in html
    spans = [s for s in html.split("<span") if "pos 7" in s or "pos 8" in s]
    red = spans[0].split("background:")[1][:7]
    blue = spans[1].split("background:")[1][:7]
    assert int(red[1:3], 16) > int(red[5:7], 16)   # red channel > blue channel
    assert int(blue[5:7], 16) > int(blue[1:3], 16)
    assert "start of the answer" in html
    only = plot.token_html(r, 0, 5, show_prompt=False)
    assert "pos 0 " not in only and "pos 6" in only


def test_token_colours_centred():
    (bg0, _), (bgp, _), (bgn, _) = plot.token_colours([0.0, 1.0, -1.0], vmax=1.0)
    r, g, b = (int(bg0[i:i + 2], 16) for i in (1, 3, 5))
    assert min(r, g, b) > 230  # white-ish at zero
    assert bgp != bgn


# ----------------------------------------------------------------- similarity, matrices, sweeps
def test_similarity_plot_null_band():
    fig = plot.similarity_plot([0, 1, 2], [0.1, 0.5, -0.2], null_low=[-0.1] * 3,
                               null_high=[0.1] * 3, extra={"other": [0, 0, 0]})
    assert fig.data[0].fill == "toself" and len(fig.data) == 3
    fig = plot.similarity_plot_mpl([0, 1, 2], [0.1, 0.5, -0.2], null_low=[-0.1] * 3,
                                   null_high=[0.1] * 3)
    assert isinstance(fig, Figure) and fig.axes[0].collections  # the band
    with pytest.raises(ValueError):
        plot.similarity_plot([0, 1], [0.1, 0.2, 0.3])


def test_analysis_adapters():
    from clas_lens import analysis as an

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    cos = an.cosine_per_layer(a, b, layers=[1, 3, 5, 7], labels=("w", "v"), n_null=200)
    fig = plot.cosine_plot(cos)
    assert fig.data[0].fill == "toself"
    assert list(fig.data[1].x) == [1, 3, 5, 7]
    assert isinstance(plot.cosine_plot_mpl([cos, cos]), Figure)
    sm = an.layer_similarity_matrix(a, n_null=200)
    h = heat(plot.similarity_matrix_plot(sm))
    assert h.zmid == 0 and np.asarray(h.z).shape == (4, 4)
    assert isinstance(plot.similarity_matrix_plot_mpl(sm).axes[0].images[0].norm, TwoSlopeNorm)
    d = {n: Directions(torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1),
                       torch.rand(4, generator=g), [1, 3, 5, 7], n, "m", 8, 16, "c")
         for n in ("x", "y", "z")}
    ms = an.method_similarity(d, n_null=200)
    assert len(plot.method_similarity_plot(ms).data) == 1 + 3
    assert isinstance(plot.method_similarity_plot_mpl(ms), Figure)
    assert len(plot.probe_accuracy(d).data) == 3
    assert isinstance(plot.probe_accuracy_mpl(list(d.values())), Figure)


def test_matrix_and_sweeps():
    from clas_lens.analysis import SweepResult

    m = np.array([[1.0, -0.5], [0.2, 0.3]])
    h = heat(plot.matrix_heatmap(m, [0, 1], [0, 1]))
    assert h.zmid == 0 and h.zmax == 1.0 and h.zmin == -1.0
    assert heat(plot.matrix_heatmap(m, symmetric=False)).zmid is None
    nll = torch.tensor([[3.0, 2.5, 4.0], [3.2, 2.9, 3.1]])
    sw = SweepResult([4, 8], nll, 3.1, [-1.0, 1.0, 2.0], "las")
    h = heat(plot.sweep_plot(sw))
    np.testing.assert_allclose(np.asarray(h.z), (nll - 3.1).numpy().T, atol=1e-6)
    assert h.zmid == 0
    assert isinstance(plot.sweep_plot_mpl(sw), Figure)
    assert heat(plot.sweep_plot(sw, relative=False)).zmid is None
    one = SweepResult([4, 8, 12], torch.tensor([3.0, 2.0, 2.5]), 3.1, None, "clas")
    fig = plot.sweep_plot(one)
    assert list(fig.data[0].y) == [3.0, 2.0, 2.5]
    assert isinstance(plot.sweep_plot_mpl(one), Figure)
    assert len(plot.sweep_curves([4, 8], nll, coefficients=[-1, 1, 2]).data) == 3
    assert isinstance(plot.sweep_curves_mpl([4, 8], nll, coefficients=[-1, 1, 2]), Figure)


# ----------------------------------------------------------------- attribution
def test_attribution_plots():
    from clas_lens.analysis import Attribution

    contrib = {"embed": 0.1, "L0.H0": -0.4, "L0.mlp": 0.05, "L1.H2": 0.9, "L1.steer": 0.2}
    attr = Attribution(2, 5, "Ġsun", 1.0, 0.15, contrib, 1e-7, [])
    fig = plot.attribution_plot(attr, top=3)
    bar = fig.data[0]
    assert list(bar.y) == ["L1.H2", "L0.H0", "L1.steer"]  # sorted by |value|
    assert bar.marker.color[1] != bar.marker.color[0]      # negative in another colour
    assert "+1" in fig.layout.title.text and "·sun" in fig.layout.title.text
    g = plot.attribution_plot(attr, grouped=True).data[0]
    assert set(g.y) == {"embed", "attn", "mlp", "steer", "bias b"}
    assert isinstance(plot.attribution_plot_mpl(attr), Figure)
    attrs = [attr, Attribution(3, 5, "Ġsun", 2.0, 0.1, contrib, 0.0, [])]
    fig = plot.attribution_layers_plot(attrs)
    assert len(fig.data) == 6 and fig.layout.barmode == "relative"
    assert isinstance(plot.attribution_layers_plot_mpl(attrs), Figure)
    with pytest.raises(ValueError):
        plot.attribution_bars(["a"], [1.0, 2.0])


# ----------------------------------------------------------------- training, dose-response
def test_training_curves():
    h = TrainHistory(
        steps=[{"step": k + 1, "epoch": k // 2 + 1, "train_loss": 3 - 0.1 * k, "seconds": k,
                "norm_W": 0.1 * k, "norm_b": 0.2 * k} for k in range(6)],
        valid=[{"epoch": e, "valid_loss": 3.5 - 0.2 * e} for e in range(4)], best_epoch=3)
    fig = plot.training_curves(h)
    names = [t.name for t in fig.data]
    assert names == ["train", "valid", "|W|", "|b|"]
    assert list(fig.data[0].x) == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    fig = plot.training_curves_mpl(h)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert isinstance(plot.training_curves_mpl(TrainHistory()), Figure)  # empty history


def test_dose_response_and_profile():
    d = {"scales": [0, 1, 2], "nll": [3.0, 2.5, 2.8], "behaviour": [0.0, 1.0, 3.0]}
    fig = plot.dose_response_plot(d)
    assert len(fig.data) == 2
    assert isinstance(plot.dose_response_plot_mpl(d), Figure)
    assert isinstance(plot.layer_profile_plot_mpl([1, 2], torch.tensor([0.5, -0.1])), Figure)
    assert len(plot.layer_profile_plot([1, 2], [0.5, 0.1]).data) == 1


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
