"""Figures of cosine similarities: per-layer curves with a null band, and matrices.

``similarity_plot`` (values per layer, a grey null band) and ``matrix_heatmap``
(a labelled heatmap, zero-centred when ``symmetric``; the sweep heatmaps build on
it) take plain arrays. ``cosine_plot``, ``similarity_matrix_plot`` and
``method_similarity_plot`` plot the results of :mod:`clas_lens.analysis`
(``CosineResult``, ``SimilarityMatrix``, ``MethodSimilarity``). Each draws with
plotly (default) or matplotlib (``backend="matplotlib"``).

Example:
    >>> fig = similarity_plot([0, 1, 2], [0.1, 0.5, -0.2], null_low=[-0.1] * 3,
    ...                       null_high=[0.1] * 3)
    >>> [t.name for t in fig.data]
    ['null band', 'cosine']
    >>> fig = matrix_heatmap([[1.0, -0.5], [0.2, 0.3]], backend="matplotlib")
    >>> fig.axes[0].images[0].norm.vmin
    -1.0
"""

from __future__ import annotations

import math

import numpy as np

from clas_lens.plot.common import (
    DIVERGING,
    DIVERGING_MPL,
    check_backend,
    figure_axes,
    plotly_go,
    series,
    symmetric_range,
    to_numpy,
    two_slope_norm,
)


# --------------------------------------------------------------------------- lines with bands
def similarity_plot(layers, values, *, null_low=None, null_high=None, label: str = "cosine",
                    title: str | None = None, extra: dict | None = None,
                    backend: str = "plotly", ax=None):
    """Cosine similarity per layer with an optional null band.

    Args:
        layers: the layer of each value.
        values: similarity per layer.
        null_low, null_high: the null band (e.g. 2.5% / 97.5% quantiles of random pairs).
        label: legend name of ``values``.
        title: figure title.
        extra: further ``{name: values}`` series on the same layers.
        backend: ``"plotly"`` or ``"matplotlib"``.
        ax: matplotlib axes to draw into (matplotlib only).
    """
    check_backend(backend, ax)
    layers, v = series(values, layers)
    band = None
    if null_low is not None and null_high is not None:
        band = to_numpy(null_low).reshape(-1), to_numpy(null_high).reshape(-1)
    extras = {name: series(vals, layers)[1] for name, vals in (extra or {}).items()}
    title = title or "cosine similarity per layer"
    if backend == "plotly":
        return _similarity_plotly(layers, v, band, label, title, extras)
    return _similarity_mpl(layers, v, band, label, title, extras, ax)


def _similarity_plotly(layers, v, band, label, title, extras):
    go = plotly_go()
    fig = go.Figure()
    if band is not None:
        lo, hi = band
        fig.add_trace(go.Scatter(x=layers + layers[::-1], y=list(hi) + list(lo[::-1]),
                                 fill="toself", fillcolor="rgba(128,128,128,0.25)",
                                 line={"width": 0}, name="null band", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=layers, y=v, mode="lines+markers", name=label,
                             hovertemplate="layer %{x}<br>%{y:.4f}<extra>" + label + "</extra>"))
    for name, e in extras.items():
        fig.add_trace(go.Scatter(x=layers, y=e, mode="lines+markers", name=name))
    fig.add_hline(y=0, line_color="black", line_width=1)
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title="cosine similarity",
                      yaxis_range=[-1.05, 1.05])
    return fig


def _similarity_mpl(layers, v, band, label, title, extras, ax):
    fig, ax = figure_axes(ax, (7, 4))
    if band is not None:
        ax.fill_between(layers, band[0], band[1], color="grey", alpha=0.3, lw=0, label="null band")
    ax.plot(layers, v, "o-", ms=3.5, label=label)
    for name, e in extras.items():
        ax.plot(layers, e, "s--", ms=3, label=name)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("layer")
    ax.set_ylabel("cosine similarity")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------- matrices
def matrix_heatmap(matrix, x_labels=None, y_labels=None, *, title: str | None = None,
                   x_title: str = "layer", y_title: str = "layer", value_name: str = "cosine",
                   symmetric: bool = True, cmap: str | None = None, vmax: float | None = None,
                   annotate: bool | None = None, fmt: str = ".2f", backend: str = "plotly",
                   ax=None, colorscale: str | None = None):
    """A labelled heatmap; zero-centred diverging scale (limit ``vmax``, default max |value|)
    when ``symmetric``, else a sequential one.

    ``cmap`` (or its plotly name ``colorscale``) picks the colour scale; ``annotate``
    writes the values in the cells with ``fmt`` (matplotlib; default: up to 150 cells).
    """
    check_backend(backend, ax)
    z = to_numpy(matrix)
    xs = [str(x) for x in (x_labels if x_labels is not None else range(z.shape[1]))]
    ys = [str(y) for y in (y_labels if y_labels is not None else range(z.shape[0]))]
    lim = (symmetric_range(z) if vmax is None else float(vmax)) if symmetric else None
    scale = cmap or colorscale
    if backend == "plotly":
        return _matrix_plotly(z, xs, ys, title, x_title, y_title, value_name, lim, scale)
    if annotate is None:
        annotate = z.size <= 150
    return _matrix_mpl(z, xs, ys, title, x_title, y_title, value_name, lim, scale, annotate,
                       fmt, ax)


def _matrix_plotly(z, xs, ys, title, x_title, y_title, value_name, lim, scale):
    go = plotly_go()
    if lim is not None:
        kw = {"zmid": 0.0, "zmin": -lim, "zmax": lim, "colorscale": scale or DIVERGING}
    else:
        kw = {"colorscale": scale or "Viridis"}
    fig = go.Figure(go.Heatmap(
        z=z, x=xs, y=ys, colorbar={"title": value_name},
        hovertemplate=f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>{value_name} %{{z:.4g}}"
                      "<extra></extra>", **kw))
    fig.update_xaxes(title=x_title, type="category")
    fig.update_yaxes(title=y_title, type="category")
    fig.update_layout(title=title or "", width=650, height=600)
    return fig


def _matrix_mpl(z, xs, ys, title, x_title, y_title, value_name, lim, scale, annotate, fmt, ax):
    fig, ax = figure_axes(ax, (max(5.0, 0.3 * len(xs) + 2.5), max(4.0, 0.28 * len(ys) + 1.8)))
    if lim is not None:
        im = ax.imshow(z, cmap=scale or DIVERGING_MPL, norm=two_slope_norm(lim),
                       aspect="auto", interpolation="nearest", origin="lower")
    else:
        im = ax.imshow(z, cmap=scale or "viridis", aspect="auto", interpolation="nearest",
                       origin="lower")
    if annotate:
        for i in range(z.shape[0]):
            for j in range(z.shape[1]):
                if np.isfinite(z[i, j]):
                    dark = lim is not None and abs(z[i, j]) > 0.6 * lim
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
    big = lim is not None and np.nanmax(np.abs(z), initial=0) > lim * (1 + 1e-9)
    fig.colorbar(im, ax=ax, label=value_name, pad=0.01, extend="both" if big else "neither")
    ax.set_title(title or "", fontsize=10)
    return fig


# --------------------------------------------------------------------------- analysis adapters
def _cos_args(res, title):
    items = list(res) if isinstance(res, (list, tuple)) else [res]
    first = items[0]

    def label(r):
        return f"cos({r.labels[0]}, {r.labels[1]})"

    null = first.null
    n = len(first.layers)
    kind = f"{null.kind} null, 95%" if getattr(null, "kind", "") else "null, 95%"
    return dict(layers=first.layers, values=first.cos, null_low=[null.lo] * n,
                null_high=[null.hi] * n, label=label(first),
                extra={label(r): r.cos for r in items[1:]},
                title=title or f"{label(first)} per layer (grey: {kind}, d={null.d})")


def cosine_plot(res, *, title: str | None = None, backend: str = "plotly", ax=None):
    """Plot an ``analysis.CosineResult`` (or a list of them on the same layers) with its null band."""
    a = _cos_args(res, title)
    return similarity_plot(a.pop("layers"), a.pop("values"), backend=backend, ax=ax, **a)


def similarity_matrix_plot(sm, *, title: str | None = None, backend: str = "plotly", ax=None):
    """Plot an ``analysis.SimilarityMatrix`` (layer x layer cosine, zero-centred)."""
    null = sm.null
    title = title or (f"layer x layer cosine of directions (null 95% band "
                      f"[{null.lo:.2f}, {null.hi:.2f}], d={null.d})")
    return matrix_heatmap(sm.matrix, sm.layers, sm.layers, title=title, annotate=False,
                          backend=backend, ax=ax)


def _method_args(ms, title):
    """Arguments of :func:`similarity_plot` for every pair of an ``analysis.MethodSimilarity``."""
    pairs = {}
    for i in range(len(ms.names)):
        for j in range(i + 1, len(ms.names)):
            pairs[f"{ms.names[i]} vs {ms.names[j]}"] = to_numpy(ms.cos[i, j])
    names = list(pairs)
    n = len(ms.layers)
    return dict(layers=ms.layers, values=pairs[names[0]], null_low=[ms.null.lo] * n,
                null_high=[ms.null.hi] * n, label=names[0],
                extra={k: pairs[k] for k in names[1:]},
                title=title or "cosine between direction sets per layer")


def method_similarity_plot(ms, *, title: str | None = None, backend: str = "plotly", ax=None):
    """Per-layer cosine of every pair in an ``analysis.MethodSimilarity``, with the null band."""
    a = _method_args(ms, title)
    return similarity_plot(a.pop("layers"), a.pop("values"), backend=backend, ax=ax, **a)
