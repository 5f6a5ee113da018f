"""Figures of a metric against the steering setting: layer sweeps and dose-response.

``sweep_curves`` draws a metric per steered layer (one curve per coefficient),
``sweep_heatmap`` a layer x coefficient grid (the change from the unsteered value
when given a ``baseline``), and ``dose_response_curve`` a metric against the
steering scale. ``sweep_plot`` and ``dose_response_plot`` plot the results of
:mod:`clas_lens.analysis` (``SweepResult`` and the ``analysis.dose_response``
dict). Each draws with plotly (default) or matplotlib (``backend="matplotlib"``).

Example:
    >>> fig = dose_response_curve([0, 1, 2], [3.0, 2.5, 2.8], metric="NLL")
    >>> fig.data[0].y.tolist()
    [3.0, 2.5, 2.8]
    >>> fig = sweep_heatmap([4, 8], [-1.0, 1.0], [[3.0, 2.5], [3.2, 2.9]], baseline=3.0)
    >>> fig.data[0].z.round(2).tolist()  # coefficient x layer: change from the baseline
    [[0.0, 0.2], [-0.5, -0.1]]
"""

from __future__ import annotations

import numpy as np

from clas_lens.plot.common import check_backend, figure_axes, plotly_go, to_numpy
from clas_lens.plot.similarity import matrix_heatmap


def _curve_name(c) -> str:
    return f"c = {c:.3g}" if isinstance(c, (int, float)) else str(c)


# --------------------------------------------------------------------------- layer sweeps
def sweep_curves(layers, values, *, coefficients=None, metric: str = "NLL",
                 title: str | None = None, baseline: float | None = None, labels=None,
                 backend: str = "plotly", ax=None):
    """Layer sweep lines: ``values`` ``[layer]`` (one curve) or ``[layer, coefficient]``
    (one curve per coefficient, named by ``labels`` or the coefficients).
    ``baseline`` draws the unsteered value."""
    check_backend(backend, ax)
    v = to_numpy(values)
    layers = list(layers)
    if v.ndim == 1:
        curves = {metric: v}
    else:
        coefficients = list(range(v.shape[1])) if coefficients is None else list(coefficients)
        names = list(labels) if labels is not None else [_curve_name(c) for c in coefficients]
        curves = {names[k]: v[:, k] for k in range(v.shape[1])}
    title = title or f"layer sweep ({metric})"
    if backend == "plotly":
        go = plotly_go()
        fig = go.Figure([go.Scatter(x=layers, y=y, mode="lines+markers", name=name)
                         for name, y in curves.items()])
        if baseline is not None:
            fig.add_hline(y=baseline, line_dash="dash", line_color="grey",
                          annotation_text="unsteered")
        fig.update_layout(title=title, xaxis_title="layer", yaxis_title=metric)
        return fig
    import matplotlib as mpl

    fig, ax = figure_axes(ax, (7, 4))
    colours = mpl.colormaps["viridis"](np.linspace(0, 0.9, len(curves)))
    for k, (name, y) in enumerate(curves.items()):
        ax.plot(layers, y, "o-", ms=3, color=colours[k] if v.ndim > 1 else None, label=name)
    if baseline is not None:
        ax.axhline(baseline, color="grey", ls="--", lw=1, label="unsteered")
    ax.set_xlabel("layer")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title, fontsize=10)
    return fig


def sweep_heatmap(layers, coefficients, values, *, metric: str = "NLL",
                  baseline: float | None = None, title: str | None = None,
                  vmax: float | None = None, annotate: bool | None = None,
                  backend: str = "plotly", ax=None):
    """Layer x coefficient heatmap of ``values`` ``[layer, coefficient]``. With ``baseline``
    the colour is the change from it (diverging, centred at zero); otherwise a sequential
    scale. The matplotlib figure boxes the lowest value and writes small grids' numbers."""
    check_backend(backend, ax)
    z = to_numpy(values)
    name = metric
    if baseline is not None:
        z = z - baseline
        name = f"Δ {metric} vs unsteered"
    kw = dict(title=title or f"LAS layer sweep: {name}", x_title="layer", value_name=name,
              symmetric=baseline is not None, vmax=vmax)
    xs, ys = [str(L) for L in layers], [f"{c:.3g}" for c in coefficients]
    if backend == "plotly":
        fig = matrix_heatmap(z.T, xs, ys, y_title="coefficient", **kw)
        fig.update_layout(width=max(600, 22 * len(xs) + 250), height=max(350, 30 * len(ys) + 200))
        return fig
    fig = matrix_heatmap(z.T, xs, ys, y_title="coefficient c", annotate=annotate,
                         backend="matplotlib", ax=ax, **kw)
    axis = ax or fig.axes[0]
    if np.isfinite(z).any():
        i, j = np.unravel_index(np.nanargmin(z), z.shape)
        from matplotlib.patches import Rectangle

        axis.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, ec="black", lw=2))
    return fig


# --------------------------------------------------------------------------- dose-response
def dose_response_curve(scales, values, *, metric: str = "value", labels=None,
                        title: str | None = None, backend: str = "plotly", ax=None):
    """A metric against the steering scale; 2-D ``values`` ``[scale, series]`` (one curve each).

    (Computing a dose-response is ``analysis.dose_response``; this only draws.)
    """
    check_backend(backend, ax)
    s = list(to_numpy(scales).reshape(-1))
    v = to_numpy(values).reshape(len(s), -1)
    names = [labels[k] if labels is not None else metric for k in range(v.shape[1])]
    title = title or f"dose-response ({metric})"
    if backend == "plotly":
        go = plotly_go()
        fig = go.Figure([go.Scatter(x=s, y=v[:, k], mode="lines+markers", name=names[k])
                         for k in range(v.shape[1])])
        fig.update_layout(title=title, xaxis_title="steering scale", yaxis_title=metric)
        return fig
    fig, ax = figure_axes(ax, (6, 3.8))
    for k in range(v.shape[1]):
        ax.plot(s, v[:, k], "o-", ms=3.5, label=names[k])
    ax.set_xlabel("steering scale")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------- analysis adapters
def _sweep_title(sw, title):
    if title:
        return title
    return {"las": "LAS, one layer at a time: completion NLL",
            "clas": "CLAS trained at one layer at a time: best valid NLL",
            "clas_cumulative": "CLAS on the first k layers: best valid NLL"}.get(
                sw.kind, f"{sw.kind} sweep")


def sweep_plot(sw, *, relative: bool = True, title: str | None = None,
               vmax: float | None = None, backend: str = "plotly", ax=None):
    """Plot an ``analysis.SweepResult``: layer x coefficient heatmap (LAS, ``relative``:
    change from the unsteered NLL, diverging at zero; ``vmax`` its colour limit) or a
    curve against the layer (CLAS)."""
    nll = to_numpy(sw.nll)
    if nll.ndim == 2:
        return sweep_heatmap(sw.layers, sw.coefficients, nll, metric="NLL",
                             baseline=sw.baseline if relative else None,
                             title=_sweep_title(sw, title), vmax=vmax, backend=backend, ax=ax)
    fig = sweep_curves(sw.layers, nll, metric="NLL", baseline=sw.baseline,
                       title=_sweep_title(sw, title), backend=backend, ax=ax)
    if sw.kind == "clas_cumulative":
        if backend == "plotly":
            fig.update_xaxes(title="number of steered layers k")
        else:
            (ax or fig.axes[0]).set_xlabel("number of steered layers k")
    return fig


def dose_response_plot(d: dict, *, title: str | None = None, backend: str = "plotly", ax=None):
    """Plot the dict of ``analysis.dose_response`` (NLL, and behaviour on a second axis)."""
    fig = dose_response_curve(d["scales"], d["nll"], metric="completion NLL", title=title,
                              backend=backend, ax=ax)
    if "behaviour" not in d:
        return fig
    if backend == "plotly":
        go = plotly_go()
        fig.add_trace(go.Scatter(x=list(d["scales"]), y=d["behaviour"], mode="lines+markers",
                                 name="behaviour", yaxis="y2"))
        fig.update_layout(yaxis2={"overlaying": "y", "side": "right", "title": "behaviour"})
        return fig
    ax2 = (ax or fig.axes[0]).twinx()
    ax2.plot(list(d["scales"]), d["behaviour"], "s--", color="C1", label="behaviour")
    ax2.set_ylabel("behaviour")
    return fig
