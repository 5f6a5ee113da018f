"""Token text and token-level values of a trace, and tokens shaded by their strength.

Token strings come readable from the tokenizer (``GenerationResult.str_tokens``);
``token_label`` only makes them one-line axis labels. ``example_matrix`` cuts one
example's ``[pos, layer]`` values out of a :class:`~clas_lens.tracing.GenerationResult`.

Colour limits of token-level values follow one rule (:func:`colour_limit`): the
cells of :func:`special_positions` (position 0, an attention sink whose residual
norm and hence strength is an outlier, and the chat template's leading system turn)
are left out, and the limit is the 99th percentile of ``|value|`` of the rest, so a
few extreme cells do not wash out the structure. The left-out cells are drawn grey.

``token_html`` (shown in a notebook by ``show_tokens``) writes an example's tokens
as HTML, each shaded on the diverging scale by its strength.

Example:
    >>> toks = ["<|im_start|>", "system", "\\n", "Be nice", "<|im_end|>", "\\n",
    ...         "<|im_start|>", "user", "\\n", "Hi"]
    >>> special_positions(toks).nonzero()[0].tolist()
    [0, 1, 2, 3, 4, 5]
    >>> [token_label(t) for t in toks[5:]]
    ['↵', '<|im_start|>', 'user', '↵', 'Hi']
    >>> colour_limit([[-300.0, 1.0, -2.0]], exclude=[True, False, False], quantile=None)
    2.0
"""

from __future__ import annotations

import html as _html
from collections.abc import Sequence

import numpy as np

from clas_lens.plot.common import DIVERGING_MPL, GREY, symmetric_range, to_numpy, two_slope_norm


# --------------------------------------------------------------------------- token text
def token_label(tok: str) -> str:
    """A compact one-line axis label for a token (newline as ``↵``, leading space as ``·``)."""
    t = str(tok).replace("\n", "↵").replace("\t", "⇥").replace("\r", "")
    if t.startswith(" "):
        t = "·" + t[1:]
    return t if t else "∅"


def _is_marker(tok: str) -> bool:
    """A chat-template marker token such as ``<|im_start|>`` or ``<s>``."""
    return tok.startswith("<") and tok.endswith(">") and len(tok) > 2


def special_positions(tokens: Sequence[str]) -> np.ndarray:
    """Positions to leave out of colour limits: position 0 and a leading system turn.

    Position 0 (BOS, or the first template token) is an attention sink. A system turn
    is recognised from the token strings alone: a template marker among the first two
    tokens (``<|im_start|>``, ``<|start_header_id|>``) followed by the role ``system``;
    the turn runs up to the next occurrence of that marker (the user turn), so a
    default system prompt added by the chat template is covered.

    Args:
        tokens: one example's token strings (``GenerationResult.str_tokens[i]``).

    Returns:
        A boolean numpy array ``[pos]``, True at the special positions.
    """
    toks = [str(t) for t in tokens]
    out = np.zeros(len(toks), dtype=bool)
    if not toks:
        return out
    out[0] = True
    for s in range(min(2, len(toks))):
        if not _is_marker(toks[s]):
            continue
        role = ""
        for t in toks[s + 1:s + 10]:
            if _is_marker(t) or "\n" in t:
                break
            role += t
        if role.strip().lower() != "system":
            continue
        nxt = [k for k in range(s + 1, len(toks)) if toks[k] == toks[s]]
        if nxt:
            out[: nxt[0]] = True
        break
    return out


def clean_token(tok: str) -> str:
    """Deprecated: ``GenerationResult.str_tokens`` are readable text already; returns ``tok``."""
    import warnings

    warnings.warn("plot.clean_token is deprecated: token strings come readable from the "
                  "tokenizer (GenerationResult.str_tokens); use plot.token_label for axis labels",
                  DeprecationWarning, stacklevel=2)
    return str(tok)


# --------------------------------------------------------------------------- colour limits
#: quantile of |value| that sets the colour limit of token-level plots.
ROBUST_QUANTILE = 0.99


def colour_limit(values, exclude=None, *, quantile: float | None = ROBUST_QUANTILE) -> float:
    """Symmetric colour limit of ``values``: the ``quantile`` of ``|value|`` outside ``exclude``.

    Args:
        values: any array of values (NaN cells are ignored).
        exclude: boolean mask broadcastable to ``values``, True at cells left out
            (e.g. :func:`special_positions`); when it leaves nothing, all cells count.
        quantile: e.g. 0.99; ``None`` takes the maximum.

    Returns:
        A positive float (at least 1e-8; the maximum when the quantile is 0).
    """
    a = np.asarray(values, dtype=float)
    keep = np.isfinite(a)
    if exclude is not None:
        inside = keep & ~np.broadcast_to(np.asarray(exclude, dtype=bool), a.shape)
        if inside.any():
            keep = inside
    a = np.abs(a[keep])
    if a.size == 0:
        return 1e-8
    v = float(np.quantile(a, quantile)) if quantile is not None else float(a.max())
    return max(v if v > 0 else float(a.max()), 1e-8)


def token_range(values, *, skip_first: bool = True, quantile: float | None = ROBUST_QUANTILE
                ) -> float:
    """Symmetric colour limit of ``[..., pos]`` values, leaving out position 0 when ``skip_first``.

    :func:`colour_limit` with only the first position (last axis) excluded.
    """
    a = np.asarray(values, dtype=float)
    exclude = None
    if skip_first and a.ndim >= 1 and a.shape[-1] > 1:
        exclude = np.zeros(a.shape[-1], dtype=bool)
        exclude[0] = True
    return colour_limit(a, exclude, quantile=quantile)


# --------------------------------------------------------------------------- token-level values
def layer_columns(result, layers: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """(layer ids, column indices into the result's layer axis) of ``layers`` (None: all)."""
    all_layers = list(getattr(result, "layers", []) or [])
    if not all_layers:
        n = to_numpy(result.strengths).shape[2]
        all_layers = list(range(n))
    if layers is None:
        return all_layers, list(range(len(all_layers)))
    cols = []
    for L in layers:
        if L not in all_layers:
            raise ValueError(f"layer {L} was not steered; the result has layers {all_layers}")
        cols.append(all_layers.index(L))
    return list(layers), cols


def values_of(result, which: str = "strengths") -> np.ndarray:
    """``[batch, pos, layer]`` numpy values of a result (rank > 1: summed over the components)."""
    if which not in ("strengths", "projections"):
        raise ValueError(f"which must be 'strengths' or 'projections', got {which!r}")
    vals = getattr(result, which, None)
    if vals is None:
        raise ValueError(f"the result has no {which} (unsteered, or a steerer without strengths)")
    v = to_numpy(vals)
    if v.ndim == 4:  # rank > 1: sum of the components' strengths
        v = v.sum(-1)
    return v


def example_matrix(result, index: int = 0, *, layers: Sequence[int] | None = None,
                   which: str = "strengths") -> dict:
    """One example's values over its real tokens.

    Returns a dict with ``values`` ``[pos, layer]`` (numpy), ``tokens`` (strings),
    ``labels`` (one-line), ``special`` (``[pos]`` bool, :func:`special_positions`),
    ``layers`` and ``prompt_length``.
    """
    n_ex = len(result.str_tokens)
    if not -n_ex <= index < n_ex:
        raise IndexError(f"index {index} out of range for {n_ex} examples")
    index = index % n_ex
    v = values_of(result, which)
    n = int(to_numpy(result.mask[index]).sum())
    layer_ids, cols = layer_columns(result, layers)
    toks = list(result.str_tokens[index][:n])
    return {"values": v[index, :n][:, cols], "tokens": toks,
            "labels": [token_label(t) for t in toks], "special": special_positions(toks),
            "layers": layer_ids, "prompt_length": int(result.prompt_lengths[index])}


# --------------------------------------------------------------------------- coloured tokens
def _hex(rgba) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(round(255 * c)) for c in rgba[:3]))


def token_colours(values, vmax: float | None = None) -> list[tuple[str, str]]:
    """(background, text) hex colours for each value on the zero-centred diverging scale."""
    import matplotlib as mpl

    vals = np.asarray(values, dtype=float)
    vmax = symmetric_range(vals) if vmax is None else max(float(vmax), 1e-8)
    cmap = mpl.colormaps[DIVERGING_MPL]
    norm = two_slope_norm(vmax)
    out = []
    for x in vals:
        if not np.isfinite(x):
            out.append(("#ffffff", "#000000"))
            continue
        rgba = cmap(float(norm(np.clip(x, -vmax, vmax))))
        lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
        out.append((_hex(rgba), "#ffffff" if lum < 0.5 else "#000000"))
    return out


def _token_span(tok: str, pos: int, x: float, bg: str, fg: str, special: bool) -> str:
    shown = _html.escape(tok).replace("\n", "↵<br>")
    if not shown.strip():
        shown = shown.replace(" ", "&nbsp;") or "&nbsp;"
    else:
        shown = shown.replace("  ", "&nbsp; ")
    note = " | not in the colour scale" if special else ""
    tip = _html.escape(f"pos {pos} | {tok!r} | {x:+.4g}{note}")
    return (f'<span title="{tip}" style="background:{bg};color:{fg};'
            f'padding:1px 0;border-radius:2px">{shown}</span>')


def token_html(result, index: int = 0, layer: int | None = None, *, which: str = "strengths",
               vmax: float | None = None, show_prompt: bool = True,
               include_special: bool = False, quantile: float | None = ROBUST_QUANTILE) -> str:
    """The example's tokens as HTML, each shaded by its strength (blue < 0 < red).

    Args:
        result: a :class:`~clas_lens.tracing.GenerationResult`.
        index: which example.
        layer: a steered layer, or ``None`` for the mean over the steered layers.
        which: ``"strengths"`` or ``"projections"``.
        vmax: colour scale limit (default :func:`colour_limit` of the shown tokens;
            values beyond it saturate).
        show_prompt: include the prompt tokens (else only the continuation).
        include_special: colour position 0 and the system turn too (default: grey,
            left out of the colour limit).
        quantile: quantile of ``|value|`` that sets the default limit (``None``: the maximum).

    Hovering a token shows its position and value. Returns an HTML string
    (see :func:`show_tokens` to display it in a notebook).
    """
    ex = example_matrix(result, index, which=which)
    if layer is None:
        vals, where = ex["values"].mean(axis=1), "mean over layers"
    else:
        _, cols = layer_columns(result, [layer])
        vals, where = ex["values"][:, cols[0]], f"layer {layer}"
    p = ex["prompt_length"]
    start = 0 if show_prompt else p
    shown_vals = vals[start:]
    grey = np.zeros(len(shown_vals), dtype=bool) if include_special else ex["special"][start:]
    vmax = colour_limit(shown_vals, grey, quantile=quantile) if vmax is None else float(vmax)
    colours = token_colours(shown_vals, vmax)
    parts = []
    for k, (tok, x, (bg, fg)) in enumerate(zip(ex["tokens"][start:], shown_vals, colours)):
        pos = start + k
        if pos == p and show_prompt and p > 0:
            parts.append('<span style="border-left:3px solid black;margin:0 3px" '
                         'title="start of the answer"></span>')
        if grey[k]:
            bg, fg = GREY, "#000000"
        parts.append(_token_span(tok, pos, x, bg, fg, bool(grey[k])))
    lo, hi = token_colours([-vmax, vmax], vmax)
    legend = (f'<div style="font-size:80%;margin-bottom:4px">{which} ({where}); scale '
              f'<span style="background:{lo[0]};color:{lo[1]};padding:0 4px">{-vmax:.3g}</span>'
              f'<span style="padding:0 4px">0</span>'
              f'<span style="background:{hi[0]};color:{hi[1]};padding:0 4px">{vmax:+.3g}</span>'
              + ("" if include_special or not grey.any() else
                 f'; <span style="background:{GREY};padding:0 4px">grey</span>: first token and '
                 "system prompt, left out of the scale")
              + "</div>")
    return ('<div style="font-family:monospace;line-height:1.9;white-space:normal">'
            + legend + "".join(parts) + "</div>")


def show_tokens(result, index: int = 0, layer: int | None = None, **kwargs):
    """Display :func:`token_html` in a notebook (returns the ``IPython.display.HTML``)."""
    from IPython.display import HTML, display

    h = HTML(token_html(result, index, layer, **kwargs))
    display(h)
    return h
