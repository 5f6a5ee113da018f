"""Heatmaps of steering strengths: tokens x layers, prompts x tokens, and per layer.

``strength_heatmap`` shows one example's strengths (or projections) over its tokens
and the steered layers, ``prompts_heatmap`` every example's tokens at one layer
(``prompts_matrix`` gives the numbers), and ``layer_profile_plot`` a per-layer
profile such as ``analysis.layer_profile``. Each draws with plotly (default) or
matplotlib (``backend="matplotlib"``).

Colour scale: centred at zero; position 0 and the chat template's system turn
(:func:`~clas_lens.plot.tokens.special_positions`) are drawn grey and left out of
the limit, which is the 99th percentile of the other cells' ``|value|``
(:func:`~clas_lens.plot.tokens.colour_limit`); ``include_special=True`` colours
them and counts them, ``vmax=`` sets the limit. Hover texts always show the true values.

Example:
    >>> import torch
    >>> from clas_lens.tracing import GenerationResult
    >>> toks = [["<|im_start|>", "user", "\\n", "Hi", "<|im_end|>", " Hello", "!"]]
    >>> res = GenerationResult(["Hi"], ["Hello!"], [list(range(7))], [5], toks,
    ...                        torch.ones(1, 7, 2), None, torch.ones(1, 7, dtype=torch.bool), [3, 4])
    >>> fig = strength_heatmap(res, 0)
    >>> fig.data[0].z.shape  # layers x tokens
    (2, 7)
    >>> fig = strength_heatmap(res, 0, backend="matplotlib")
    >>> fig.axes[0].get_xticklabels()[5].get_text()
    '·Hello'
"""

from __future__ import annotations

import html as _html
import math
from collections.abc import Sequence

import numpy as np

from clas_lens.plot.common import (
    DIVERGING,
    DIVERGING_MPL,
    GREY,
    check_backend,
    figure_axes,
    plotly_go,
    series,
    to_numpy,
    two_slope_norm,
)
from clas_lens.plot.tokens import (
    ROBUST_QUANTILE,
    colour_limit,
    example_matrix,
    layer_columns,
    special_positions,
    token_label,
    values_of,
)

#: plotly colour scale of the grey cells left out of the colour limit.
_GREY_SCALE = [[0.0, GREY], [1.0, GREY]]


def _grey_mask(found: np.ndarray, special, include_special: bool) -> np.ndarray:
    """The positions drawn grey: ``special`` if given, else ``found``; none with include_special."""
    if include_special:
        return np.zeros(found.shape, dtype=bool)
    if special is None:
        return found
    s = np.asarray(special, dtype=bool)
    if s.shape != found.shape:
        raise ValueError(f"special has shape {s.shape}; the example needs {found.shape} "
                         "(one flag per token), or pass include_special=True")
    return s


def _value_name(which: str) -> str:
    return "alpha" if which == "strengths" else "h·v"


def _extend(z, grey, vmax) -> str:
    inside = np.where(grey, np.nan, z)
    big = np.nanmax(np.abs(inside), initial=0) if np.isfinite(inside).any() else 0.0
    return "both" if big > vmax * (1 + 1e-9) else "neither"


def _grey_overlay_mpl(ax, z, grey, **kw):
    """Draw the grey cells over an ``imshow`` of ``z`` (same geometry)."""
    if not grey.any():
        return
    from matplotlib.colors import ListedColormap

    ax.imshow(np.ma.masked_where(~grey, z), cmap=ListedColormap([GREY]), aspect="auto",
              interpolation="nearest", **kw)


# --------------------------------------------------------------------------- tokens x layers
def strength_heatmap(result, index: int = 0, *, layers: Sequence[int] | None = None,
                     title: str | None = None, which: str = "strengths",
                     vmax: float | None = None, quantile: float | None = ROBUST_QUANTILE,
                     include_special: bool = False, special=None, hide_special: bool = False,
                     backend: str = "plotly", ax=None):
    """Tokens x layers heatmap of one example's steering strengths.

    Args:
        result: a :class:`~clas_lens.tracing.GenerationResult`.
        index: which example.
        layers: subset of the steered layers (default: all).
        title: figure title (default: the prompt).
        which: ``"strengths"`` (alpha) or ``"projections"`` (h.v).
        vmax: colour limit (default: the ``quantile`` of ``|value|`` outside the grey cells).
        quantile: quantile of ``|value|`` that sets the limit (``None``: the maximum).
        include_special: colour position 0 and the system turn and count them in the limit.
        special: ``[pos]`` booleans of the positions to grey (default:
            :func:`~clas_lens.plot.tokens.special_positions` of the example's tokens).
        hide_special: leave out the leading run of special positions (position 0 and the
            system turn) instead of drawing it grey, to give the other tokens the width.
        backend: ``"plotly"`` (hover shows token, position, layer, value) or ``"matplotlib"``.
        ax: matplotlib axes to draw into (matplotlib only).

    A dashed line separates the prompt from the generated tokens.
    """
    check_backend(backend, ax)
    ex = example_matrix(result, index, layers=layers, which=which)
    found = _grey_mask(ex["special"], special, False)
    if hide_special:
        ex = _drop_leading(ex, 0 if found.all() else int(np.argmin(found)))
        found = found[ex["first"]:]
    grey = np.zeros_like(found) if include_special else found
    z = ex["values"].T  # [layer, pos]
    vmax = colour_limit(z, grey, quantile=quantile) if vmax is None else float(vmax)
    prompt = result.prompts[index] if getattr(result, "prompts", None) else ""
    if backend == "plotly":
        return _strength_heatmap_plotly(ex, z, grey, vmax, which,
                                        title if title is not None else f"{which} — {prompt[:80]}")
    return _strength_heatmap_mpl(ex, z, grey, vmax, which,
                                 title if title is not None else f"{which}: {prompt[:90]}", ax)


def _drop_leading(ex: dict, k: int) -> dict:
    """The example without its first ``k`` positions (``first`` = the first position kept)."""
    return {**ex, "values": ex["values"][k:], "tokens": ex["tokens"][k:], "labels": ex["labels"][k:],
            "special": ex["special"][k:], "first": k}


def _strength_heatmap_plotly(ex, z, grey, vmax, which, title):
    go = plotly_go()
    n = z.shape[1]
    first = ex.get("first", 0)
    pos = list(range(first, first + n))
    ys = [str(L) for L in ex["layers"]]
    tok_grid = [[_html.escape(lbl) for lbl in ex["labels"]] for _ in ex["layers"]]
    hover = "token %{customdata}<br>position %{x}<br>layer %{y}<br>value %{z:.4g}"
    fig = go.Figure(go.Heatmap(
        z=z, x=pos, y=ys, customdata=tok_grid, colorscale=DIVERGING, zmid=0.0, zmin=-vmax,
        zmax=vmax, colorbar={"title": _value_name(which)}, name=which,
        hovertemplate=hover + "<extra></extra>"))
    if grey.any():
        fig.add_trace(go.Heatmap(
            z=np.where(grey[None, :], z, np.nan), x=pos, y=ys, customdata=tok_grid,
            colorscale=_GREY_SCALE, showscale=False, hoverongaps=False, name="left out",
            hovertemplate=hover + "<br>(grey: not in the colour scale)<extra></extra>"))
    p = ex["prompt_length"]
    if first < p < first + n:
        fig.add_vline(x=p - 0.5, line_dash="dash", line_color="black", line_width=2,
                      annotation_text="generated →", annotation_position="top right")
    step = max(1, math.ceil(n / 120))
    fig.update_xaxes(tickmode="array", tickvals=pos[::step],
                     ticktext=[_html.escape(lbl) for lbl in ex["labels"][::step]],
                     tickangle=-90, title="token")
    fig.update_yaxes(title="layer", type="category")
    fig.update_layout(title=title, width=max(600, min(2400, 14 * n + 200)),
                      height=max(300, 22 * len(ex["layers"]) + 220), margin={"b": 120})
    return fig


def _strength_heatmap_mpl(ex, z, grey, vmax, which, title, ax):
    n_layers, n = z.shape
    fig, ax = figure_axes(ax, (min(40.0, max(6.0, 0.16 * n + 2.5)), max(2.8, 0.26 * n_layers + 2.2)))
    im = ax.imshow(z, aspect="auto", cmap=DIVERGING_MPL, norm=two_slope_norm(vmax),
                   interpolation="nearest", origin="lower")
    _grey_overlay_mpl(ax, z, np.broadcast_to(grey[None, :], z.shape), origin="lower")
    ax.set_xticks(range(n))
    ax.set_xticklabels(ex["labels"], rotation=90, fontsize=7 if n > 60 else 8,
                       fontfamily="monospace")
    ystep = max(1, math.ceil(n_layers / 16))
    ax.set_yticks(range(0, n_layers, ystep))
    ax.set_yticklabels([str(L) for L in ex["layers"][::ystep]])
    ax.set_ylabel("layer")
    note = ""
    if ex.get("first", 0):
        note = f" (first {ex['first']} tokens, the system prompt, not shown)"
    elif grey.any():
        note = " (grey: first token and system prompt, not in the colour scale)"
    ax.set_xlabel("token" + note)
    p = ex["prompt_length"] - ex.get("first", 0)
    if 0 < p < n:
        ax.axvline(p - 0.5, color="black", lw=1.5, ls="--")
        ax.text(p - 0.5, 0.98, " generated →", va="top", ha="left", fontsize=8,
                transform=ax.get_xaxis_transform(),
                bbox={"facecolor": "white", "alpha": 0.7, "lw": 0, "pad": 1})
    fig.colorbar(im, ax=ax, label=_value_name(which), pad=0.01,
                 extend=_extend(z, np.broadcast_to(grey[None, :], z.shape), vmax))
    ax.set_title(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------- prompts x tokens
def _layer_slice(result, layer: int | None, which: str = "strengths") -> tuple[np.ndarray, str]:
    """``[batch, pos]`` values at one steered layer (``None``: mean over the steered layers)."""
    v = values_of(result, which)
    if layer is None:
        return v.mean(axis=2), "mean over layers"
    _, cols = layer_columns(result, [layer])
    return v[:, :, cols[0]], f"layer {layer}"


def prompts_matrix(result, layer: int | None = None, *, which: str = "strengths",
                   generated_only: bool = False, max_tokens: int | None = None) -> dict:
    """``[example, token]`` values at one layer, NaN past each example's tokens.

    With ``generated_only`` the columns are the continuation tokens (column 0 = first
    generated token); otherwise position 0 is each example's first prompt token.
    Returns a dict with ``values``, ``tokens`` (labels), ``special`` (``[example, token]``
    booleans of :func:`~clas_lens.plot.tokens.special_positions`), ``where``,
    ``prompt_lengths`` and ``prompts``.
    """
    v, where = _layer_slice(result, layer, which)
    mask = to_numpy(result.mask).astype(bool)
    rows, toks, specials = [], [], []
    for i in range(v.shape[0]):
        n = int(mask[i].sum())
        start = int(result.prompt_lengths[i]) if generated_only else 0
        rows.append(v[i, start:n])
        toks.append([token_label(t) for t in result.str_tokens[i][start:n]])
        specials.append(special_positions(result.str_tokens[i][:n])[start:n])
    width = max((len(r) for r in rows), default=0)
    if max_tokens is not None:
        width = min(width, max_tokens)
    z = np.full((len(rows), width), np.nan)
    sp = np.zeros((len(rows), width), dtype=bool)
    tk = [[""] * width for _ in rows]
    for i, r in enumerate(rows):
        k = min(len(r), width)
        z[i, :k] = r[:k]
        sp[i, :k] = specials[i][:k]
        tk[i][:k] = toks[i][:k]
    plens = [0 if generated_only else int(p) for p in result.prompt_lengths]
    return {"values": z, "tokens": tk, "special": sp, "where": where, "prompt_lengths": plens,
            "prompts": list(getattr(result, "prompts", [""] * len(rows)))}


def _short(s: str, n: int = 40) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def prompts_heatmap(result, layer: int | None = None, *, which: str = "strengths",
                    generated_only: bool = False, max_tokens: int | None = None,
                    title: str | None = None, vmax: float | None = None,
                    quantile: float | None = ROBUST_QUANTILE, include_special: bool = False,
                    annotate: bool | None = None, backend: str = "plotly", ax=None):
    """Prompts x tokens heatmap at one steered layer (``layer=None``: mean over the layers).

    Args:
        result: a :class:`~clas_lens.tracing.GenerationResult`.
        layer: a steered layer, or ``None`` for the mean over the steered layers.
        which: ``"strengths"`` or ``"projections"``.
        generated_only: only the continuation tokens (column 0 = first generated token).
        max_tokens: at most this many columns.
        title: figure title.
        vmax: colour limit (default: the ``quantile`` of ``|value|`` outside the grey cells).
        quantile: quantile of ``|value|`` that sets the limit (``None``: the maximum).
        include_special: colour position 0 and the system turn and count them in the limit.
        annotate: write the tokens in the cells (matplotlib; default: when the grid is
            small enough to read). Plotly shows them on hover.
        backend: ``"plotly"`` or ``"matplotlib"``.
        ax: matplotlib axes to draw into (matplotlib only).

    Light cells are past an example's end; a black bar marks the start of each answer.
    """
    check_backend(backend, ax)
    m = prompts_matrix(result, layer, which=which, generated_only=generated_only,
                       max_tokens=max_tokens)
    grey = np.zeros_like(m["special"]) if include_special else m["special"]
    vmax = colour_limit(m["values"], grey, quantile=quantile) if vmax is None else float(vmax)
    title = title if title is not None else f"{which} per token ({m['where']})"
    if backend == "plotly":
        return _prompts_heatmap_plotly(m, grey, vmax, which, generated_only, title)
    return _prompts_heatmap_mpl(m, grey, vmax, which, generated_only, title, annotate, ax)


def _prompts_heatmap_plotly(m, grey, vmax, which, generated_only, title):
    go = plotly_go()
    z = m["values"]
    custom = [[[_html.escape(t), _html.escape(_short(m["prompts"][i], 60))] for t in row]
              for i, row in enumerate(m["tokens"])]
    ylabels = [f"{i}: {_short(p, 30)}" for i, p in enumerate(m["prompts"])]
    hover = "%{customdata[1]}<br>token %{customdata[0]}<br>position %{x}<br>value %{z:.4g}"
    fig = go.Figure(go.Heatmap(
        z=z, y=ylabels, customdata=custom, colorscale=DIVERGING, zmid=0.0, zmin=-vmax,
        zmax=vmax, hoverongaps=False, colorbar={"title": _value_name(which)}, name=which,
        hovertemplate=hover + "<extra></extra>"))
    if grey.any():
        fig.add_trace(go.Heatmap(
            z=np.where(grey, z, np.nan), y=ylabels, customdata=custom, colorscale=_GREY_SCALE,
            showscale=False, hoverongaps=False, name="left out",
            hovertemplate=hover + "<br>(grey: not in the colour scale)<extra></extra>"))
    if not generated_only:
        for i, p in enumerate(m["prompt_lengths"]):
            fig.add_shape(type="line", x0=p - 0.5, x1=p - 0.5, y0=i - 0.5, y1=i + 0.5,
                          line={"color": "black", "width": 2})
    fig.update_yaxes(autorange="reversed", title="prompt")
    fig.update_xaxes(title="generated token" if generated_only else "position")
    fig.update_layout(title=title, height=max(300, 26 * z.shape[0] + 200),
                      width=max(600, min(2000, 9 * z.shape[1] + 400)))
    return fig


def _prompts_heatmap_mpl(m, grey, vmax, which, generated_only, title, annotate, ax):
    import matplotlib as mpl

    z = m["values"]
    n_rows, n = z.shape
    if annotate is None:
        annotate = n <= 70 and n_rows <= 16
    longest = max((len(t) for row in m["tokens"] for t in row), default=1)
    # rows tall enough for the longest token written vertically (5.5 pt monospace)
    row_h = max(0.5, 0.047 * longest + 0.12) if annotate else 0.32
    w = min(40.0, max(7.0, (0.22 if annotate else 0.1) * n + 4.5))
    fig, ax = figure_axes(ax, (w, max(2.5, row_h * n_rows + 1.6)))
    cmap = mpl.colormaps[DIVERGING_MPL].with_extremes(bad="#f4f4f4")
    im = ax.imshow(np.ma.masked_invalid(z), aspect="auto", cmap=cmap, norm=two_slope_norm(vmax),
                   interpolation="nearest")
    _grey_overlay_mpl(ax, z, grey & np.isfinite(z))
    if annotate:
        for i in range(n_rows):
            for j in range(n):
                t = m["tokens"][i][j]
                if t and np.isfinite(z[i, j]):
                    dark = abs(z[i, j]) > 0.6 * vmax and not grey[i, j]
                    ax.text(j, i, t, ha="center", va="center", rotation=90, fontsize=5.5,
                            color="white" if dark else "black", fontfamily="monospace")
    if not generated_only:
        for i, p in enumerate(m["prompt_lengths"]):
            ax.plot([p - 0.5, p - 0.5], [i - 0.5, i + 0.5], color="black", lw=1.5)
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels([_short(p, 36) for p in m["prompts"]], fontsize=8)
    xlabel = "generated token" if generated_only else "position (black bar: start of answer)"
    if grey.any():
        xlabel += "; grey: first token and system prompt, not in the colour scale"
    ax.set_xlabel(xlabel)
    fig.colorbar(im, ax=ax, label=_value_name(which), pad=0.01, extend=_extend(z, grey, vmax))
    ax.set_title(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------- per-layer profile
def layer_profile_plot(layers, values, *, title: str | None = None, ylabel: str = "mean |alpha|",
                       label: str | None = None, backend: str = "plotly", ax=None):
    """Bars of a per-layer profile (e.g. ``analysis.layer_profile``); red >= 0 > blue.

    Example:
        >>> layer_profile_plot([3, 4], [0.5, -0.1]).data[0].y.tolist()
        [0.5, -0.1]
    """
    check_backend(backend, ax)
    layers, v = series(values, layers)
    colours = ["#b2182b" if x >= 0 else "#2166ac" for x in v]
    title = title or "strength per layer"
    if backend == "plotly":
        go = plotly_go()
        fig = go.Figure(go.Bar(x=[str(L) for L in layers], y=v, name=label or ylabel,
                               marker_color=colours))
        fig.update_layout(title=title, xaxis_title="layer", yaxis_title=ylabel)
        return fig
    fig, ax = figure_axes(ax, (7, 3.5))
    ax.bar([str(L) for L in layers], v, color=colours, label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title(title, fontsize=10)
    return fig
