"""Figures of why a strength fires: signed contributions to one token's alpha.

``attribution_bars`` draws named contributions as signed bars (largest on top);
``attribution_plot`` plots an ``analysis.Attribution`` (``alpha = b + sum of
w.component``) that way, and ``attribution_layers_plot`` stacks a list of them,
one per layer, into embed / attention / MLP / earlier steering / bias.
"""

from __future__ import annotations

import numpy as np

from clas_lens.plot._common import _fig_ax, _go, _np
from clas_lens.plot.tokens import token_label


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


# --------------------------------------------------------------------------- analysis adapters
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
