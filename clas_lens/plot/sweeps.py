"""Figures of a metric against the steering setting: layer sweeps and dose-response.

``sweep_curves`` draws a metric per steered layer (one curve per coefficient),
``sweep_heatmap`` a layer x coefficient grid (the change from the unsteered value
when given a ``baseline``), and ``dose_response`` a metric against the steering
scale. ``sweep_plot`` and ``dose_response_plot`` plot the results of
:mod:`clas_lens.analysis` (``SweepResult`` and the ``dose_response`` dict).
"""

from __future__ import annotations

import numpy as np

from clas_lens.plot._common import _fig_ax, _go, _np
from clas_lens.plot.similarity import matrix_heatmap, matrix_heatmap_mpl


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


# --------------------------------------------------------------------------- dose-response
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


# --------------------------------------------------------------------------- analysis adapters
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
