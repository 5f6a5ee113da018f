"""Figures of cosine similarities: per-layer curves with a null band, and matrices.

``similarity_plot`` (values per layer, a grey null band) and ``matrix_heatmap``
(a labelled heatmap, zero-centred when ``symmetric``; the sweep heatmaps build on
it) take plain arrays. ``cosine_plot``, ``similarity_matrix_plot`` and
``method_similarity_plot`` plot the results of :mod:`clas_lens.analysis`
(``CosineResult``, ``SimilarityMatrix``, ``MethodSimilarity``).
"""

from __future__ import annotations

import math

import numpy as np

from clas_lens.plot._common import (
    DIVERGING,
    DIVERGING_MPL,
    _fig_ax,
    _go,
    _np,
    _series,
    _symmetric_range,
    _two_slope,
)


# --------------------------------------------------------------------------- lines with bands
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


def _method_args(ms, title):
    """Arguments of :func:`similarity_plot` for every pair of an ``analysis.MethodSimilarity``."""
    pairs = {}
    for i in range(len(ms.names)):
        for j in range(i + 1, len(ms.names)):
            pairs[f"{ms.names[i]} vs {ms.names[j]}"] = _np(ms.cos[i, j])
    names = list(pairs)
    n = len(ms.layers)
    return dict(layers=ms.layers, values=pairs[names[0]], null_low=[ms.null.lo] * n,
                null_high=[ms.null.hi] * n, label=names[0],
                extra={k: pairs[k] for k in names[1:]},
                title=title or "cosine between direction sets per layer")


def method_similarity_plot(ms, *, title: str | None = None):
    """Per-layer cosine of every pair in an ``analysis.MethodSimilarity``, with the null band."""
    a = _method_args(ms, title)
    return similarity_plot(a.pop("layers"), a.pop("values"), **a)


def method_similarity_plot_mpl(ms, *, title: str | None = None, ax=None):
    """Static twin of :func:`method_similarity_plot`."""
    a = _method_args(ms, title)
    return similarity_plot_mpl(a.pop("layers"), a.pop("values"), ax=ax, **a)
