"""Figures of fitting: steerer training curves and probe accuracy per layer.

``training_curves`` plots a :class:`~clas_lens.training.TrainHistory` (completion
loss, parameter norms); ``probe_accuracy`` the held-out accuracy per layer of one
or more :class:`~clas_lens.directions.Directions`, against chance. Each draws with
plotly (default) or matplotlib (``backend="matplotlib"``).

Example:
    >>> from clas_lens.training import TrainHistory
    >>> h = TrainHistory(steps=[{"epoch": 1, "train_loss": 3.0}, {"epoch": 1, "train_loss": 2.0}],
    ...                  valid=[{"epoch": 1, "valid_loss": 2.5}], best_epoch=1)
    >>> [(t.name, list(t.y)) for t in training_curves(h).data]
    [('train', [3.0, 2.0]), ('valid', [2.5])]
"""

from __future__ import annotations

import numpy as np

from clas_lens.plot.common import check_backend, figure_axes, new_figure, plotly_go, to_numpy


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


def training_curves(history, *, title: str | None = None, backend: str = "plotly"):
    """Loss (train per step, valid per epoch) and parameter norms of a
    :class:`~clas_lens.training.TrainHistory` (two panels; ``backend``: plotly or matplotlib)."""
    check_backend(backend)
    h = _history_series(history)
    if backend == "matplotlib":
        return _training_curves_mpl(h, title)
    from plotly.subplots import make_subplots

    go = plotly_go()
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


def _training_curves_mpl(h, title):
    fig = new_figure((10, 3.8))
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
    return {name: (list(d.layers), to_numpy(d.accuracy)) for name, d in items}


def probe_accuracy(directions, *, title: str | None = None, backend: str = "plotly", ax=None):
    """Held-out probe accuracy per layer of one :class:`Directions`, a list of them,
    or a ``{name: Directions}`` dict; the dashed line is chance (0.5)."""
    check_backend(backend, ax)
    curves = _accuracy_series(directions)
    if backend == "matplotlib":
        return _probe_accuracy_mpl(curves, title, ax)
    go = plotly_go()
    fig = go.Figure()
    for name, (layers, acc) in curves.items():
        fig.add_trace(go.Scatter(x=layers, y=acc, mode="lines+markers", name=name,
                                 hovertemplate="layer %{x}<br>accuracy %{y:.3f}<extra></extra>"))
    fig.add_hline(y=0.5, line_dash="dash", line_color="grey", annotation_text="chance")
    fig.update_layout(title=title or "probe accuracy per layer (held out)", xaxis_title="layer",
                      yaxis_title="accuracy", yaxis_range=[0, 1.05])
    return fig


def _probe_accuracy_mpl(curves, title, ax):
    fig, ax = figure_axes(ax, (7, 3.8))
    styles = ["o-", "s--", "^-.", "v:", "D-", "x--"]
    for k, (name, (layers, acc)) in enumerate(curves.items()):
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
