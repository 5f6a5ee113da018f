"""Shared plumbing of the figure modules: arrays, colour scales and figure factories.

Plotly and matplotlib are imported inside the functions, so importing
:mod:`clas_lens.plot` stays cheap: ``_go()`` returns ``plotly.graph_objects``, and
``_new_figure``/``_fig_ax`` make constrained-layout matplotlib figures without pyplot
(no GUI backend, nothing left open). Signed values are drawn on the zero-centred
diverging scales :data:`DIVERGING` (plotly) and :data:`DIVERGING_MPL` (matplotlib,
with ``_two_slope``); ``save_png`` writes a matplotlib figure to a file.
"""

from __future__ import annotations

import numpy as np

#: plotly diverging scale (blue = negative, white = 0, red = positive).
DIVERGING = "RdBu_r"
#: matplotlib diverging colormap.
DIVERGING_MPL = "RdBu_r"


# --------------------------------------------------------------------------- arrays
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


def _series(values, layers=None) -> tuple[list, np.ndarray]:
    v = _np(values).reshape(-1)
    layers = list(range(len(v))) if layers is None else list(layers)
    if len(layers) != len(v):
        raise ValueError(f"{len(v)} values for {len(layers)} layers")
    return layers, v


# --------------------------------------------------------------------------- figures
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


def save_png(fig, path, *, dpi: int = 110) -> str:
    """Write a matplotlib figure to ``path`` (folders created) and return the path."""
    import os

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return str(path)
