"""Views of one steerer on one page: probe accuracy beside the strength per layer, the strength
against the projection it reads, and a second steerer's strengths beside CLAS's.

Each function takes tensors or result objects and returns a plotly figure (used by
:mod:`clas_lens.reporting`).

Example:
    >>> import torch
    >>> fig = accuracy_and_strength([0, 1], torch.tensor([0.6, 0.9]), torch.tensor([0.1, 0.3]))
    >>> [t.name for t in fig.data]
    ['probe accuracy (held out)', 'mean |alpha|']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clas_lens.plot.common import to_numpy


def accuracy_and_strength(layers: Sequence[int], accuracy, mean_abs, *, title: str | None = None):
    """Held-out probe accuracy (left axis) and mean ``|alpha|`` (right axis) per layer.

    Args:
        layers: the layers of both series.
        accuracy: ``[layer]`` probe accuracy, or ``None`` to draw only the strength.
        mean_abs: ``[layer]`` mean ``|alpha|`` (e.g. ``analysis.layer_profile``).
        title: figure title.
    """
    import plotly.graph_objects as go

    x = [int(L) for L in layers]
    fig = go.Figure()
    if accuracy is not None:
        fig.add_trace(go.Scatter(x=x, y=to_numpy(accuracy), mode="lines+markers",
                                 name="probe accuracy (held out)",
                                 hovertemplate="layer %{x}<br>accuracy %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Bar(x=x, y=to_numpy(mean_abs), name="mean |alpha|", yaxis="y2", opacity=0.45,
                         marker_color="#b2182b",
                         hovertemplate="layer %{x}<br>mean |alpha| %{y:.3g}<extra></extra>"))
    fig.update_layout(title=title or "probe accuracy and mean |alpha| per layer", xaxis_title="layer",
                      yaxis={"title": "accuracy", "range": [0, 1.05]},
                      yaxis2={"title": "mean |alpha|", "overlaying": "y", "side": "right",
                              "rangemode": "tozero"},
                      legend={"orientation": "h", "y": -0.25}, barmode="overlay")
    return fig


def strength_vs_projection(result, *, skip_first: bool = True, title: str | None = None):
    """Scatter of the strength ``alpha`` against the projection ``h.v`` it was computed from.

    One point per real token and steered layer of a
    :class:`~clas_lens.tracing.GenerationResult`, coloured by layer; position 0 (the attention
    sink, whose projection is an outlier) is left out when ``skip_first``. A line through the
    points would mean ``alpha`` only reads the concept already present; spread means it reads more.
    """
    import plotly.graph_objects as go

    if result.strengths is None or result.projections is None:
        raise ValueError("the result has no strengths/projections (unsteered, or a steerer without them)")
    s, p = to_numpy(result.strengths), to_numpy(result.projections)
    if s.ndim == 4:
        s, p = s[..., 0], p[..., 0]
    mask = to_numpy(result.mask).astype(bool)
    if skip_first:
        mask[:, 0] = False
    xs, ys, cs, txt = [], [], [], []
    for i in range(len(result.prompts)):
        toks = result.str_tokens[i]
        for t in np.flatnonzero(mask[i]):
            for j, L in enumerate(result.layers):
                xs.append(p[i, t, j])
                ys.append(s[i, t, j])
                cs.append(L)
                txt.append(f"{toks[t]!r} (example {i}, pos {t})")
    fig = go.Figure(go.Scatter(
        x=xs, y=ys, mode="markers", text=txt,
        marker={"color": cs, "colorscale": "Viridis", "size": 4, "opacity": 0.6,
                "colorbar": {"title": "layer"}},
        hovertemplate="%{text}<br>h·v %{x:.4g}<br>alpha %{y:.4g}<extra></extra>"))
    fig.update_layout(title=title or "alpha against the projection h·v, per token and layer",
                      xaxis_title="projection h·v (before steering)", yaxis_title="alpha")
    return fig


def strengths_beside(comparison, names: Sequence[str] = ("CLAS", "other"), *, title: str | None = None):
    """Two steerers' strengths on the same tokens, per layer (an ``analysis.StrengthComparison``).

    Solid: mean signed strength; dashed: mean ``|strength|``; the title gives the
    correlation over all shared (token, layer) cells.
    """
    import plotly.graph_objects as go

    c = comparison
    x = [int(L) for L in c.layers]
    fig = go.Figure()
    for name, mean, mean_abs, colour in ((names[0], c.mean_a, c.mean_abs_a, "#b2182b"),
                                         (names[1], c.mean_b, c.mean_abs_b, "#2166ac")):
        fig.add_trace(go.Scatter(x=x, y=to_numpy(mean), mode="lines+markers", name=f"{name}: mean",
                                 line={"color": colour}))
        fig.add_trace(go.Scatter(x=x, y=to_numpy(mean_abs), mode="lines", name=f"{name}: mean |.|",
                                 line={"color": colour, "dash": "dash"}))
    fig.add_hline(y=0, line_color="grey", line_width=1)
    corr = f"{c.corr_all:.2f}" if np.isfinite(c.corr_all) else "n/a (a constant strength)"
    fig.update_layout(title=title or f"{names[0]} vs {names[1]} strength per layer on the same "
                                     f"{c.n_tokens} tokens (correlation {corr})",
                      xaxis_title="layer", yaxis_title="strength",
                      legend={"orientation": "h", "y": -0.25})
    return fig


__all__ = ["accuracy_and_strength", "strength_vs_projection", "strengths_beside"]
