"""Shared plumbing of the figure modules: arrays, backends, colour scales, figure factories.

Plotly and matplotlib are imported inside the functions, so importing
:mod:`clas_lens.plot` stays cheap: :func:`plotly_go` returns ``plotly.graph_objects``,
and :func:`new_figure`/:func:`figure_axes` make constrained-layout matplotlib figures
without pyplot (no GUI backend, nothing left open). Signed values are drawn on the
zero-centred diverging scales :data:`DIVERGING` (plotly) and :data:`DIVERGING_MPL`
(matplotlib, with :func:`two_slope_norm`); :func:`save_png` writes a matplotlib
figure to a file.

Example:
    >>> symmetric_range([-3.0, 1.0], [float("nan"), 2.0])
    3.0
    >>> check_backend("mpl")
    Traceback (most recent call last):
    ...
    ValueError: backend must be one of ('plotly', 'matplotlib'), got 'mpl'
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

#: plotly diverging scale (blue = negative, white = 0, red = positive).
DIVERGING = "RdBu_r"
#: matplotlib diverging colormap.
DIVERGING_MPL = "RdBu_r"
#: colour of cells left out of the colour scale (position 0, the system prompt).
GREY = "#c8c8c8"
#: the figure libraries every view can draw with.
BACKENDS = ("plotly", "matplotlib")


# --------------------------------------------------------------------------- arrays
def to_numpy(x) -> np.ndarray:
    """A float numpy array of a tensor, array or list (``None`` is an error)."""
    if x is None:
        raise ValueError("no values to plot (None)")
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def symmetric_range(*arrays, floor: float = 1e-8) -> float:
    """max |value| over finite entries (at least ``floor``), for a zero-centred scale."""
    m = 0.0
    for a in arrays:
        a = np.asarray(a, dtype=float)
        a = a[np.isfinite(a)]
        if a.size:
            m = max(m, float(np.abs(a).max()))
    return max(m, floor)


def series(values, layers=None) -> tuple[list, np.ndarray]:
    """``(layers, values)`` of a per-layer series, checking that their lengths agree."""
    v = to_numpy(values).reshape(-1)
    layers = list(range(len(v))) if layers is None else list(layers)
    if len(layers) != len(v):
        raise ValueError(f"{len(v)} values for {len(layers)} layers")
    return layers, v


# --------------------------------------------------------------------------- backends
def check_backend(backend: str, ax=None) -> str:
    """Validate ``backend`` (and that ``ax`` is only given with matplotlib)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if ax is not None and backend != "matplotlib":
        raise ValueError("ax= is a matplotlib axes: pass backend='matplotlib' with it")
    return backend


def deprecated_alias(old: str, func, **fixed):
    """``func`` under its old name: same call, plus a ``DeprecationWarning`` naming the new call."""
    extra = "".join(f", {k}={v!r}" for k, v in fixed.items())
    message = f"plot.{old} is deprecated; use plot.{func.__name__}(...{extra})"

    @functools.wraps(func)
    def alias(*args, **kwargs):
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return func(*args, **{**fixed, **kwargs})

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated: {message}."
    return alias


# --------------------------------------------------------------------------- figures
def plotly_go():
    """``plotly.graph_objects`` (imported on first use)."""
    import plotly.graph_objects as go

    return go


def new_figure(figsize):
    """A constrained-layout matplotlib figure, made without pyplot."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def figure_axes(ax, figsize):
    """A new figure with one axes, or the given axes and its figure."""
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(figsize)
    return fig, fig.add_subplot()


def two_slope_norm(vmax: float):
    """A matplotlib norm centred at zero with limits ``-vmax, vmax``."""
    from matplotlib.colors import TwoSlopeNorm

    return TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)


def save_png(fig, path, *, dpi: int = 110) -> str:
    """Write a matplotlib figure to ``path`` as a PNG (folders created) and return the path.

    The image is rendered in memory first and written atomically, so a failed
    drawing leaves no half-written file.
    """
    import io

    from clas_lens.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)
