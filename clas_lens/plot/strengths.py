"""Heatmaps of steering strengths: tokens x layers, prompts x tokens, and per layer.

``strength_heatmap`` shows one example's strengths (or projections) over its tokens
and the steered layers, ``prompts_heatmap`` every example's tokens at one layer
(``prompts_matrix`` gives the numbers), and ``layer_profile_plot`` a per-layer
profile such as ``analysis.layer_profile``. The colour scale is centred at zero
and its limit is robust (:func:`~clas_lens.plot.tokens.token_range`).

Example:
    >>> res = generate(model, steerer, prompts)          # doctest: +SKIP
    >>> strength_heatmap(res, 0).show()                  # doctest: +SKIP
    >>> strength_heatmap_mpl(res, 0).savefig("s.png")    # doctest: +SKIP
"""

from __future__ import annotations

import html as _html
import math
from collections.abc import Sequence

import numpy as np

from clas_lens.plot._common import (
    DIVERGING,
    DIVERGING_MPL,
    _fig_ax,
    _go,
    _np,
    _series,
    _two_slope,
)
from clas_lens.plot.tokens import (
    _layer_columns,
    _values_of,
    example_matrix,
    token_label,
    token_range,
)


# --------------------------------------------------------------------------- strength heatmaps
def strength_heatmap(result, index: int = 0, *, layers: Sequence[int] | None = None,
                     title: str | None = None, which: str = "strengths",
                     vmax: float | None = None):
    """Tokens x layers heatmap of one example's steering strengths (plotly).

    Args:
        result: a :class:`~clas_lens.tracing.GenerationResult`.
        index: which example.
        layers: subset of the steered layers (default: all).
        title: figure title (default: the prompt).
        which: ``"strengths"`` (alpha) or ``"projections"`` (h.v).
        vmax: colour limit (default :func:`token_range`: robust, first token left out).

    Hover shows token, position, layer and value; a dashed line separates the
    prompt from the generated tokens; the colour scale is centred at zero.
    """
    go = _go()
    ex = example_matrix(result, index, layers=layers, which=which)
    z = ex["values"].T  # [layer, pos]
    n = z.shape[1]
    vmax = token_range(z) if vmax is None else float(vmax)
    pos = list(range(n))
    tok_grid = [[_html.escape(lbl) for lbl in ex["labels"]] for _ in ex["layers"]]
    fig = go.Figure(go.Heatmap(
        z=z, x=pos, y=[str(L) for L in ex["layers"]], customdata=tok_grid,
        colorscale=DIVERGING, zmid=0.0, zmin=-vmax, zmax=vmax,
        colorbar={"title": "alpha" if which == "strengths" else "h·v"},
        hovertemplate="token %{customdata}<br>position %{x}<br>layer %{y}<br>"
                      "value %{z:.4g}<extra></extra>",
    ))
    p = ex["prompt_length"]
    if 0 < p < n:
        fig.add_vline(x=p - 0.5, line_dash="dash", line_color="black", line_width=2,
                      annotation_text="generated →", annotation_position="top right")
    step = max(1, math.ceil(n / 120))
    fig.update_xaxes(tickmode="array", tickvals=pos[::step],
                     ticktext=[_html.escape(lbl) for lbl in ex["labels"][::step]],
                     tickangle=-90, title="token")
    fig.update_yaxes(title="layer", type="category")
    prompt = result.prompts[index] if getattr(result, "prompts", None) else ""
    fig.update_layout(title=title if title is not None else f"{which} — {prompt[:80]}",
                      width=max(600, min(2400, 14 * n + 200)),
                      height=max(300, 22 * len(ex["layers"]) + 220),
                      margin={"b": 120})
    return fig


def strength_heatmap_mpl(result, index: int = 0, *, layers: Sequence[int] | None = None,
                         title: str | None = None, which: str = "strengths",
                         vmax: float | None = None, ax=None):
    """Static tokens x layers heatmap of one example (matplotlib; readable for ~100 tokens).

    Token labels on the x axis, layers on the y axis, a ``TwoSlopeNorm`` centred at
    zero, and a vertical dashed line between prompt and generated tokens.
    """
    ex = example_matrix(result, index, layers=layers, which=which)
    z = ex["values"].T
    n_layers, n = z.shape
    fig, ax = _fig_ax(ax, (min(40.0, max(6.0, 0.16 * n + 2.5)), max(2.8, 0.26 * n_layers + 2.2)))
    vmax = token_range(z) if vmax is None else float(vmax)
    im = ax.imshow(z, aspect="auto", cmap=DIVERGING_MPL, norm=_two_slope(vmax),
                   interpolation="nearest", origin="lower")
    extend = "both" if np.nanmax(np.abs(z)) > vmax * (1 + 1e-9) else "neither"
    ax.set_xticks(range(n))
    ax.set_xticklabels(ex["labels"], rotation=90, fontsize=7 if n > 60 else 8,
                       fontfamily="monospace")
    ystep = max(1, math.ceil(n_layers / 16))
    ax.set_yticks(range(0, n_layers, ystep))
    ax.set_yticklabels([str(L) for L in ex["layers"][::ystep]])
    ax.set_ylabel("layer")
    p = ex["prompt_length"]
    if 0 < p < n:
        ax.axvline(p - 0.5, color="black", lw=1.5, ls="--")
        ax.text(p - 0.5, 0.98, " generated →", va="top", ha="left", fontsize=8,
                transform=ax.get_xaxis_transform(),
                bbox={"facecolor": "white", "alpha": 0.7, "lw": 0, "pad": 1})
    fig.colorbar(im, ax=ax, label="alpha" if which == "strengths" else "h·v", pad=0.01,
                 extend=extend)
    prompt = result.prompts[index] if getattr(result, "prompts", None) else ""
    ax.set_title(title if title is not None else f"{which}: {prompt[:90]}", fontsize=10)
    return fig


# --------------------------------------------------------------------------- prompts x tokens
def _layer_slice(result, layer: int | None, which: str = "strengths") -> tuple[np.ndarray, str]:
    """``[batch, pos]`` values at one steered layer (``None``: mean over the steered layers)."""
    v = _values_of(result, which)
    if layer is None:
        return v.mean(axis=2), "mean over layers"
    _, cols = _layer_columns(result, [layer])
    return v[:, :, cols[0]], f"layer {layer}"


def prompts_matrix(result, layer: int | None = None, *, which: str = "strengths",
                   generated_only: bool = False, max_tokens: int | None = None) -> dict:
    """``[example, token]`` values at one layer, NaN past each example's tokens.

    With ``generated_only`` the columns are the continuation tokens (column 0 = first
    generated token); otherwise position 0 is each example's first prompt token.
    """
    v, where = _layer_slice(result, layer, which)
    mask = _np(result.mask).astype(bool)
    rows, toks = [], []
    for i in range(v.shape[0]):
        n = int(mask[i].sum())
        start = int(result.prompt_lengths[i]) if generated_only else 0
        rows.append(v[i, start:n])
        toks.append([token_label(t) for t in result.str_tokens[i][start:n]])
    width = max((len(r) for r in rows), default=0)
    if max_tokens is not None:
        width = min(width, max_tokens)
    z = np.full((len(rows), width), np.nan)
    tk = [[""] * width for _ in rows]
    for i, r in enumerate(rows):
        k = min(len(r), width)
        z[i, :k] = r[:k]
        tk[i][:k] = toks[i][:k]
    plens = [0 if generated_only else int(p) for p in result.prompt_lengths]
    return {"values": z, "tokens": tk, "where": where, "prompt_lengths": plens,
            "prompts": list(getattr(result, "prompts", [""] * len(rows)))}


def _short(s: str, n: int = 40) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def prompts_heatmap(result, layer: int | None = None, *, which: str = "strengths",
                    generated_only: bool = False, max_tokens: int | None = None,
                    title: str | None = None, vmax: float | None = None):
    """Prompts x tokens heatmap at one steered layer (plotly; ``layer=None`` = layer mean).

    Hover shows the prompt, token, position and value; white cells are past an example's end.
    """
    go = _go()
    m = prompts_matrix(result, layer, which=which, generated_only=generated_only,
                       max_tokens=max_tokens)
    z = m["values"]
    vmax = token_range(z, skip_first=not generated_only) if vmax is None else float(vmax)
    custom = [[[_html.escape(t), _html.escape(_short(m["prompts"][i], 60))] for t in row]
              for i, row in enumerate(m["tokens"])]
    ylabels = [f"{i}: {_short(p, 30)}" for i, p in enumerate(m["prompts"])]
    fig = go.Figure(go.Heatmap(
        z=z, y=ylabels, customdata=custom, colorscale=DIVERGING, zmid=0.0, zmin=-vmax,
        zmax=vmax, hoverongaps=False, colorbar={"title": "alpha" if which == "strengths" else "h·v"},
        hovertemplate="%{customdata[1]}<br>token %{customdata[0]}<br>position %{x}"
                      "<br>value %{z:.4g}<extra></extra>"))
    if not generated_only:
        for i, p in enumerate(m["prompt_lengths"]):
            fig.add_shape(type="line", x0=p - 0.5, x1=p - 0.5, y0=i - 0.5, y1=i + 0.5,
                          line={"color": "black", "width": 2})
    fig.update_yaxes(autorange="reversed", title="prompt")
    fig.update_xaxes(title="generated token" if generated_only else "position")
    fig.update_layout(
        title=title if title is not None else f"{which} per token ({m['where']})",
        height=max(300, 26 * z.shape[0] + 200), width=max(600, min(2000, 9 * z.shape[1] + 400)))
    return fig


def prompts_heatmap_mpl(result, layer: int | None = None, *, which: str = "strengths",
                        generated_only: bool = False, max_tokens: int | None = None,
                        title: str | None = None, annotate: bool | None = None,
                        vmax: float | None = None, ax=None):
    """Static prompts x tokens heatmap (matplotlib); ``annotate`` writes tokens in the cells
    (default: when the grid is small enough to read)."""
    m = prompts_matrix(result, layer, which=which, generated_only=generated_only,
                       max_tokens=max_tokens)
    z = m["values"]
    n_rows, n = z.shape
    if annotate is None:
        annotate = n <= 70 and n_rows <= 16
    w = min(40.0, max(7.0, (0.22 if annotate else 0.1) * n + 4.5))
    fig, ax = _fig_ax(ax, (w, max(2.5, (0.5 if annotate else 0.32) * n_rows + 1.6)))
    import matplotlib as mpl

    cmap = mpl.colormaps[DIVERGING_MPL].with_extremes(bad="#eeeeee")
    vmax = token_range(z, skip_first=not generated_only) if vmax is None else float(vmax)
    extend = "both" if np.nanmax(np.abs(z), initial=0) > vmax * (1 + 1e-9) else "neither"
    im = ax.imshow(np.ma.masked_invalid(z), aspect="auto", cmap=cmap, norm=_two_slope(vmax),
                   interpolation="nearest")
    if annotate:
        for i in range(n_rows):
            for j in range(n):
                t = m["tokens"][i][j]
                if t and np.isfinite(z[i, j]):
                    dark = abs(z[i, j]) > 0.6 * vmax
                    ax.text(j, i, t[:8], ha="center", va="center", rotation=90, fontsize=5.5,
                            color="white" if dark else "black", fontfamily="monospace")
    if not generated_only:
        for i, p in enumerate(m["prompt_lengths"]):
            ax.plot([p - 0.5, p - 0.5], [i - 0.5, i + 0.5], color="black", lw=1.5)
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels([_short(p, 36) for p in m["prompts"]], fontsize=8)
    ax.set_xlabel("generated token" if generated_only else "position (black bar: start of answer)")
    fig.colorbar(im, ax=ax, label="alpha" if which == "strengths" else "h·v", pad=0.01,
                 extend=extend)
    ax.set_title(title if title is not None else f"{which} per token ({m['where']})", fontsize=10)
    return fig


# --------------------------------------------------------------------------- per-layer profile
def layer_profile_plot(layers, values, *, title: str | None = None, ylabel: str = "mean |alpha|"):
    """Bars of a per-layer profile (e.g. ``analysis.layer_profile``) (plotly)."""
    go = _go()
    layers, v = _series(values, layers)
    fig = go.Figure(go.Bar(x=[str(L) for L in layers], y=v))
    fig.update_layout(title=title or "strength per layer", xaxis_title="layer", yaxis_title=ylabel)
    return fig


def layer_profile_plot_mpl(layers, values, *, title: str | None = None,
                           ylabel: str = "mean |alpha|", label: str | None = None, ax=None):
    """Static twin of :func:`layer_profile_plot`."""
    layers, v = _series(values, layers)
    fig, ax = _fig_ax(ax, (7, 3.5))
    ax.bar([str(L) for L in layers], v, color=["#b2182b" if x >= 0 else "#2166ac" for x in v],
           label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title(title or "strength per layer", fontsize=10)
    return fig
