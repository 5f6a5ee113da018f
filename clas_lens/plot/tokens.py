"""Token text and token-level values of a trace, and tokens shaded by their strength.

``clean_token``/``token_label`` turn byte-level BPE token strings into readable text
and compact axis labels; ``example_matrix`` cuts one example's ``[pos, layer]``
values out of a :class:`~clas_lens.tracing.GenerationResult`, and ``token_range``
picks a robust zero-centred colour limit for such values. ``token_html`` (shown in
a notebook by ``show_tokens``) writes an example's tokens as HTML, each shaded on
the diverging scale by its strength.

Example:
    >>> res = generate(model, steerer, prompts)   # doctest: +SKIP
    >>> show_tokens(res, 0)                       # doctest: +SKIP
"""

from __future__ import annotations

import html as _html
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from clas_lens.plot._common import DIVERGING_MPL, _np, _symmetric_range, _two_slope


# --------------------------------------------------------------------------- token text
@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode`` (byte-level BPE token strings -> bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def clean_token(tok: str) -> str:
    """Readable text of a token string (byte-level BPE markers such as ``Ġ``/``Ċ`` decoded).

    Special tokens (``<|im_start|>``) and SentencePiece ``▁`` are kept readable.
    """
    if tok.startswith("<") and tok.endswith(">"):
        return tok
    dec = _byte_decoder()
    if tok and all(ch in dec for ch in tok):
        return bytes(dec[ch] for ch in tok).decode("utf-8", errors="replace")
    return tok.replace("▁", " ")


def token_label(tok: str) -> str:
    """A compact one-line axis label for a token (newline as ``↵``, leading space as ``·``)."""
    t = clean_token(tok)
    t = t.replace("\n", "↵").replace("\t", "⇥").replace("\r", "")
    if t.startswith(" "):
        t = "·" + t[1:]
    return t if t else "∅"


# --------------------------------------------------------------------------- token-level values
#: quantile of |value| that sets the colour limit of token-level plots.
ROBUST_QUANTILE = 0.99


def token_range(values, *, skip_first: bool = True, quantile: float | None = ROBUST_QUANTILE
                ) -> float:
    """Symmetric colour limit for token-level values ``[..., pos, ...]`` (pos on axis 0 of each row).

    Position 0 (the first token: an attention sink whose residual norm, hence strength,
    is an outlier) is left out when ``skip_first`` and there are other tokens, and the
    limit is the ``quantile`` of ``|value|`` (``None``: the maximum), so a few extreme
    cells do not wash out the rest. Hover texts always show the true values.
    """
    a = np.asarray(values, dtype=float)
    if skip_first and a.ndim >= 1 and a.shape[-1] > 1:
        a = a[..., 1:]
    a = np.abs(a[np.isfinite(a)])
    if a.size == 0:
        return 1e-8
    v = float(np.quantile(a, quantile)) if quantile is not None else float(a.max())
    return max(v if v > 0 else float(a.max()), 1e-8)


def _layer_columns(result, layers: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """(layer ids, column indices into the result's layer axis)."""
    all_layers = list(getattr(result, "layers", []) or [])
    if not all_layers:
        n = _np(result.strengths).shape[2]
        all_layers = list(range(n))
    if layers is None:
        return all_layers, list(range(len(all_layers)))
    cols = []
    for L in layers:
        if L not in all_layers:
            raise ValueError(f"layer {L} was not steered; the result has layers {all_layers}")
        cols.append(all_layers.index(L))
    return list(layers), cols


def _values_of(result, which: str = "strengths"):
    vals = getattr(result, which, None)
    if vals is None:
        raise ValueError(f"the result has no {which} (unsteered, or a steerer without strengths)")
    v = _np(vals)
    if v.ndim == 4:  # rank > 1: sum of the components' strengths
        v = v.sum(-1)
    return v


def example_matrix(result, index: int = 0, *, layers: Sequence[int] | None = None,
                   which: str = "strengths") -> dict:
    """One example's values over its real tokens.

    Returns a dict with ``values`` ``[pos, layer]`` (numpy), ``tokens`` (raw strings),
    ``labels`` (readable), ``layers`` and ``prompt_length``.
    """
    n_ex = len(result.str_tokens)
    if not -n_ex <= index < n_ex:
        raise IndexError(f"index {index} out of range for {n_ex} examples")
    index = index % n_ex
    v = _values_of(result, which)
    n = int(_np(result.mask[index]).sum())
    layer_ids, cols = _layer_columns(result, layers)
    toks = list(result.str_tokens[index][:n])
    return {"values": v[index, :n][:, cols], "tokens": toks,
            "labels": [token_label(t) for t in toks], "layers": layer_ids,
            "prompt_length": int(result.prompt_lengths[index])}


# --------------------------------------------------------------------------- coloured tokens
def _hex(rgba) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(round(255 * c)) for c in rgba[:3]))


def token_colours(values, vmax: float | None = None) -> list[tuple[str, str]]:
    """(background, text) hex colours for each value on the zero-centred diverging scale."""
    import matplotlib as mpl

    vals = np.asarray(values, dtype=float)
    vmax = _symmetric_range(vals) if vmax is None else max(float(vmax), 1e-8)
    cmap = mpl.colormaps[DIVERGING_MPL]
    norm = _two_slope(vmax)
    out = []
    for x in vals:
        if not np.isfinite(x):
            out.append(("#ffffff", "#000000"))
            continue
        rgba = cmap(float(norm(np.clip(x, -vmax, vmax))))
        lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
        out.append((_hex(rgba), "#ffffff" if lum < 0.5 else "#000000"))
    return out


def token_html(result, index: int = 0, layer: int | None = None, *, which: str = "strengths",
               vmax: float | None = None, show_prompt: bool = True) -> str:
    """The example's tokens as HTML, each shaded by its strength (blue < 0 < red).

    Args:
        result: a :class:`~clas_lens.tracing.GenerationResult`.
        index: which example.
        layer: a steered layer, or ``None`` for the mean over the steered layers.
        which: ``"strengths"`` or ``"projections"``.
        vmax: colour scale limit (default :func:`token_range`; values beyond it saturate).
        show_prompt: include the prompt tokens (else only the continuation).

    Hovering a token shows its position and value. Returns an HTML string
    (see :func:`show_tokens` to display it in a notebook).
    """
    ex = example_matrix(result, index, which=which)
    if layer is None:
        vals, where = ex["values"].mean(axis=1), "mean over layers"
    else:
        _, cols = _layer_columns(result, [layer])
        vals, where = ex["values"][:, cols[0]], f"layer {layer}"
    p = ex["prompt_length"]
    start = 0 if show_prompt else p
    vals_shown = vals[start:]
    vmax = token_range(vals_shown, skip_first=start == 0) if vmax is None else float(vmax)
    colours = token_colours(vals_shown, vmax)
    parts = []
    for k, (tok, x, (bg, fg)) in enumerate(zip(ex["tokens"][start:], vals_shown, colours)):
        pos = start + k
        if pos == p and show_prompt and p > 0:
            parts.append('<span style="border-left:3px solid black;margin:0 3px" '
                         'title="start of the answer"></span>')
        text = clean_token(tok)
        shown = _html.escape(text).replace("\n", "↵<br>")
        if not shown.strip():
            shown = shown.replace(" ", "&nbsp;") or "&nbsp;"
        else:
            shown = shown.replace("  ", "&nbsp; ")
        tip = _html.escape(f"pos {pos} | {text!r} | {x:+.4g}")
        parts.append(f'<span title="{tip}" style="background:{bg};color:{fg};'
                     f'padding:1px 0;border-radius:2px">{shown}</span>')
    lo, hi = token_colours([-vmax, vmax], vmax)
    legend = (f'<div style="font-size:80%;margin-bottom:4px">{which} ({where}); scale '
              f'<span style="background:{lo[0]};color:{lo[1]};padding:0 4px">{-vmax:.3g}</span>'
              f'<span style="padding:0 4px">0</span>'
              f'<span style="background:{hi[0]};color:{hi[1]};padding:0 4px">{vmax:+.3g}</span>'
              "</div>")
    return ('<div style="font-family:monospace;line-height:1.9;white-space:normal">'
            + legend + "".join(parts) + "</div>")


def show_tokens(result, index: int = 0, layer: int | None = None, **kwargs):
    """Display :func:`token_html` in a notebook (returns the ``IPython.display.HTML``)."""
    from IPython.display import HTML, display

    h = HTML(token_html(result, index, layer, **kwargs))
    display(h)
    return h
