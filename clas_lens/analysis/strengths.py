"""Token strengths: per-prompt summaries, per-layer profiles, and the comparison of two
steerers' strength traces on the same tokens.

Example:
    >>> from clas_lens.testing import randomize
    >>> steerer = randomize(cl.CLASSteerer(dirs), seed=1, scale=0.1)
    >>> res = cl.generate(model, steerer, ["Tell me about cats.", "Hi"], max_new_tokens=3,
    ...                   progress=False)
    >>> summary = strength_summary(res)             # one dict per prompt
    >>> len(summary), summary[0]["max_abs"] >= summary[0]["mean_abs"] > 0
    (2, True)
    >>> layer_profile(res).shape                    # mean |alpha| per layer
    torch.Size([3])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from clas_lens.tracing import GenerationResult


def _strengths(result: GenerationResult, rank_index: int = 0) -> Float[Tensor, "batch pos layer"]:
    """The ``[batch, pos, layer]`` strengths of a result (one rank picked when rank > 1)."""
    if not isinstance(result, GenerationResult):
        raise TypeError(f"expected a GenerationResult, got {type(result).__name__}")
    if result.strengths is None:
        raise ValueError("this result has no strengths (unsteered, or a steerer without strengths)")
    s = result.strengths.float()
    if s.ndim == 4:
        if not 0 <= rank_index < s.shape[-1]:
            raise ValueError(f"rank_index {rank_index} out of range 0..{s.shape[-1] - 1}")
        s = s[..., rank_index]
    if s.ndim != 3:
        raise ValueError(f"strengths must be [batch, pos, layer], got {tuple(s.shape)}")
    return s


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    n = int(mask.sum())
    return float(x[mask].mean()) if n else float("nan")


def strength_summary(result: GenerationResult, rank_index: int = 0) -> list[dict]:
    """Per-prompt summary of the steering strength over its real tokens.

    Args:
        result: a :class:`~clas_lens.tracing.GenerationResult` with strengths.
        rank_index: which rank to read when the steerer has rank > 1.

    Returns:
        One dict per prompt: ``prompt``, ``n_tokens``, ``mean`` (mean alpha over tokens
        and layers), ``mean_abs``, ``max_abs``, ``argmax_token`` (position), ``argmax_str``,
        ``argmax_layer`` (model layer of the largest ``|alpha|``), ``mean_prompt`` and
        ``mean_generated`` (mean alpha over prompt / continuation tokens; ``nan`` if none),
        ``mean_abs_prompt`` and ``mean_abs_generated``.
    """
    s = _strengths(result, rank_index)
    gen = result.generated_mask()
    out = []
    for i in range(len(result)):
        real, g = result.mask[i], gen[i]
        p = real & ~g
        si = s[i]
        a = si.abs().masked_fill(~real.unsqueeze(-1), -1.0)
        flat = int(a.argmax())
        t, j = divmod(flat, s.shape[2])
        tok = result.str_tokens[i][t] if t < len(result.str_tokens[i]) else ""
        rows = real.unsqueeze(-1).expand_as(si)
        out.append({
            "prompt": result.prompts[i], "n_tokens": int(real.sum()),
            "mean": _masked_mean(si, rows), "mean_abs": _masked_mean(si.abs(), rows),
            "max_abs": float(a.max()), "argmax_token": t, "argmax_str": tok,
            "argmax_layer": result.layers[j] if result.layers else j,
            "mean_prompt": _masked_mean(si, p.unsqueeze(-1).expand_as(si)),
            "mean_generated": _masked_mean(si, g.unsqueeze(-1).expand_as(si)),
            "mean_abs_prompt": _masked_mean(si.abs(), p.unsqueeze(-1).expand_as(si)),
            "mean_abs_generated": _masked_mean(si.abs(), g.unsqueeze(-1).expand_as(si)),
        })
    return out


def layer_profile(result: GenerationResult, *, generated_only: bool = False, absolute: bool = True,
                  skip_first: bool = False, rank_index: int = 0) -> Float[Tensor, "layer"]:  # noqa: F821
    """Mean strength per steered layer over real tokens (``result.layers`` gives the layers).

    Args:
        result: a result with strengths.
        generated_only: average over continuation tokens only.
        absolute: average ``|alpha|`` (default) rather than signed alpha.
        skip_first: leave out each example's first token (its residual norm is an
            outlier, an attention sink, so its strength can dominate the mean).
        rank_index: which rank when rank > 1.

    Returns:
        ``[layer]`` float tensor (``nan`` where no token qualifies).
    """
    s = _strengths(result, rank_index)
    m = (result.generated_mask() if generated_only else result.mask).clone()
    if skip_first:
        m[:, 0] = False
    if int(m.sum()) == 0:
        raise ValueError("no tokens to average" + (" (no generated tokens)" if generated_only else ""))
    x = s.abs() if absolute else s
    return x[m].mean(0)


@dataclass
class StrengthComparison:
    """Two strength traces on the same tokens, layer by layer.

    Attributes:
        layers: the steered layers both results share.
        mean_a, mean_b: ``[layer]`` mean signed strength over the shared tokens.
        mean_abs_a, mean_abs_b: ``[layer]`` mean ``|strength|``.
        corr: ``[layer]`` Pearson correlation over shared tokens (``nan`` where a trace
            is constant, e.g. a LAS coefficient).
        corr_all: correlation over all shared (token, layer) cells.
        n_tokens: number of shared tokens.
    """

    layers: list[int]
    mean_a: Tensor
    mean_b: Tensor
    mean_abs_a: Tensor
    mean_abs_b: Tensor
    corr: Tensor
    corr_all: float
    n_tokens: int


def _pearson(x: Tensor, y: Tensor) -> float:
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    den = float(x.norm() * y.norm())
    return float((x * y).sum()) / den if den > 1e-12 else float("nan")


def _shared_tokens(a: GenerationResult, b: GenerationResult) -> Tensor:
    """``[batch, pos]`` mask of positions where both have the same token prefix."""
    if a.prompts != b.prompts:
        raise ValueError("the two results were made on different prompts")
    width = min(a.mask.shape[1], b.mask.shape[1])
    m = torch.zeros(len(a), width, dtype=torch.bool)
    for i, (ta, tb) in enumerate(zip(a.token_ids, b.token_ids)):
        n = 0
        while n < min(len(ta), len(tb)) and ta[n] == tb[n]:
            n += 1
        m[i, :n] = True
    return m


def compare_strengths(result_a: GenerationResult, result_b: GenerationResult, *,
                      rank_index: int = 0) -> StrengthComparison:
    """Compare two steerers' strengths on the same prompts (e.g. CLAS alpha vs LAS c).

    Only tokens both results share are used: real tokens of the common token prefix
    (continuations that diverge have different contexts, so they are left out).

    Args:
        result_a, result_b: results on the same prompts (from :func:`~clas_lens.tracing.trace`
            or :func:`~clas_lens.tracing.generate`).
        rank_index: which rank when rank > 1.

    Returns:
        A :class:`StrengthComparison` over the layers both steer.
    """
    sa, sb = _strengths(result_a, rank_index), _strengths(result_b, rank_index)
    layers = [l for l in result_a.layers if l in result_b.layers]
    if not layers:
        raise ValueError(f"no shared layers: {result_a.layers} vs {result_b.layers}")
    m = _shared_tokens(result_a, result_b)
    w = m.shape[1]
    ia = [result_a.layers.index(l) for l in layers]
    ib = [result_b.layers.index(l) for l in layers]
    xa, xb = sa[:, :w][m][:, ia], sb[:, :w][m][:, ib]  # [tokens, layer]
    if len(xa) == 0:
        raise ValueError("the two results share no tokens")
    corr = torch.tensor([_pearson(xa[:, j], xb[:, j]) for j in range(len(layers))])
    return StrengthComparison(layers, xa.mean(0), xb.mean(0), xa.abs().mean(0), xb.abs().mean(0),
                              corr, _pearson(xa.flatten(), xb.flatten()), len(xa))


__all__ = ["StrengthComparison", "compare_strengths", "layer_profile", "strength_summary"]
