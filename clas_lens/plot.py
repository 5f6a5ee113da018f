"""Figures of steering traces: interactive (plotly) and static (matplotlib).

Every function takes result objects or tensors and returns a figure (or HTML);
none of them runs the model. Signed values (strengths, similarities,
contributions) use a diverging colour scale centred at zero.

Plotly functions return ``plotly.graph_objects.Figure`` (for notebooks);
the ``*_mpl`` twins return ``matplotlib.figure.Figure`` (for PNG files).

Example:
    >>> res = generate(model, steerer, prompts)          # doctest: +SKIP
    >>> strength_heatmap(res, 0).show()                  # doctest: +SKIP
    >>> strength_heatmap_mpl(res, 0).savefig("s.png")    # doctest: +SKIP
"""

from __future__ import annotations

import html as _html
import math
from functools import lru_cache
from typing import Sequence

import numpy as np

#: plotly diverging scale (blue = negative, white = 0, red = positive).
DIVERGING = "RdBu_r"
#: matplotlib diverging colormap.
DIVERGING_MPL = "RdBu_r"


# --------------------------------------------------------------------------- helpers
@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode`` (byte-level BPE token strings -> bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def clean_token(tok: str) -> str:
    """Readable text of a token string (byte-level BPE markers such as ``Ġ``/``Ċ`` decoded).

    Special tokens (``<|im_start|>``) and SentencePiece ``▁`` are kept readable.
    """
    if tok.startswith("<") and tok.endswith(">"):
        return tok
    dec = _byte_decoder()
    if tok and all(ch in dec for ch in tok):
        return bytes(dec[ch] for ch in tok).decode("utf-8", errors="replace")
    return tok.replace("▁", " ")


def token_label(tok: str) -> str:
    """A compact one-line axis label for a token (newline as ``↵``, leading space as ``·``)."""
    t = clean_token(tok)
    t = t.replace("\n", "↵").replace("\t", "⇥").replace("\r", "")
    if t.startswith(" "):
        t = "·" + t[1:]
    return t if t else "∅"


def _np(x) -> np.ndarray:
    if x is None:
        raise ValueError("no values to plot (None)")
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def _symmetric_range(*arrays, floor: float = 1e-8) -> float:
    """max |value| over finite entries (at least ``floor``), for a zero-centred scale."""
    m = 0.0
    for a in arrays:
        a = np.asarray(a, dtype=float)
        a = a[np.isfinite(a)]
        if a.size:
            m = max(m, float(np.abs(a).max()))
    return max(m, floor)


#: quantile of |value| that sets the colour limit of token-level plots.
ROBUST_QUANTILE = 0.99


def token_range(values, *, skip_first: bool = True, quantile: float | None = ROBUST_QUANTILE
                ) -> float:
    """Symmetric colour limit for token-level values ``[..., pos, ...]`` (pos on axis 0 of each row).

    Position 0 (the first token: an attention sink whose residual norm, hence strength,
    is an outlier) is left out when ``skip_first`` and there are other tokens, and the
    limit is the ``quantile`` of ``|value|`` (``None``: the maximum), so a few extreme
    cells do not wash out the rest. Hover texts always show the true values.
    """
    a = np.asarray(values, dtype=float)
    if skip_first and a.ndim >= 1 and a.shape[-1] > 1:
        a = a[..., 1:]
    a = np.abs(a[np.isfinite(a)])
    if a.size == 0:
        return 1e-8
    v = float(np.quantile(a, quantile)) if quantile is not None else float(a.max())
    return max(v if v > 0 else float(a.max()), 1e-8)


def _layer_columns(result, layers: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """(layer ids, column indices into the result's layer axis)."""
    all_layers = list(getattr(result, "layers", []) or [])
    if not all_layers:
        n = _np(result.strengths).shape[2]
        all_layers = list(range(n))
    if layers is None:
        return all_layers, list(range(len(all_layers)))
    cols = []
    for L in layers:
        if L not in all_layers:
            raise ValueError(f"layer {L} was not steered; the result has layers {all_layers}")
        cols.append(all_layers.index(L))
    return list(layers), cols


def _values_of(result, which: str = "strengths"):
    vals = getattr(result, which, None)
    if vals is None:
        raise ValueError(f"the result has no {which} (unsteered, or a steerer without strengths)")
    v = _np(vals)
    if v.ndim == 4:  # rank > 1: sum of the components' strengths
        v = v.sum(-1)
    return v


def example_matrix(result, index: int = 0, *, layers: Sequence[int] | None = None,
                   which: str = "strengths") -> dict:
    """One example's values over its real tokens.

    Returns a dict with ``values`` ``[pos, layer]`` (numpy), ``tokens`` (raw strings),
    ``labels`` (readable), ``layers`` and ``prompt_length``.
    """
    n_ex = len(result.str_tokens)
    if not -n_ex <= index < n_ex:
        raise IndexError(f"index {index} out of range for {n_ex} examples")
    index = index % n_ex
    v = _values_of(result, which)
    n = int(_np(result.mask[index]).sum())
    layer_ids, cols = _layer_columns(result, layers)
    toks = list(result.str_tokens[index][:n])
    return {"values": v[index, :n][:, cols], "tokens": toks,
            "labels": [token_label(t) for t in toks], "layers": layer_ids,
            "prompt_length": int(result.prompt_lengths[index])}


def _go():
    import plotly.graph_objects as go

    return go


def _new_figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _fig_ax(ax, figsize):
    """A new figure with one axes, or the given axes and its figure."""
    if ax is not None:
        return ax.figure, ax
    fig = _new_figure(figsize)
    return fig, fig.add_subplot()


def _two_slope(vmax: float):
    from matplotlib.colors import TwoSlopeNorm

    return TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)


# --------------------------------------------------------------------------- strength heatmaps
def strength_heatmap(result, index: int = 0, *, layers: Sequence[int] | None = None,
                     title: str | None = None, which: str = "strengths",
                     vmax: float | None = None):
    """Tokens x layers heatmap of one example's steering strengths (plotly).

    Args:
        result: a :class:`~clas_lens.trace.GenerationResult`.
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


# --------------------------------------------------------------------------- coloured tokens
def _hex(rgba) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(round(255 * c)) for c in rgba[:3]))


def token_colours(values, vmax: float | None = None) -> list[tuple[str, str]]:
    """(background, text) hex colours for each value on the zero-centred diverging scale."""
    import matplotlib as mpl

    vals = np.asarray(values, dtype=float)
    vmax = _symmetric_range(vals) if vmax is None else max(float(vmax), 1e-8)
    cmap = mpl.colormaps[DIVERGING_MPL]
    norm = _two_slope(vmax)
    out = []
    for x in vals:
        if not np.isfinite(x):
            out.append(("#ffffff", "#000000"))
            continue
        rgba = cmap(float(norm(np.clip(x, -vmax, vmax))))
        lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
        out.append((_hex(rgba), "#ffffff" if lum < 0.5 else "#000000"))
    return out


def token_html(result, index: int = 0, layer: int | None = None, *, which: str = "strengths",
               vmax: float | None = None, show_prompt: bool = True) -> str:
    """The example's tokens as HTML, each shaded by its strength (blue < 0 < red).

    Args:
        result: a :class:`~clas_lens.trace.GenerationResult`.
        index: which example.
        layer: a steered layer, or ``None`` for the mean over the steered layers.
        which: ``"strengths"`` or ``"projections"``.
        vmax: colour scale limit (default :func:`token_range`; values beyond it saturate).
        show_prompt: include the prompt tokens (else only the continuation).

    Hovering a token shows its position and value. Returns an HTML string
    (see :func:`show_tokens` to display it in a notebook).
    """
    ex = example_matrix(result, index, which=which)
    if layer is None:
        vals, where = ex["values"].mean(axis=1), "mean over layers"
    else:
        _, cols = _layer_columns(result, [layer])
        vals, where = ex["values"][:, cols[0]], f"layer {layer}"
    p = ex["prompt_length"]
    start = 0 if show_prompt else p
    vals_shown = vals[start:]
    vmax = token_range(vals_shown, skip_first=start == 0) if vmax is None else float(vmax)
    colours = token_colours(vals_shown, vmax)
    parts = []
    for k, (tok, x, (bg, fg)) in enumerate(zip(ex["tokens"][start:], vals_shown, colours)):
        pos = start + k
        if pos == p and show_prompt and p > 0:
            parts.append('<span style="border-left:3px solid black;margin:0 3px" '
                         'title="start of the answer"></span>')
        text = clean_token(tok)
        shown = _html.escape(text).replace("\n", "↵<br>")
        if not shown.strip():
            shown = shown.replace(" ", "&nbsp;") or "&nbsp;"
        else:
            shown = shown.replace("  ", "&nbsp; ")
        tip = _html.escape(f"pos {pos} | {text!r} | {x:+.4g}")
        parts.append(f'<span title="{tip}" style="background:{bg};color:{fg};'
                     f'padding:1px 0;border-radius:2px">{shown}</span>')
    lo, hi = token_colours([-vmax, vmax], vmax)
    legend = (f'<div style="font-size:80%;margin-bottom:4px">{which} ({where}); scale '
              f'<span style="background:{lo[0]};color:{lo[1]};padding:0 4px">{-vmax:.3g}</span>'
              f'<span style="padding:0 4px">0</span>'
              f'<span style="background:{hi[0]};color:{hi[1]};padding:0 4px">{vmax:+.3g}</span>'
              "</div>")
    return ('<div style="font-family:monospace;line-height:1.9;white-space:normal">'
            + legend + "".join(parts) + "</div>")


def show_tokens(result, index: int = 0, layer: int | None = None, **kwargs):
    """Display :func:`token_html` in a notebook (returns the ``IPython.display.HTML``)."""
    from IPython.display import HTML, display

    h = HTML(token_html(result, index, layer, **kwargs))
    display(h)
    return h


# --------------------------------------------------------------------------- lines with bands
def _series(values, layers=None) -> tuple[list, np.ndarray]:
    v = _np(values).reshape(-1)
    layers = list(range(len(v))) if layers is None else list(layers)
    if len(layers) != len(v):
        raise ValueError(f"{len(v)} values for {len(layers)} layers")
    return layers, v


def similarity_plot(layers, values, *, null_low=None, null_high=None, label: str = "cosine",
                    title: str | None = None, extra: dict | None = None):
    """Cosine similarity per layer with an optional null band (plotly).

    Args:
        layers: the layer of each value.
        values: similarity per layer.
        null_low, null_high: the null band (e.g. 2.5% / 97.5% quantiles of random pairs).
        label: legend name of ``values``.
        extra: further ``{name: values}`` series on the same layers.
    """
    go = _go()
    layers, v = _series(values, layers)
    fig = go.Figure()
    if null_low is not None and null_high is not None:
        lo, hi = _np(null_low).reshape(-1), _np(null_high).reshape(-1)
        fig.add_trace(go.Scatter(x=layers + layers[::-1], y=list(hi) + list(lo[::-1]),
                                 fill="toself", fillcolor="rgba(128,128,128,0.25)",
                                 line={"width": 0}, name="null band", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=layers, y=v, mode="lines+markers", name=label,
                             hovertemplate="layer %{x}<br>%{y:.4f}<extra>" + label + "</extra>"))
    for name, vals in (extra or {}).items():
        _, e = _series(vals, layers)
        fig.add_trace(go.Scatter(x=layers, y=e, mode="lines+markers", name=name))
    fig.add_hline(y=0, line_color="black", line_width=1)
    fig.update_layout(title=title or "cosine similarity per layer", xaxis_title="layer",
                      yaxis_title="cosine similarity", yaxis_range=[-1.05, 1.05])
    return fig


def similarity_plot_mpl(layers, values, *, null_low=None, null_high=None,
                        label: str = "cosine", title: str | None = None,
                        extra: dict | None = None, ax=None):
    """Static twin of :func:`similarity_plot`."""
    layers, v = _series(values, layers)
    fig, ax = _fig_ax(ax, (7, 4))
    if null_low is not None and null_high is not None:
        ax.fill_between(layers, _np(null_low).reshape(-1), _np(null_high).reshape(-1),
                        color="grey", alpha=0.3, lw=0, label="null band")
    ax.plot(layers, v, "o-", ms=3.5, label=label)
    for name, vals in (extra or {}).items():
        _, e = _series(vals, layers)
        ax.plot(layers, e, "s--", ms=3, label=name)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("layer")
    ax.set_ylabel("cosine similarity")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title or "cosine similarity per layer", fontsize=10)
    return fig


# --------------------------------------------------------------------------- matrices
def matrix_heatmap(matrix, x_labels=None, y_labels=None, *, title: str | None = None,
                   x_title: str = "layer", y_title: str = "layer", value_name: str = "cosine",
                   symmetric: bool = True, colorscale: str | None = None,
                   vmax: float | None = None):
    """A labelled heatmap (plotly); zero-centred diverging scale when ``symmetric``."""
    go = _go()
    z = _np(matrix)
    xs = [str(x) for x in (x_labels if x_labels is not None else range(z.shape[1]))]
    ys = [str(y) for y in (y_labels if y_labels is not None else range(z.shape[0]))]
    kw = {}
    if symmetric:
        vmax = _symmetric_range(z) if vmax is None else float(vmax)
        kw = {"zmid": 0.0, "zmin": -vmax, "zmax": vmax, "colorscale": colorscale or DIVERGING}
    else:
        kw = {"colorscale": colorscale or "Viridis"}
    fig = go.Figure(go.Heatmap(
        z=z, x=xs, y=ys, colorbar={"title": value_name},
        hovertemplate=f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>{value_name} %{{z:.4g}}"
                      "<extra></extra>", **kw))
    fig.update_xaxes(title=x_title, type="category")
    fig.update_yaxes(title=y_title, type="category")
    fig.update_layout(title=title or "", width=650, height=600)
    return fig


def matrix_heatmap_mpl(matrix, x_labels=None, y_labels=None, *, title: str | None = None,
                       x_title: str = "layer", y_title: str = "layer",
                       value_name: str = "cosine", symmetric: bool = True,
                       cmap: str | None = None, annotate: bool | None = None, fmt: str = ".2f",
                       vmax: float | None = None, ax=None):
    """Static twin of :func:`matrix_heatmap` (``TwoSlopeNorm`` at 0 when ``symmetric``)."""
    z = _np(matrix)
    xs = [str(x) for x in (x_labels if x_labels is not None else range(z.shape[1]))]
    ys = [str(y) for y in (y_labels if y_labels is not None else range(z.shape[0]))]
    if annotate is None:
        annotate = z.size <= 150
    fig, ax = _fig_ax(ax, (max(5.0, 0.3 * len(xs) + 2.5), max(4.0, 0.28 * len(ys) + 1.8)))
    lim = _symmetric_range(z) if vmax is None else float(vmax)
    if symmetric:
        im = ax.imshow(z, cmap=cmap or DIVERGING_MPL, norm=_two_slope(lim),
                       aspect="auto", interpolation="nearest", origin="lower")
    else:
        im = ax.imshow(z, cmap=cmap or "viridis", aspect="auto", interpolation="nearest",
                       origin="lower")
    if annotate:
        for i in range(z.shape[0]):
            for j in range(z.shape[1]):
                if np.isfinite(z[i, j]):
                    dark = symmetric and abs(z[i, j]) > 0.6 * lim
                    ax.text(j, i, format(z[i, j], fmt), ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
    xstep = max(1, math.ceil(len(xs) / 30))
    ystep = max(1, math.ceil(len(ys) / 30))
    ax.set_xticks(range(0, len(xs), xstep))
    ax.set_xticklabels(xs[::xstep], rotation=90 if max(map(len, xs)) > 3 else 0, fontsize=8)
    ax.set_yticks(range(0, len(ys), ystep))
    ax.set_yticklabels(ys[::ystep], fontsize=8)
    ax.set_xlabel(x_title)
    ax.set_ylabel(y_title)
    extend = "both" if symmetric and np.nanmax(np.abs(z), initial=0) > lim * (1 + 1e-9) else "neither"
    fig.colorbar(im, ax=ax, label=value_name, pad=0.01, extend=extend)
    ax.set_title(title or "", fontsize=10)
    return fig


# --------------------------------------------------------------------------- layer sweeps
def sweep_curves(layers, values, *, coefficients=None, metric: str = "NLL",
                 title: str | None = None, baseline: float | None = None):
    """Layer sweep lines (plotly): ``values`` ``[layer]`` (one curve) or ``[layer, coefficient]``
    (one curve per coefficient). ``baseline`` draws the unsteered value."""
    go = _go()
    v = _np(values)
    layers = list(layers)
    fig = go.Figure()
    if v.ndim == 1:
        fig.add_trace(go.Scatter(x=layers, y=v, mode="lines+markers", name=metric))
    else:
        coefficients = list(range(v.shape[1])) if coefficients is None else list(coefficients)
        for k, c in enumerate(coefficients):
            fig.add_trace(go.Scatter(x=layers, y=v[:, k], mode="lines+markers",
                                     name=f"c = {c:.3g}" if isinstance(c, (int, float)) else str(c)))
    if baseline is not None:
        fig.add_hline(y=baseline, line_dash="dash", line_color="grey",
                      annotation_text="unsteered")
    fig.update_layout(title=title or f"layer sweep ({metric})", xaxis_title="layer",
                      yaxis_title=metric)
    return fig


def sweep_curves_mpl(layers, values, *, coefficients=None, metric: str = "NLL",
                     title: str | None = None, baseline: float | None = None, labels=None, ax=None):
    """Static twin of :func:`sweep_curves`; ``labels`` names the curves of a 2-D ``values``."""
    v = _np(values)
    layers = list(layers)
    fig, ax = _fig_ax(ax, (7, 4))
    if v.ndim == 1:
        ax.plot(layers, v, "o-", ms=3.5, label=metric)
    else:
        coefficients = list(range(v.shape[1])) if coefficients is None else list(coefficients)
        import matplotlib as mpl

        colours = mpl.colormaps["viridis"](np.linspace(0, 0.9, v.shape[1]))
        for k, c in enumerate(coefficients):
            name = labels[k] if labels is not None else (
                f"c = {c:.3g}" if isinstance(c, (int, float)) else str(c))
            ax.plot(layers, v[:, k], "o-", ms=3, color=colours[k], label=name)
    if baseline is not None:
        ax.axhline(baseline, color="grey", ls="--", lw=1, label="unsteered")
    ax.set_xlabel("layer")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or f"layer sweep ({metric})", fontsize=10)
    return fig


def sweep_heatmap(layers, coefficients, values, *, metric: str = "NLL",
                  baseline: float | None = None, title: str | None = None,
                  vmax: float | None = None):
    """Layer x coefficient heatmap (plotly). With ``baseline`` the colour is the change
    from it (diverging, centred at zero); otherwise a sequential scale."""
    z = _np(values)
    name = metric
    if baseline is not None:
        z = z - baseline
        name = f"Δ {metric}"
    fig = matrix_heatmap(z.T, [str(L) for L in layers], [f"{c:.3g}" for c in coefficients],
                         title=title or f"LAS layer sweep: {name}", x_title="layer",
                         y_title="coefficient", value_name=name, symmetric=baseline is not None,
                         vmax=vmax)
    fig.update_layout(width=max(600, 22 * len(layers) + 250), height=max(350, 30 * len(coefficients) + 200))
    return fig


def sweep_heatmap_mpl(layers, coefficients, values, *, metric: str = "NLL",
                      baseline: float | None = None, title: str | None = None,
                      vmax: float | None = None, annotate: bool | None = None, ax=None):
    """Static twin of :func:`sweep_heatmap` (coefficient on y, layer on x); the lowest
    value is boxed, and small grids carry their numbers."""
    z = _np(values)
    name = metric
    if baseline is not None:
        z = z - baseline
        name = f"Δ {metric} vs unsteered"
    if annotate is None:
        annotate = z.size <= 150
    fig = matrix_heatmap_mpl(z.T, [str(L) for L in layers], [f"{c:.3g}" for c in coefficients],
                             title=title or f"LAS layer sweep: {name}", x_title="layer",
                             y_title="coefficient c", value_name=name,
                             symmetric=baseline is not None, annotate=annotate, vmax=vmax, ax=ax)
    axis = ax or fig.axes[0]
    if np.isfinite(z).any():
        i, j = np.unravel_index(np.nanargmin(z), z.shape)
        from matplotlib.patches import Rectangle

        axis.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, ec="black", lw=2))
    return fig


# --------------------------------------------------------------------------- attribution
def attribution_bars(names, values, *, total: float | None = None, top: int | None = 20,
                     title: str | None = None, value_name: str = "contribution to alpha"):
    """Horizontal bars of signed contributions (plotly), largest |value| on top;
    red pushes alpha up, blue down. ``total`` is shown in the title."""
    go = _go()
    names, v = _sorted_contributions(names, values, top)
    colours = ["#b2182b" if x > 0 else "#2166ac" for x in v]
    fig = go.Figure(go.Bar(x=v, y=names, orientation="h", marker_color=colours,
                           hovertemplate="%{y}<br>%{x:+.4g}<extra></extra>"))
    t = title or "attribution"
    if total is not None:
        t += f" (alpha = {total:+.4g})"
    fig.add_vline(x=0, line_color="black", line_width=1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=t, xaxis_title=value_name, height=max(300, 22 * len(names) + 150))
    return fig


def _sorted_contributions(names, values, top):
    v = _np(values).reshape(-1)
    names = [str(n) for n in names]
    if len(names) != len(v):
        raise ValueError(f"{len(names)} names for {len(v)} values")
    order = np.argsort(-np.abs(v), kind="stable")
    if top is not None:
        order = order[:top]
    return [names[i] for i in order], v[order]


def attribution_bars_mpl(names, values, *, total: float | None = None, top: int | None = 20,
                         title: str | None = None, value_name: str = "contribution to alpha",
                         ax=None):
    """Static twin of :func:`attribution_bars`."""
    names, v = _sorted_contributions(names, values, top)
    fig, ax = _fig_ax(ax, (7, max(2.5, 0.28 * len(names) + 1.2)))
    y = np.arange(len(names))
    ax.barh(y, v, color=["#b2182b" if x > 0 else "#2166ac" for x in v])
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(value_name)
    ax.grid(axis="x", alpha=0.3)
    t = title or "attribution"
    if total is not None:
        t += f" (alpha = {total:+.4g})"
    ax.set_title(t, fontsize=10)
    return fig


# --------------------------------------------------------------------------- training, probes
def _history_series(history) -> dict:
    steps = list(getattr(history, "steps", []))
    valid = list(getattr(history, "valid", []))
    per_epoch: dict[int, int] = {}
    for s in steps:
        per_epoch[s["epoch"]] = per_epoch.get(s["epoch"], 0) + 1
    seen: dict[int, int] = {}
    x = []
    for s in steps:
        seen[s["epoch"]] = seen.get(s["epoch"], 0) + 1
        x.append(s["epoch"] - 1 + seen[s["epoch"]] / per_epoch[s["epoch"]])
    norms = sorted({k for s in steps for k in s if k.startswith("norm_")})
    return {"x": x, "train": [s["train_loss"] for s in steps],
            "valid_x": [v["epoch"] for v in valid], "valid": [v["valid_loss"] for v in valid],
            "norms": {k[5:]: [s[k] for s in steps] for k in norms},
            "best_epoch": getattr(history, "best_epoch", None)}


def training_curves(history, *, title: str | None = None):
    """Loss (train per step, valid per epoch) and parameter norms of a
    :class:`~clas_lens.train.TrainHistory` (plotly, two panels)."""
    from plotly.subplots import make_subplots

    go = _go()
    h = _history_series(history)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("completion loss", "parameter norms"))
    fig.add_trace(go.Scatter(x=h["x"], y=h["train"], mode="lines+markers", name="train"), 1, 1)
    if h["valid"]:
        fig.add_trace(go.Scatter(x=h["valid_x"], y=h["valid"], mode="lines+markers",
                                 name="valid"), 1, 1)
    if h["best_epoch"] is not None and h["valid"]:
        fig.add_vline(x=h["best_epoch"], line_dash="dot", line_color="grey", row=1, col=1)
    for name, vals in h["norms"].items():
        fig.add_trace(go.Scatter(x=h["x"], y=vals, mode="lines+markers", name=f"|{name}|"), 1, 2)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title=title or "training", height=380, width=900)
    return fig


def training_curves_mpl(history, *, title: str | None = None):
    """Static twin of :func:`training_curves`."""
    h = _history_series(history)
    fig = _new_figure((10, 3.8))
    a, b = fig.subplots(1, 2)
    a.plot(h["x"], h["train"], "o-", ms=3, label="train")
    if h["valid"]:
        a.plot(h["valid_x"], h["valid"], "s-", ms=4, label="valid")
        if h["best_epoch"] is not None:
            a.axvline(h["best_epoch"], color="grey", ls=":", label=f"best (epoch {h['best_epoch']})")
    a.set_xlabel("epoch")
    a.set_ylabel("completion NLL")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    a.set_title("loss", fontsize=10)
    for name, vals in h["norms"].items():
        b.plot(h["x"], vals, "o-", ms=3, label=f"|{name}|")
    b.set_xlabel("epoch")
    b.set_ylabel("norm")
    if h["norms"]:
        b.legend(fontsize=8)
    b.grid(alpha=0.3)
    b.set_title("parameter norms", fontsize=10)
    fig.suptitle(title or "training", fontsize=11)
    return fig


def _accuracy_series(directions) -> dict[str, tuple[list[int], np.ndarray]]:
    if isinstance(directions, dict):
        items = list(directions.items())
    elif isinstance(directions, (list, tuple)):
        items = [(f"{d.concept}/{d.method}" if d.concept else d.method, d) for d in directions]
    else:
        d = directions
        items = [(f"{d.concept}/{d.method}" if d.concept else d.method, d)]
    return {name: (list(d.layers), _np(d.accuracy)) for name, d in items}


def probe_accuracy(directions, *, title: str | None = None):
    """Held-out probe accuracy per layer (plotly) of one :class:`Directions`, a list of them,
    or a ``{name: Directions}`` dict; the dashed line is chance (0.5)."""
    go = _go()
    fig = go.Figure()
    for name, (layers, acc) in _accuracy_series(directions).items():
        fig.add_trace(go.Scatter(x=layers, y=acc, mode="lines+markers", name=name,
                                 hovertemplate="layer %{x}<br>accuracy %{y:.3f}<extra></extra>"))
    fig.add_hline(y=0.5, line_dash="dash", line_color="grey", annotation_text="chance")
    fig.update_layout(title=title or "probe accuracy per layer (held out)", xaxis_title="layer",
                      yaxis_title="accuracy", yaxis_range=[0, 1.05])
    return fig


def probe_accuracy_mpl(directions, *, title: str | None = None, ax=None):
    """Static twin of :func:`probe_accuracy`."""
    fig, ax = _fig_ax(ax, (7, 3.8))
    styles = ["o-", "s--", "^-.", "v:", "D-", "x--"]
    for k, (name, (layers, acc)) in enumerate(_accuracy_series(directions).items()):
        ax.plot(layers, acc, styles[k % len(styles)], ms=4.5 - 0.5 * (k % 3), alpha=0.85,
                label=name)
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="chance")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("layer")
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "probe accuracy per layer (held out)", fontsize=10)
    return fig


def dose_response(scales, values, *, metric: str = "value", labels=None, title: str | None = None):
    """A metric against the steering scale (plotly); 2-D ``values`` ``[scale, series]``."""
    go = _go()
    s = list(_np(scales).reshape(-1))
    v = _np(values)
    v = v.reshape(len(s), -1)
    fig = go.Figure()
    for k in range(v.shape[1]):
        name = labels[k] if labels is not None else metric
        fig.add_trace(go.Scatter(x=s, y=v[:, k], mode="lines+markers", name=name))
    fig.update_layout(title=title or f"dose-response ({metric})", xaxis_title="scale",
                      yaxis_title=metric)
    return fig


def dose_response_mpl(scales, values, *, metric: str = "value", labels=None,
                      title: str | None = None, ax=None):
    """Static twin of :func:`dose_response`."""
    s = list(_np(scales).reshape(-1))
    v = _np(values).reshape(len(s), -1)
    fig, ax = _fig_ax(ax, (6, 3.8))
    for k in range(v.shape[1]):
        ax.plot(s, v[:, k], "o-", ms=3.5, label=labels[k] if labels is not None else metric)
    ax.set_xlabel("steering scale")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"dose-response ({metric})", fontsize=10)
    return fig


def save_png(fig, path, *, dpi: int = 110) -> str:
    """Write a matplotlib figure to ``path`` (folders created) and return the path."""
    import os

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return str(path)


# --------------------------------------------------------------------------- analysis adapters
def _cos_items(res) -> list:
    return list(res) if isinstance(res, (list, tuple)) else [res]


def _cos_args(res, title):
    items = _cos_items(res)
    first = items[0]
    label = lambda r: f"cos({r.labels[0]}, {r.labels[1]})"  # noqa: E731
    extra = {label(r): r.cos for r in items[1:]}
    null = first.null
    n = len(first.layers)
    kind = f"{null.kind} null, 95%" if getattr(null, "kind", "") else "null, 95%"
    return dict(layers=first.layers, values=first.cos, null_low=[null.lo] * n,
                null_high=[null.hi] * n, label=label(first), extra=extra,
                title=title or f"{label(first)} per layer (grey: {kind}, d={null.d})")


def cosine_plot(res, *, title: str | None = None):
    """Plot an ``analysis.CosineResult`` (or a list of them on the same layers) with its null band."""
    a = _cos_args(res, title)
    return similarity_plot(a.pop("layers"), a.pop("values"), **a)


def cosine_plot_mpl(res, *, title: str | None = None, ax=None):
    """Static twin of :func:`cosine_plot`."""
    a = _cos_args(res, title)
    return similarity_plot_mpl(a.pop("layers"), a.pop("values"), ax=ax, **a)


def _matrix_title(sm, title):
    null = sm.null
    return title or (f"layer x layer cosine of directions (null 95% band "
                     f"[{null.lo:.2f}, {null.hi:.2f}], d={null.d})")


def similarity_matrix_plot(sm, *, title: str | None = None):
    """Plot an ``analysis.SimilarityMatrix`` (layer x layer cosine, zero-centred)."""
    return matrix_heatmap(sm.matrix, sm.layers, sm.layers, title=_matrix_title(sm, title))


def similarity_matrix_plot_mpl(sm, *, title: str | None = None, ax=None):
    """Static twin of :func:`similarity_matrix_plot`."""
    return matrix_heatmap_mpl(sm.matrix, sm.layers, sm.layers, title=_matrix_title(sm, title),
                              annotate=False, ax=ax)


def _method_pairs(ms) -> dict:
    out = {}
    for i in range(len(ms.names)):
        for j in range(i + 1, len(ms.names)):
            out[f"{ms.names[i]} vs {ms.names[j]}"] = _np(ms.cos[i, j])
    return out


def method_similarity_plot(ms, *, title: str | None = None):
    """Per-layer cosine of every pair in an ``analysis.MethodSimilarity``, with the null band."""
    pairs = _method_pairs(ms)
    names = list(pairs)
    n = len(ms.layers)
    return similarity_plot(ms.layers, pairs[names[0]], null_low=[ms.null.lo] * n,
                           null_high=[ms.null.hi] * n, label=names[0],
                           extra={k: pairs[k] for k in names[1:]},
                           title=title or "cosine between direction sets per layer")


def method_similarity_plot_mpl(ms, *, title: str | None = None, ax=None):
    """Static twin of :func:`method_similarity_plot`."""
    pairs = _method_pairs(ms)
    names = list(pairs)
    n = len(ms.layers)
    return similarity_plot_mpl(ms.layers, pairs[names[0]], null_low=[ms.null.lo] * n,
                               null_high=[ms.null.hi] * n, label=names[0],
                               extra={k: pairs[k] for k in names[1:]}, ax=ax,
                               title=title or "cosine between direction sets per layer")


def _sweep_title(sw, title):
    if title:
        return title
    return {"las": "LAS, one layer at a time: completion NLL",
            "clas": "CLAS trained at one layer at a time: best valid NLL",
            "clas_cumulative": "CLAS on the first k layers: best valid NLL"}.get(
                sw.kind, f"{sw.kind} sweep")


def sweep_plot(sw, *, relative: bool = True, title: str | None = None,
               vmax: float | None = None):
    """Plot an ``analysis.SweepResult``: layer x coefficient heatmap (LAS, ``relative``:
    change from the unsteered NLL, diverging at zero) or a curve against the layer (CLAS)."""
    nll = _np(sw.nll)
    if nll.ndim == 2:
        return sweep_heatmap(sw.layers, sw.coefficients, nll, metric="NLL",
                             baseline=sw.baseline if relative else None,
                             title=_sweep_title(sw, title), vmax=vmax)
    fig = sweep_curves(sw.layers, nll, metric="NLL", baseline=sw.baseline,
                       title=_sweep_title(sw, title))
    if sw.kind == "clas_cumulative":
        fig.update_xaxes(title="number of steered layers k")
    return fig


def sweep_plot_mpl(sw, *, relative: bool = True, title: str | None = None,
                   vmax: float | None = None, ax=None):
    """Static twin of :func:`sweep_plot` (``vmax``: colour limit of the LAS heatmap)."""
    nll = _np(sw.nll)
    if nll.ndim == 2:
        return sweep_heatmap_mpl(sw.layers, sw.coefficients, nll, metric="NLL",
                                 baseline=sw.baseline if relative else None,
                                 title=_sweep_title(sw, title), vmax=vmax, ax=ax)
    fig = sweep_curves_mpl(sw.layers, nll, metric="NLL", baseline=sw.baseline,
                           title=_sweep_title(sw, title), ax=ax)
    if sw.kind == "clas_cumulative":
        fig.axes[0].set_xlabel("number of steered layers k")
    return fig


def _attr_args(attr, top, grouped, title):
    contrib = attr.grouped() if grouped else dict(attr.contributions)
    names = list(contrib) + ["bias b"]
    values = list(contrib.values()) + [attr.bias]
    tok = token_label(attr.token)
    t = title or f"why alpha: layer {attr.layer}, token {attr.position} '{tok}'"
    return names, values, dict(total=attr.alpha, top=top, title=t)


def attribution_plot(attr, *, top: int | None = 20, grouped: bool = False,
                     title: str | None = None):
    """Bars of an ``analysis.Attribution``: ``alpha = b + sum of w.component`` (plotly);
    ``grouped`` sums heads/MLPs into embed/attn/mlp/steer."""
    names, values, kw = _attr_args(attr, top, grouped, title)
    return attribution_bars(names, values, **kw)


def attribution_plot_mpl(attr, *, top: int | None = 20, grouped: bool = False,
                         title: str | None = None, ax=None):
    """Static twin of :func:`attribution_plot`."""
    names, values, kw = _attr_args(attr, top, grouped, title)
    return attribution_bars_mpl(names, values, ax=ax, **kw)


_KINDS = ("embed", "attn", "mlp", "steer", "bias")
_KIND_COLOURS = {"embed": "#7f7f7f", "attn": "#1f77b4", "mlp": "#ff7f0e", "steer": "#2ca02c",
                 "bias": "#9467bd"}


def _attr_layers(attrs):
    layers = [a.layer for a in attrs]
    rows = {k: [] for k in _KINDS}
    for a in attrs:
        g = a.grouped()
        for k in _KINDS[:-1]:
            rows[k].append(g.get(k, 0.0))
        rows["bias"].append(a.bias)
    return layers, rows, [a.alpha for a in attrs]


def attribution_layers_plot(attrs, *, title: str | None = None):
    """Stacked bars per layer of a list of ``analysis.Attribution`` (one token): how much
    embed / attention / MLP / earlier steering / bias make up alpha, with alpha as a line."""
    go = _go()
    layers, rows, alpha = _attr_layers(attrs)
    fig = go.Figure()
    for k in _KINDS:
        fig.add_trace(go.Bar(x=[str(L) for L in layers], y=rows[k], name=k,
                             marker_color=_KIND_COLOURS[k]))
    fig.add_trace(go.Scatter(x=[str(L) for L in layers], y=alpha, mode="lines+markers",
                             name="alpha", line={"color": "black"}))
    tok = token_label(attrs[0].token) if attrs else ""
    fig.update_layout(barmode="relative", xaxis_title="layer", yaxis_title="contribution to alpha",
                      title=title or f"alpha decomposed per layer (token '{tok}')")
    return fig


def attribution_layers_plot_mpl(attrs, *, title: str | None = None, ax=None):
    """Static twin of :func:`attribution_layers_plot`."""
    layers, rows, alpha = _attr_layers(attrs)
    fig, ax = _fig_ax(ax, (max(6.0, 0.35 * len(layers) + 3), 4))
    x = np.arange(len(layers))
    pos = np.zeros(len(layers))
    neg = np.zeros(len(layers))
    for k in _KINDS:
        v = np.asarray(rows[k], dtype=float)
        bottom = np.where(v >= 0, pos, neg)
        ax.bar(x, v, bottom=bottom, color=_KIND_COLOURS[k], label=k, width=0.8)
        pos += np.where(v >= 0, v, 0)
        neg += np.where(v < 0, v, 0)
    ax.plot(x, alpha, "ko-", ms=3, label="alpha")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([str(L) for L in layers], fontsize=8)
    ax.set_xlabel("layer")
    ax.set_ylabel("contribution to alpha")
    ax.legend(fontsize=8, ncol=3)
    ax.grid(axis="y", alpha=0.3)
    tok = token_label(attrs[0].token) if attrs else ""
    ax.set_title(title or f"alpha decomposed per layer (token '{tok}')", fontsize=10)
    return fig


def dose_response_plot(d: dict, *, title: str | None = None):
    """Plot the dict of ``analysis.dose_response`` (NLL, and behaviour when present)."""
    fig = dose_response(d["scales"], d["nll"], metric="completion NLL", title=title)
    if "behaviour" in d:
        go = _go()
        fig.add_trace(go.Scatter(x=list(d["scales"]), y=d["behaviour"], mode="lines+markers",
                                 name="behaviour", yaxis="y2"))
        fig.update_layout(yaxis2={"overlaying": "y", "side": "right", "title": "behaviour"})
    return fig


def dose_response_plot_mpl(d: dict, *, title: str | None = None, ax=None):
    """Static twin of :func:`dose_response_plot`."""
    fig = dose_response_mpl(d["scales"], d["nll"], metric="completion NLL", title=title, ax=ax)
    if "behaviour" in d:
        ax2 = fig.axes[0].twinx()
        ax2.plot(list(d["scales"]), d["behaviour"], "s--", color="C1", label="behaviour")
        ax2.set_ylabel("behaviour")
    return fig


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


__all__ = [
    "DIVERGING", "ROBUST_QUANTILE", "attribution_bars", "attribution_bars_mpl", "attribution_layers_plot",
    "attribution_layers_plot_mpl", "attribution_plot", "attribution_plot_mpl", "clean_token",
    "cosine_plot", "cosine_plot_mpl", "dose_response", "dose_response_mpl",
    "dose_response_plot", "dose_response_plot_mpl", "example_matrix", "layer_profile_plot",
    "layer_profile_plot_mpl", "matrix_heatmap", "matrix_heatmap_mpl", "method_similarity_plot",
    "method_similarity_plot_mpl", "probe_accuracy", "probe_accuracy_mpl", "prompts_heatmap",
    "prompts_heatmap_mpl", "prompts_matrix", "save_png", "show_tokens", "similarity_matrix_plot",
    "similarity_matrix_plot_mpl", "similarity_plot", "similarity_plot_mpl", "strength_heatmap",
    "strength_heatmap_mpl", "sweep_curves", "sweep_curves_mpl", "sweep_heatmap",
    "sweep_heatmap_mpl", "sweep_plot", "sweep_plot_mpl", "token_colours", "token_html",
    "token_label", "token_range", "training_curves", "training_curves_mpl",
]
