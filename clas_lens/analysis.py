"""Analyses of steering: token strengths, direction similarity, layer sweeps,
strength attribution and dose-response. Everything here computes; nothing plots.

All model access goes through hook names (``blocks.{l}.hook_resid_post`` and friends)
with temporary hooks inside ``with model.hooks(...)``, so no hook outlives a call.

Example:
    >>> res = generate(model, steerer, prompts)                         # doctest: +SKIP
    >>> layer_profile(res)                          # mean |alpha| per layer  # doctest: +SKIP
    >>> readout_alignment(steerer).summary()        # cos(w_l, v_l) vs null   # doctest: +SKIP
    >>> attr = attribute_strength(model, steerer, "Hi", layer=12)        # doctest: +SKIP
    >>> top_components(attr, 5)                                          # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from clas_lens.directions import Directions, check_layers, resid_hook
from clas_lens.model import chat_ids, completion_ids, model_device, pad_id
from clas_lens.steerers import CLASSteerer, Steerer
from clas_lens.trace import GenerationResult, generate
from clas_lens.train import _collate, as_pairs, completion_nll, encode_pairs, train

# =====================================================================================
# 1. token strengths
# =====================================================================================


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
        result: a :class:`~clas_lens.trace.GenerationResult` with strengths.
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
                  skip_first: bool = False, rank_index: int = 0) -> Float[Tensor, "layer"]:
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
        result_a, result_b: results on the same prompts (from :func:`~clas_lens.trace.trace`
            or :func:`~clas_lens.trace.generate`).
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


# =====================================================================================
# 2. direction similarity, with a null reference
# =====================================================================================


@dataclass
class NullBand:
    """Distribution of cos between two independent uniformly random unit vectors in ``d`` dims.

    Attributes:
        d: dimension.
        lo, hi: the 2.5 and 97.5 percentiles of cos.
        mean_abs: expected ``|cos|`` (about ``sqrt(2 / (pi d))``).
        abs_hi: 95th percentile of ``|cos|``.
        kind: ``"analytic"`` (exact Beta law) or ``"random"`` (sampled).
        n: number of sampled pairs (0 when analytic).
    """

    d: int
    lo: float
    hi: float
    mean_abs: float
    abs_hi: float
    kind: str
    n: int = 0

    def contains(self, cos: Tensor) -> Tensor:
        """True where ``cos`` lies inside the central 95% band."""
        return (cos >= self.lo) & (cos <= self.hi)


def null_band(d: int, null: str = "random", n_null: int = 1000, seed: int = 0) -> NullBand:
    """Null band of the cosine of random unit vector pairs in dimension ``d``.

    ``"analytic"`` uses the exact law (``cos^2 ~ Beta(1/2, (d-1)/2)``); ``"random"``
    samples ``n_null`` pairs of Gaussian vectors (seeded).
    """
    if d < 2:
        raise ValueError(f"d must be >= 2, got {d}")
    if null == "analytic":
        from scipy.stats import beta

        abs_q = lambda q: math.sqrt(float(beta.ppf(q, 0.5, (d - 1) / 2)))  # noqa: E731
        mean_abs = math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)
        return NullBand(d, -abs_q(0.95), abs_q(0.95), mean_abs, abs_q(0.95), "analytic")
    if null != "random":
        raise ValueError(f"unknown null {null!r}; choose 'random' or 'analytic'")
    if n_null < 10:
        raise ValueError(f"n_null must be >= 10, got {n_null}")
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(2, n_null, d, generator=g, dtype=torch.float64)
    c = F.cosine_similarity(x, y, dim=-1)
    lo, hi = torch.quantile(c, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return NullBand(d, lo, hi, float(c.abs().mean()), float(torch.quantile(c.abs(), 0.95)),
                    "random", n_null)


@dataclass
class CosineResult:
    """Per-layer cosine of two direction sets with its null reference.

    Attributes:
        cos: ``[layer]`` cosine similarity.
        layers: the model layers.
        null: the :class:`NullBand` for this dimension.
        labels: names of the two sides.
    """

    cos: Float[Tensor, "layer"]
    layers: list[int]
    null: NullBand
    labels: tuple[str, str] = ("a", "b")

    @property
    def mean_abs(self) -> float:
        return float(self.cos.abs().mean())

    def outside_null(self) -> Tensor:
        """True at layers whose cos lies outside the null's central 95% band."""
        return ~self.null.contains(self.cos)

    def summary(self) -> dict:
        """Mean |cos|, its null expectation and band, and the layers outside the band."""
        out = self.outside_null()
        return {"labels": self.labels, "mean_abs_cos": self.mean_abs,
                "null_mean_abs": self.null.mean_abs, "null_band": (self.null.lo, self.null.hi),
                "n_outside": int(out.sum()),
                "layers_outside": [l for l, o in zip(self.layers, out) if o],
                "max_abs_cos": float(self.cos.abs().max()),
                "argmax_layer": self.layers[int(self.cos.abs().argmax())]}


def _as_matrix(x, layers: Sequence[int] | None = None) -> tuple[Tensor, list[int] | None]:
    """``[L, d]`` float64 rows from a Directions or a tensor (and its layers if known)."""
    if isinstance(x, Directions):
        lay = list(x.layers) if layers is None else [int(l) for l in layers]
        return torch.stack([x.vector(l) for l in lay]).double(), lay
    t = torch.as_tensor(x).detach().double().cpu()
    if t.ndim != 2:
        raise ValueError(f"expected [layer, d] vectors, got shape {tuple(t.shape)}")
    return t, None


def cosine_per_layer(a, b, *, layers: Sequence[int] | None = None, null: str = "random",
                     n_null: int = 1000, seed: int = 0, labels: tuple[str, str] = ("a", "b")
                     ) -> CosineResult:
    """Cosine between matching rows of two direction sets, with a null band.

    Uses: CLAS read-out ``w_l`` vs probe ``v_l`` (see :func:`readout_alignment`), a ReFT
    steerer's learned ``U`` vs probe directions (``steerer.U[:, 0]`` vs ``dirs``), or two
    :class:`~clas_lens.directions.Directions` of different methods or concepts.

    Args:
        a, b: ``[L, d]`` tensors or Directions (Directions are matched by layer).
        layers: model layers (default: the layers both Directions share, else ``0..L-1``).
        null: ``"random"`` (sampled) or ``"analytic"``.
        n_null: sampled pairs for the random null.
        seed: seed of the null.
        labels: names of ``a`` and ``b``.

    Returns:
        A :class:`CosineResult`.
    """
    if layers is None and isinstance(a, Directions) and isinstance(b, Directions):
        layers = [l for l in a.layers if l in b.layers]
        if not layers:
            raise ValueError("the two Directions share no layer")
    A, la = _as_matrix(a, layers)
    B, lb = _as_matrix(b, layers)
    if A.shape != B.shape:
        raise ValueError(f"shapes differ: {tuple(A.shape)} vs {tuple(B.shape)}")
    lay = la or lb or (list(layers) if layers is not None else list(range(A.shape[0])))
    if len(lay) != A.shape[0]:
        raise ValueError(f"{len(lay)} layers for {A.shape[0]} rows")
    if bool((A.norm(dim=1) == 0).any() or (B.norm(dim=1) == 0).any()):
        raise ValueError("a direction is zero: its cosine is undefined (an untrained steerer?)")
    cos = F.cosine_similarity(A, B, dim=1).float()
    return CosineResult(cos, lay, null_band(A.shape[1], null, n_null, seed), labels)


def readout_alignment(steerer: CLASSteerer, *, rank_index: int = 0, **kw) -> CosineResult:
    """Cosine of a CLAS (or ReFT) steerer's read-out ``w_l`` with its direction ``v_l`` per layer.

    Args:
        steerer: a trained :class:`~clas_lens.steerers.CLASSteerer` (or ReFT: ``V`` is ``U``).
        rank_index: which rank.
        **kw: passed to :func:`cosine_per_layer` (``null``, ``n_null``, ``seed``).
    """
    if not (hasattr(steerer, "W") and hasattr(steerer, "V")) or steerer.W.ndim != 3:
        raise ValueError(f"{type(steerer).__name__} has no read-out W [layer, rank, d]")
    if not 0 <= rank_index < steerer.W.shape[1]:
        raise ValueError(f"rank_index {rank_index} out of range 0..{steerer.W.shape[1] - 1}")
    return cosine_per_layer(steerer.W[:, rank_index], steerer.V[:, rank_index],
                            layers=steerer.layers, labels=("w", "v"), **kw)


@dataclass
class SimilarityMatrix:
    """Cosine between every pair of layers' directions.

    Attributes:
        matrix: ``[L, L]`` cosine.
        layers: the model layers.
        null: :class:`NullBand` for the off-diagonal entries.
    """

    matrix: Float[Tensor, "layer layer"]
    layers: list[int]
    null: NullBand

    def off_diagonal(self) -> Tensor:
        L = len(self.layers)
        return self.matrix[~torch.eye(L, dtype=torch.bool)]

    def adjacent(self) -> Tensor:
        """``[L-1]`` cosine between consecutive rows."""
        return self.matrix.diagonal(1)


def layer_similarity_matrix(directions, *, null: str = "random", n_null: int = 1000,
                            seed: int = 0) -> SimilarityMatrix:
    """``[L, L]`` cosine of a direction set across layers, with the null for off-diagonals."""
    X, lay = _as_matrix(directions)
    lay = lay or list(range(X.shape[0]))
    X = X / X.norm(dim=1, keepdim=True).clamp(min=1e-30)
    return SimilarityMatrix((X @ X.T).float(), lay, null_band(X.shape[1], null, n_null, seed))


@dataclass
class MethodSimilarity:
    """Cosine between direction sets of several methods (or concepts), per layer.

    Attributes:
        cos: ``[M, M, L]``.
        names: the M names.
        layers: the L layers all share.
        null: the :class:`NullBand`.
    """

    cos: Float[Tensor, "m m layer"]
    names: list[str]
    layers: list[int]
    null: NullBand

    def table(self) -> list[dict]:
        """One row per pair of names: mean, min, max cos over layers, layers outside the null."""
        rows = []
        for i in range(len(self.names)):
            for j in range(i + 1, len(self.names)):
                c = self.cos[i, j]
                rows.append({"a": self.names[i], "b": self.names[j], "mean": float(c.mean()),
                             "mean_abs": float(c.abs().mean()), "min": float(c.min()),
                             "max": float(c.max()),
                             "n_outside_null": int((~self.null.contains(c)).sum())})
        return rows


def method_similarity(directions: Mapping[str, Directions], *, layers: Sequence[int] | None = None,
                      null: str = "random", n_null: int = 1000, seed: int = 0) -> MethodSimilarity:
    """``[M, M, L]`` cosine between several Directions (by name), layer by layer."""
    names = list(directions)
    if len(names) < 2:
        raise ValueError("method_similarity needs at least two direction sets")
    if layers is None:
        layers = sorted(set.intersection(*[set(directions[n].layers) for n in names]))
        if not layers:
            raise ValueError("the direction sets share no layer")
    X = torch.stack([_as_matrix(directions[n], layers)[0] for n in names])  # [M, L, d]
    X = X / X.norm(dim=-1, keepdim=True)
    cos = torch.einsum("ild,jld->ijl", X, X).float()
    return MethodSimilarity(cos, names, list(layers), null_band(X.shape[-1], null, n_null, seed))


def probe_profile(directions: Directions) -> dict:
    """Held-out probe accuracy per layer: ``{"layers", "accuracy", "best_layer", "best_accuracy"}``."""
    if not isinstance(directions, Directions):
        raise TypeError("probe_profile takes a Directions")
    acc = directions.accuracy
    k = int(acc.argmax())
    return {"layers": list(directions.layers), "accuracy": acc.clone(),
            "best_layer": directions.layers[k], "best_accuracy": float(acc[k])}


# =====================================================================================
# 3. layer sweeps
# =====================================================================================


@dataclass
class SweepResult:
    """Completion NLL of steering one layer (or the first k layers) at a time.

    Attributes:
        layers: the swept layers (or, for cumulative sweeps, the number of layers k).
        nll: ``[layer]`` or ``[layer, coefficient]`` token-weighted mean NLL.
        baseline: the unsteered NLL.
        coefficients: the LAS coefficients (``None`` for CLAS sweeps).
        kind: ``"las"``, ``"clas"`` or ``"clas_cumulative"``.
        seconds: wall time.
        meta: anything else (per-layer histories, settings).
    """

    layers: list[int]
    nll: Tensor
    baseline: float
    coefficients: list[float] | None = None
    kind: str = "las"
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)

    def best(self) -> dict:
        """The lowest NLL and where it is."""
        k = int(torch.nan_to_num(self.nll, nan=float("inf")).argmin())
        if self.nll.ndim == 2:
            i, j = divmod(k, self.nll.shape[1])
            return {"layer": self.layers[i], "coefficient": self.coefficients[j],
                    "nll": float(self.nll[i, j])}
        return {"layer": self.layers[k], "nll": float(self.nll[k])}


def _nll_sums(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed completion cross-entropy and token count per example."""
    tgt = labels[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tgt, ignore_index=-100,
                         reduction="none")
    valid = tgt != -100
    return (ce * valid).sum(1), valid.sum(1)


def _resume_kwargs(kwargs: dict) -> dict:
    """Block kwargs captured on a full pass, made safe to call again (no KV cache)."""
    kw = dict(kwargs)
    if "past_key_values" in kw:
        kw["past_key_values"] = None
    if "past_key_value" in kw:
        kw["past_key_value"] = None
    if "use_cache" in kw:
        kw["use_cache"] = False
    return kw


def _tile(x, batch: int, times: int):
    """Repeat tensors whose leading dim is ``batch`` ``times`` along it (nested tuples too)."""
    if isinstance(x, Tensor) and x.ndim > 0 and x.shape[0] == batch and times > 1:
        return x.repeat(times, *([1] * (x.ndim - 1)))
    if isinstance(x, tuple):
        return tuple(_tile(y, batch, times) for y in x)
    return x


class ResidualCache:
    """One unsteered forward pass, cached so later blocks can be re-run from any layer.

    Stores every ``blocks.{l}.hook_resid_post`` and the keyword arguments (attention
    mask, rotary embeddings, position ids) the model passed to each block, then
    :meth:`resume` runs blocks ``l+1..`` on an edited residual by calling the
    bridge's blocks directly, so blocks ``0..l`` are not recomputed (the bridge's own
    ``forward(..., start_at_layer=k)`` still executes blocks ``0..k-1`` and discards them).
    ``verify()`` checks that resuming reproduces the model's logits.
    """

    def __init__(self, model, ids: Tensor, attention_mask: Tensor | None):
        self.model = model
        n = int(model.cfg.n_layers)
        self.resid: dict[int, Tensor] = {}
        self.kwargs: dict[int, dict] = {}
        hooks = [(resid_hook(l), self._grab(l)) for l in range(n)]
        handles = [model.blocks[k].register_forward_pre_hook(self._grab_kwargs(k), with_kwargs=True)
                   for k in range(n)]
        try:
            with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
                self.full_logits = model(ids, attention_mask=attention_mask)
        finally:
            for h in handles:
                h.remove()
        self.batch = ids.shape[0]

    def _grab(self, l):
        def hook(h, hook=None):
            self.resid[l] = h.detach()
            return h
        return hook

    def _grab_kwargs(self, k):
        def pre(module, args, kwargs):
            self.kwargs[k] = _resume_kwargs(kwargs)
        return pre

    @torch.inference_mode()
    def resume(self, layer: int, resid: Float[Tensor, "nb pos d"]) -> Float[Tensor, "nb pos d"]:
        """Final residual (before ``ln_final``) after feeding ``resid`` as block ``layer``'s output.

        ``resid`` may stack several edited copies of the cached batch along the batch
        axis (``n * batch`` rows, copy-major); the cached masks are tiled to match.
        """
        if resid.shape[0] % self.batch or resid.shape[1:] != self.resid[layer].shape[1:]:
            want = ", ".join(map(str, self.resid[layer].shape[1:]))
            raise ValueError(f"resid must be [n * {self.batch}, {want}], got {tuple(resid.shape)}")
        times = resid.shape[0] // self.batch
        h = resid.to(self.resid[layer].dtype)
        for k in range(layer + 1, int(self.model.cfg.n_layers)):
            kw = {key: _tile(v, self.batch, times) for key, v in self.kwargs[k].items()}
            out = self.model.blocks[k](h, **kw)
            h = out[0] if isinstance(out, tuple) else out
        return h

    def logits(self, h: Tensor) -> Tensor:
        """Logits from a final residual (``ln_final`` then the unembedding)."""
        return self.model.unembed(self.model.ln_final(h))

    def verify(self, atol: float = 1e-4) -> None:
        """Raise if resuming from layer 0 does not give the cached pass's logits."""
        with torch.inference_mode():
            got = self.logits(self.resume(0, self.resid[0]))
        err = float((got.float() - self.full_logits.float()).abs().max())
        scale = float(self.full_logits.float().abs().max()) + 1.0
        if not err <= atol * scale:
            raise RuntimeError(f"resuming from cached residuals is not exact on this model "
                               f"(max logit error {err:.3g}); use cached=False")


def _nll_from_hidden(cache: ResidualCache, h: Tensor, labels: Tensor) -> Tensor:
    """Summed completion NLL per row, unembedding only the positions that carry a loss."""
    tgt = labels[:, 1:]
    valid = tgt != -100
    rows = valid.nonzero()[:, 0]
    logits = cache.logits(h[:, :-1][valid].unsqueeze(0))[0].float()
    ce = F.cross_entropy(logits, tgt[valid], reduction="none")
    return torch.zeros(h.shape[0], dtype=ce.dtype, device=ce.device).index_add_(0, rows, ce)


def _check_coefficients(coefficients) -> list[float]:
    cs = [float(c) for c in coefficients]
    if not cs:
        raise ValueError("coefficients is empty")
    if not all(math.isfinite(c) for c in cs):
        raise ValueError(f"coefficients must be finite, got {cs}")
    return cs


def _sweep_chunk_cached(model, dirs, layers, cs, ids, mask, labels, coef_batch, verify):
    cache = ResidualCache(model, ids, mask)
    if verify:
        cache.verify()
    base = _nll_sums(cache.full_logits, labels)
    S = torch.zeros(len(layers), len(cs), dtype=torch.float64)
    B = ids.shape[0]
    for i, l in enumerate(layers):
        r = cache.resid[l].float()
        v = dirs.vector(l).to(r.device)
        for s in range(0, len(cs), coef_batch):
            chunk = cs[s:s + coef_batch]
            x = torch.cat([r + c * v for c in chunk])
            sums = _nll_from_hidden(cache, cache.resume(l, x), labels.repeat(len(chunk), 1))
            S[i, s:s + len(chunk)] = sums.view(len(chunk), B).sum(1).double().cpu()
    return S, float(base[0].sum()), int(base[1].sum())


def _sweep_chunk_naive(model, dirs, layers, cs, ids, mask, labels):
    S = torch.zeros(len(layers), len(cs), dtype=torch.float64)
    with torch.inference_mode():
        base = _nll_sums(model(ids, attention_mask=mask), labels)
        for i, l in enumerate(layers):
            v = dirs.vector(l).to(ids.device)
            for j, c in enumerate(cs):
                def add(h, hook=None, c=c, v=v):
                    return (h.float() + c * v).to(h.dtype)
                with model.hooks(fwd_hooks=[(resid_hook(l), add)]):
                    S[i, j] = float(_nll_sums(model(ids, attention_mask=mask), labels)[0].sum())
    return S, float(base[0].sum()), int(base[1].sum())


def layer_sweep_las(model, directions: Directions, pairs, coefficients: Sequence[float],
                    layers: Sequence[int] | None = None, *, cached: bool = True,
                    batch_size: int = 16, coef_batch: int = 4, verify: bool = True,
                    max_completion_tokens: int | None = None) -> SweepResult:
    """Completion NLL when steering ONE layer at a time with ``h' = h + c v_l``.

    Args:
        model: a ``TransformerBridge``.
        directions: the probe directions ``v_l``.
        pairs: ``(prompt, completion)`` pairs or a SteerSet; NLL is on completion tokens only.
        coefficients: the values of ``c``.
        layers: layers to sweep (default: all the directions cover).
        cached: run the unsteered model once per batch and resume from each layer's cached
            residual (see :class:`ResidualCache`); ``False`` runs a full hooked pass per
            ``(layer, c)``. Both give the same numbers.
        batch_size: pairs per forward pass (right padded: causal attention keeps padding
            after a sequence from affecting its tokens).
        coef_batch: coefficients stacked into one resumed pass (cached mode).
        verify: (cached mode) check once, on the first batch, that resuming from
            layer 0 reproduces the model's logits (costs one pass; raises if not).
        max_completion_tokens: truncate long completions.

    Returns:
        A :class:`SweepResult` with ``nll [layer, coefficient]``.
    """
    if not isinstance(directions, Directions):
        raise TypeError("directions must be a Directions")
    directions.check_model(model)
    cs = _check_coefficients(coefficients)
    layers = check_layers(model, directions.layers if layers is None else layers)
    missing = [l for l in layers if l not in directions.layers]
    if missing:
        raise ValueError(f"the directions have no layer(s) {missing}")
    enc = encode_pairs(model, pairs, max_completion_tokens=max_completion_tokens)
    device, pad = model_device(model), pad_id(model)
    t0 = time.perf_counter()
    S = torch.zeros(len(layers), len(cs), dtype=torch.float64)
    base, n_tok = 0.0, 0
    for k in range(0, len(enc), batch_size):
        ids, mask, labels = _collate(enc[k:k + batch_size], pad, device)
        if cached:
            s, b, n = _sweep_chunk_cached(model, directions, layers, cs, ids, mask, labels,
                                          max(1, coef_batch), verify and k == 0)
        else:
            s, b, n = _sweep_chunk_naive(model, directions, layers, cs, ids, mask, labels)
        S, base, n_tok = S + s, base + b, n_tok + n
    n_tok = max(n_tok, 1)
    return SweepResult(layers, (S / n_tok).float(), base / n_tok, cs, "las",
                       time.perf_counter() - t0, {"cached": cached, "n_pairs": len(enc),
                                                  "n_tokens": n_tok})


def _train_one(model, directions, layers, train_pairs, valid_pairs, **train_kw):
    steerer = CLASSteerer(directions, layers=layers)
    hist = train(model, steerer, train_pairs, valid_pairs, progress=False, **train_kw)
    return hist.best_valid_loss, hist


def layer_sweep_clas(model, directions: Directions, train_pairs, valid_pairs,
                     layers: Sequence[int] | None = None, *, epochs: int = 8, **train_kw
                     ) -> SweepResult:
    """Train a CLAS steerer at ONE layer at a time (``CLASSteerer(dirs, layers=[l])``).

    Args:
        model: a ``TransformerBridge``.
        directions: the probe directions.
        train_pairs, valid_pairs: pairs to train on and to score (best valid NLL).
        layers: layers to sweep (default: all the directions cover).
        epochs: training epochs per layer.
        **train_kw: passed to :func:`~clas_lens.train.train` (``lr``, ``seed``, ...).

    Returns:
        A :class:`SweepResult` with ``nll [layer]`` (best valid NLL of each layer's steerer)
        and ``meta["best_epoch"]``.
    """
    layers = check_layers(model, directions.layers if layers is None else layers)
    t0 = time.perf_counter()
    nll, epochs_kept = [], []
    for l in layers:
        loss, hist = _train_one(model, directions, [l], train_pairs, valid_pairs, epochs=epochs,
                                **train_kw)
        nll.append(loss)
        epochs_kept.append(hist.best_epoch)
    base = completion_nll(model, None, valid_pairs)
    return SweepResult(layers, torch.tensor(nll), base, None, "clas", time.perf_counter() - t0,
                       {"best_epoch": epochs_kept, "epochs": epochs})


def cumulative_sweep_clas(model, directions: Directions, train_pairs, valid_pairs,
                          ks: Sequence[int] | None = None, *, epochs: int = 8, **train_kw
                          ) -> SweepResult:
    """Train CLAS on the first ``k`` layers of ``directions`` for each ``k`` in ``ks``.

    Returns:
        A :class:`SweepResult` whose ``layers`` are the values of ``k`` and ``nll [k]``.
    """
    n = len(directions.layers)
    ks = list(range(1, n + 1)) if ks is None else [int(k) for k in ks]
    if not ks or any(not 1 <= k <= n for k in ks):
        raise ValueError(f"ks must lie in 1..{n}, got {ks}")
    t0 = time.perf_counter()
    nll = [_train_one(model, directions, directions.layers[:k], train_pairs, valid_pairs,
                      epochs=epochs, **train_kw)[0] for k in ks]
    base = completion_nll(model, None, valid_pairs)
    return SweepResult(ks, torch.tensor(nll), base, None, "clas_cumulative",
                       time.perf_counter() - t0, {"epochs": epochs})


# =====================================================================================
# 4. attribution of the strength alpha_{l,t} = w_l . h_{l,t} + b_l
# =====================================================================================


@dataclass
class Attribution:
    """Exact decomposition of one token's CLAS strength at one layer.

    ``alpha = bias + sum(contributions)`` where each contribution is ``w_l . c`` for a
    component ``c`` written into the residual stream: ``embed`` (the residual entering
    block 0: token embedding, plus positional embedding on models that have one), ``L{k}.H{h}`` (head h
    of layer k's attention), ``L{k}.attn_bias`` (the output projection's bias, if any),
    ``L{k}.mlp``, and ``L{k}.steer`` (the steering added at an earlier steered layer k).

    Attributes:
        layer: the model layer whose strength is decomposed.
        position: the token position (non-negative).
        token: the token string there.
        alpha: the strength the steerer computed (float32, scale 1).
        bias: ``b_l``.
        contributions: ``{name: w_l . component}`` in residual order.
        residual_error: max ``|h_l - sum(components)|`` (rounding only).
        tokens: all token strings of the input.
    """

    layer: int
    position: int
    token: str
    alpha: float
    bias: float
    contributions: dict[str, float]
    residual_error: float
    tokens: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        """``bias + sum(contributions)`` (equals ``alpha`` up to rounding)."""
        return self.bias + math.fsum(self.contributions.values())

    def grouped(self) -> dict[str, float]:
        """Contributions summed per kind: ``embed``, ``attn`` (heads and bias), ``mlp``, ``steer``."""
        out = {"embed": 0.0, "attn": 0.0, "mlp": 0.0, "steer": 0.0}
        for name, v in self.contributions.items():
            kind = "embed" if name == "embed" else name.split(".")[1]
            out["attn" if kind.startswith("H") or kind == "attn_bias" else kind] += v
        return out


def top_components(attr: Attribution, k: int = 10, *, by: str = "abs") -> list[tuple[str, float]]:
    """The ``k`` largest contributions (``by="abs"``, ``"pos"`` or ``"neg"``)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    key = {"abs": lambda x: -abs(x[1]), "pos": lambda x: -x[1], "neg": lambda x: x[1]}
    if by not in key:
        raise ValueError(f"by must be 'abs', 'pos' or 'neg', got {by!r}")
    return sorted(attr.contributions.items(), key=key[by])[:k]


def _input_ids(model, prompt_or_ids, completion: str | None, chat: bool) -> list[int]:
    if isinstance(prompt_or_ids, str):
        ids = chat_ids(model, prompt_or_ids, chat=chat)
    else:
        ids = [int(i) for i in torch.as_tensor(prompt_or_ids).flatten().tolist()]
    if completion is not None:
        ids = ids + completion_ids(model, completion)
    if not ids:
        raise ValueError("no tokens to attribute")
    return ids


def _o_proj(model, k: int) -> tuple[Tensor, Tensor | None]:
    """Output projection ``W [d_model, n_heads * d_head]`` and bias of layer ``k``'s attention."""
    o = model.blocks[k].attn.o
    lin = getattr(o, "original_component", o)
    if not hasattr(lin, "weight"):
        raise ValueError(f"cannot find the output projection weight of layer {k}'s attention")
    return lin.weight, getattr(lin, "bias", None)


def _capture_names(n_layers: int) -> list[str]:
    names = ["blocks.0.hook_resid_pre"]  # the embedding (= hook_embed for rotary models)
    for k in range(n_layers):
        names += [f"blocks.{k}.attn.hook_z", f"blocks.{k}.hook_attn_out", f"blocks.{k}.hook_mlp_out"]
    return names


def _steered_pass(model, steerer: Steerer, ids: list[int], top: int) -> tuple[dict, dict, dict]:
    """Run the steered model on ``ids`` up to block ``top``; cache components and edits."""
    store, before, after = {}, {}, {}

    def grab(name, box):
        def hook(h, hook=None):
            box[name] = h.detach().float().clone()
            return h
        return hook

    caps = [(n, grab(n, store)) for n in _capture_names(top + 1)]
    pre = [(resid_hook(l), grab(l, before)) for l in steerer.layers if l <= top]
    post = [(resid_hook(l), grab(l, after)) for l in steerer.layers if l <= top]
    x = torch.tensor([ids], device=model_device(model))
    stop = top + 1 if top + 1 < int(model.cfg.n_layers) else None
    with torch.inference_mode(), model.hooks(fwd_hooks=caps + pre):
        with steerer.apply(model), model.hooks(fwd_hooks=post):
            model(x, stop_at_layer=stop)
    return store, before, after


def _components(model, store, before, after, top: int, pos: int, steered: Sequence[int]
                ) -> dict[str, Tensor]:
    """Residual-stream components ``[d]`` at token ``pos`` written up to layer ``top``."""
    H = int(model.cfg.n_heads)
    comps = {"embed": store["blocks.0.hook_resid_pre"][0, pos].double()}
    for k in range(top + 1):
        W, bias = _o_proj(model, k)
        z = store[f"blocks.{k}.attn.hook_z"][0, pos].double()           # [head, d_head]
        Wh = W.detach().double().cpu().view(W.shape[0], H, -1)         # [d, head, d_head]
        heads = torch.einsum("he,dhe->hd", z.cpu(), Wh)
        for h in range(H):
            comps[f"L{k}.H{h}"] = heads[h]
        if bias is not None:
            comps[f"L{k}.attn_bias"] = bias.detach().double().cpu()
        comps[f"L{k}.mlp"] = store[f"blocks.{k}.hook_mlp_out"][0, pos].double().cpu()
        if k in steered and k < top:
            comps[f"L{k}.steer"] = (after[k][0, pos] - before[k][0, pos]).double().cpu()
    return {n: c.cpu() for n, c in comps.items()}


def _check_attn_sum(model, store, top: int, pos: int, comps: dict) -> None:
    """Raise if per-head outputs (+ bias) do not add up to ``hook_attn_out``."""
    for k in range(top + 1):
        parts = [v for n, v in comps.items() if n.startswith(f"L{k}.H") or n == f"L{k}.attn_bias"]
        ref = store[f"blocks.{k}.hook_attn_out"][0, pos].double().cpu()
        err = float((sum(parts) - ref).abs().max())
        if err > 1e-3 * (float(ref.abs().max()) + 1.0):
            raise ValueError(f"layer {k}: per-head outputs do not sum to hook_attn_out "
                             f"(error {err:.3g}); this architecture is not supported")


def attribute_layers(model, steerer: CLASSteerer, prompt_or_ids, *,
                     layers: Sequence[int] | None = None,
                     position: int = -1, completion: str | None = None, rank_index: int = 0,
                     chat: bool = True) -> list[Attribution]:
    """:func:`attribute_strength` for several steered layers from one steered pass.

    Args:
        model: a ``TransformerBridge`` (one whose residual stream is the sum of the
            embedding, attention and MLP outputs: Llama-style pre-norm blocks).
        steerer: a CLAS (or ReFT) steerer; it is applied during the pass.
        prompt_or_ids: a user prompt (chat-formatted unless ``chat=False``) or token ids.
        layers: steered layers to decompose (default: all of the steerer's).
        position: token position (negative counts from the end).
        completion: optional completion appended (teacher forced).
        rank_index: which rank's strength.
        chat: apply the chat template to a string prompt.

    Returns:
        One :class:`Attribution` per layer.
    """
    if not (isinstance(steerer, Steerer) and hasattr(steerer, "W") and hasattr(steerer, "b")):
        raise ValueError("attribution needs a CLAS-form steerer (alpha = w.h + b), e.g. CLASSteerer")
    steerer.check_model(model)
    if not 0 <= rank_index < steerer.W.shape[1]:
        raise ValueError(f"rank_index {rank_index} out of range 0..{steerer.W.shape[1] - 1}")
    layers = list(steerer.layers) if layers is None else [int(l) for l in layers]
    bad = [l for l in layers if l not in steerer.layers]
    if bad or not layers:
        raise ValueError(f"layer(s) {bad or layers} are not steered; steered: {steerer.layers}")
    ids = _input_ids(model, prompt_or_ids, completion, chat)
    if not -len(ids) <= position < len(ids):
        raise ValueError(f"position {position} out of range for {len(ids)} tokens")
    pos = position % len(ids)
    store, before, after = _steered_pass(model, steerer, ids, max(layers))
    toks = model.tokenizer.convert_ids_to_tokens(ids)
    comps = _components(model, store, before, after, max(layers), pos, steerer.layers)
    _check_attn_sum(model, store, max(layers), pos, comps)
    return [_attribute_one(steerer, l, pos, toks, comps, before, rank_index) for l in layers]


def _attribute_one(steerer, layer, pos, toks, comps, before, r) -> Attribution:
    j = steerer.layers.index(layer)
    w = steerer.W[j, r].detach().double().cpu()
    b = float(steerer.b[j, r].detach())
    mine = {n: c for n, c in comps.items() if _layer_of(n) <= layer and n != f"L{layer}.steer"}
    h = before[layer][0, pos].cpu()
    alpha = float(h @ steerer.W[j, r].detach().float().cpu() + steerer.b[j, r].detach().float().cpu())
    err = float((sum(mine.values()) - h.double()).abs().max())
    if err > 1e-3 * (float(h.abs().max()) + 1.0):
        raise ValueError(f"layer {layer}: the residual is not the sum of the embedding, attention, "
                         f"MLP and steering outputs (error {err:.3g}); this architecture is not "
                         "supported (e.g. norms after the sublayers)")
    return Attribution(layer, pos, toks[pos], alpha, b, {n: float(c @ w) for n, c in mine.items()},
                       err, toks)


def _layer_of(name: str) -> int:
    return -1 if name == "embed" else int(name.split(".")[0][1:])


def attribute_strength(model, steerer: CLASSteerer, prompt_or_ids, *, layer: int, position: int = -1,
                       completion: str | None = None, rank_index: int = 0, chat: bool = True
                       ) -> Attribution:
    """Decompose ``alpha_{l,t} = w_l . h_{l,t} + b_l`` exactly into residual components.

    The model runs steered (earlier steered layers edit the residual), and the
    residual ``h_{l,t}`` (before layer ``l``'s own edit) is written as the sum of the
    embedding, every attention head's output (``hook_z`` times that head's slice of the
    output projection), every MLP output and every earlier steering edit, for blocks
    ``0..l``. Norms sit inside the blocks, so the sum is exact (up to float rounding).

    Args:
        model, steerer, prompt_or_ids, completion, rank_index, chat: see :func:`attribute_layers`.
        layer: the steered layer.
        position: the token (default: the last).

    Returns:
        An :class:`Attribution` (``alpha == bias + sum(contributions)`` up to rounding).
    """
    return attribute_layers(model, steerer, prompt_or_ids, layers=[layer], position=position,
                            completion=completion, rank_index=rank_index, chat=chat)[0]


def head_attention_sources(model, ids, layer: int, head: int, position: int = -1, *,
                           steerer: Steerer | None = None, k: int | None = None,
                           chat: bool = True) -> list[dict]:
    """The input tokens one attention head attends to from one position.

    Args:
        model: a ``TransformerBridge``.
        ids: token ids (or a user prompt string, chat-formatted unless ``chat=False``).
        layer, head: the head.
        position: the query position (default: the last).
        steerer: optionally run steered (the pattern then reflects the steered residual).
        k: keep the ``k`` largest weights (default: all).
        chat: apply the chat template to a string prompt.

    Returns:
        Dicts ``{"position", "token", "weight"}`` sorted by decreasing weight.
    """
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    if not 0 <= layer < n_layers or not 0 <= head < n_heads:
        raise ValueError(f"layer {layer} / head {head} out of range "
                         f"({n_layers} layers, {n_heads} heads)")
    tok_ids = _input_ids(model, ids, None, chat)
    if not -len(tok_ids) <= position < len(tok_ids):
        raise ValueError(f"position {position} out of range for {len(tok_ids)} tokens")
    pos = position % len(tok_ids)
    box = {}

    def grab(p, hook=None):
        box["p"] = p[0, head, pos].detach().float().cpu()
        return p

    ctx = steerer.apply(model) if steerer is not None else nullcontext()
    stop = layer + 1 if layer + 1 < n_layers else None
    hooks = [(f"blocks.{layer}.attn.hook_pattern", grab)]
    with torch.inference_mode(), ctx, model.hooks(fwd_hooks=hooks):
        model(torch.tensor([tok_ids], device=model_device(model)), stop_at_layer=stop)
    toks = model.tokenizer.convert_ids_to_tokens(tok_ids)
    w = box["p"]
    order = w.argsort(descending=True).tolist()[: k or len(w)]
    return [{"position": i, "token": toks[i], "weight": float(w[i])} for i in order]


# =====================================================================================
# 5. dose-response
# =====================================================================================


def dose_response(model, steerer: Steerer, pairs, scales: Sequence[float] = (0, 0.5, 1, 2), *,
                  behaviour: Callable[[list[str]], float] | None = None,
                  prompts: Sequence[str] | None = None, max_new_tokens: int = 32,
                  batch_size: int = 8) -> dict:
    """Completion NLL (and optionally a behaviour score) as the steering is scaled.

    Args:
        model: a ``TransformerBridge``.
        steerer: any steerer (``scale`` multiplies its strength).
        pairs: ``(prompt, completion)`` pairs for the NLL.
        scales: the scales (0 = unsteered).
        behaviour: optional callable mapping a list of generated texts to a score.
        prompts: prompts to generate from for the behaviour (default: the pairs' prompts).
        max_new_tokens: tokens per generation.
        batch_size: batch size of NLL and generation.

    Returns:
        ``{"scales", "nll"}`` plus ``"behaviour"`` and ``"texts"`` (per scale) when
        ``behaviour`` is given.
    """
    scales = _check_coefficients(scales)
    pairs = as_pairs(pairs)
    out = {"scales": scales,
           "nll": [completion_nll(model, steerer, pairs, batch_size=batch_size, scale=s)
                   for s in scales]}
    if behaviour is None:
        return out
    if not callable(behaviour):
        raise TypeError("behaviour must be a callable(list[str]) -> float")
    prompts = [p for p, _ in pairs] if prompts is None else list(prompts)
    texts = [generate(model, steerer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                      scale=s, progress=False).texts for s in scales]
    out["texts"] = texts
    out["behaviour"] = [float(behaviour(t)) for t in texts]
    return out


__all__ = [
    "Attribution", "CosineResult", "MethodSimilarity", "NullBand", "ResidualCache",
    "SimilarityMatrix", "StrengthComparison", "SweepResult", "attribute_layers",
    "attribute_strength", "compare_strengths", "cosine_per_layer", "cumulative_sweep_clas",
    "dose_response", "head_attention_sources", "layer_profile", "layer_similarity_matrix",
    "layer_sweep_clas", "layer_sweep_las", "method_similarity", "null_band", "probe_profile",
    "readout_alignment", "strength_summary", "top_components",
]
