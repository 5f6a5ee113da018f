"""Figures of why a strength fires: signed contributions to one token's alpha.

``attribution_bars`` draws named contributions as signed bars (largest on top);
``attribution_plot`` plots an ``analysis.Attribution`` (``alpha = b + sum of
w.component``) that way, and ``attribution_layers_plot`` stacks a list of them,
one per layer, into embed / attention / MLP / earlier steering / bias. Each draws
with plotly (default) or matplotlib (``backend="matplotlib"``).

Example:
    >>> fig = attribution_bars(["L0.H1", "L2.mlp", "embed"], [0.1, -0.7, 0.3], top=2)
    >>> list(fig.data[0].y), fig.data[0].x.tolist()
    (['L2.mlp', 'embed'], [-0.7, 0.3])
"""

from __future__ import annotations

import numpy as np

from clas_lens.plot.common import check_backend, figure_axes, plotly_go, to_numpy
from clas_lens.plot.tokens import token_label

_UP, _DOWN = "#b2182b", "#2166ac"


def _sorted_contributions(names, values, top):
    v = to_numpy(values).reshape(-1)
    names = [str(n) for n in names]
    if len(names) != len(v):
        raise ValueError(f"{len(names)} names for {len(v)} values")
    order = np.argsort(-np.abs(v), kind="stable")
    if top is not None:
        order = order[:top]
    return [names[i] for i in order], v[order]


# --------------------------------------------------------------------------- attribution
def attribution_bars(names, values, *, total: float | None = None, top: int | None = 20,
                     title: str | None = None, value_name: str = "contribution to alpha",
                     backend: str = "plotly", ax=None):
    """Horizontal bars of signed contributions, largest |value| on top (at most ``top``);
    red pushes alpha up, blue down. ``total`` is shown in the title."""
    check_backend(backend, ax)
    names, v = _sorted_contributions(names, values, top)
    colours = [_UP if x > 0 else _DOWN for x in v]
    t = (title or "attribution") + (f" (alpha = {total:+.4g})" if total is not None else "")
    if backend == "plotly":
        go = plotly_go()
        fig = go.Figure(go.Bar(x=v, y=names, orientation="h", marker_color=colours,
                               hovertemplate="%{y}<br>%{x:+.4g}<extra></extra>"))
        fig.add_vline(x=0, line_color="black", line_width=1)
        fig.update_yaxes(autorange="reversed")
        fig.update_layout(title=t, xaxis_title=value_name, height=max(300, 22 * len(names) + 150))
        return fig
    fig, ax = figure_axes(ax, (7, max(2.5, 0.28 * len(names) + 1.2)))
    y = np.arange(len(names))
    ax.barh(y, v, color=colours)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel(value_name)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(t, fontsize=10)
    return fig


# --------------------------------------------------------------------------- analysis adapters
def attribution_plot(attr, *, top: int | None = 20, grouped: bool = False,
                     title: str | None = None, backend: str = "plotly", ax=None):
    """Bars of an ``analysis.Attribution``: ``alpha = b + sum of w.component``;
    ``grouped`` sums heads/MLPs into embed/attn/mlp/steer."""
    contrib = attr.grouped() if grouped else dict(attr.contributions)
    names = list(contrib) + ["bias b"]
    values = list(contrib.values()) + [attr.bias]
    t = title or f"why alpha: layer {attr.layer}, token {attr.position} '{token_label(attr.token)}'"
    return attribution_bars(names, values, total=attr.alpha, top=top, title=t, backend=backend,
                            ax=ax)


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


def attribution_layers_plot(attrs, *, title: str | None = None, backend: str = "plotly", ax=None):
    """Stacked bars per layer of a list of ``analysis.Attribution`` (one token): how much
    embed / attention / MLP / earlier steering / bias make up alpha, with alpha as a line."""
    check_backend(backend, ax)
    layers, rows, alpha = _attr_layers(attrs)
    tok = token_label(attrs[0].token) if attrs else ""
    title = title or f"alpha decomposed per layer (token '{tok}')"
    xs = [str(L) for L in layers]
    if backend == "plotly":
        go = plotly_go()
        fig = go.Figure([go.Bar(x=xs, y=rows[k], name=k, marker_color=_KIND_COLOURS[k])
                         for k in _KINDS])
        fig.add_trace(go.Scatter(x=xs, y=alpha, mode="lines+markers", name="alpha",
                                 line={"color": "black"}))
        fig.update_layout(barmode="relative", xaxis_title="layer",
                          yaxis_title="contribution to alpha", title=title)
        return fig
    fig, ax = figure_axes(ax, (max(6.0, 0.35 * len(layers) + 3), 4))
    x = np.arange(len(layers))
    pos = np.zeros(len(layers))
    neg = np.zeros(len(layers))
    for k in _KINDS:
        v = np.asarray(rows[k], dtype=float)
        ax.bar(x, v, bottom=np.where(v >= 0, pos, neg), color=_KIND_COLOURS[k], label=k, width=0.8)
        pos += np.where(v >= 0, v, 0)
        neg += np.where(v < 0, v, 0)
    ax.plot(x, alpha, "ko-", ms=3, label="alpha")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(xs, fontsize=8)
    ax.set_xlabel("layer")
    ax.set_ylabel("contribution to alpha")
    ax.legend(fontsize=8, ncol=3)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return fig
