"""Direction similarity with a null reference: per-layer cosines of two direction sets,
layer-by-layer and method-by-method cosine matrices, and probe accuracy profiles.

Every cosine comes with a :class:`NullBand`, the spread of the cosine of two random unit
vectors in the same dimension, so "aligned" can be told from chance.

Example:
    >>> from clas_lens.testing import random_directions, randomize
    >>> steerer = randomize(cl.CLASSteerer(dirs), seed=1, scale=0.1)
    >>> readout_alignment(steerer).summary()["labels"]      # cos(w_l, v_l) against a null band
    ('w', 'v')
    >>> sim = method_similarity({"a": dirs, "b": random_directions(model, seed=2)})
    >>> sim.cos.shape                                # [method, method, layer]
    torch.Size([2, 2, 3])
    >>> band = null_band(32, n_null=200)             # cosines of random unit pairs in 32 dims
    >>> band.lo < 0 < band.hi
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from clas_lens.directions import Directions
from clas_lens.steerers import CLASSteerer


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

    cos: Float[Tensor, "layer"]  # noqa: F821
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


__all__ = [
    "CosineResult", "MethodSimilarity", "NullBand", "SimilarityMatrix", "cosine_per_layer",
    "layer_similarity_matrix", "method_similarity", "null_band", "probe_profile",
    "readout_alignment",
]
