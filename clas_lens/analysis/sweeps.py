"""Layer sweeps: completion NLL when steering one layer (or the first k layers) at a time.

:func:`layer_sweep_las` adds ``c v_l`` at one layer for a grid of coefficients (resuming
from a :class:`~clas_lens.analysis.residual_cache.ResidualCache` by default);
:func:`layer_sweep_clas` and :func:`cumulative_sweep_clas` train a CLAS steerer per layer
or per prefix of layers.

Example:
    >>> sw = layer_sweep_las(model, dirs, pairs.valid, [-2, 0, 2])
    >>> sw.nll.shape                                 # [layer, coefficient]
    torch.Size([3, 3])
    >>> float((sw.nll[:, 1] - sw.baseline).abs().max()) < 1e-4   # coefficient 0 = unsteered
    True
    >>> sw.best()["nll"] <= sw.baseline
    True
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from clas_lens.analysis.residual_cache import ResidualCache
from clas_lens.directions import Directions, check_layers, resid_hook
from clas_lens.losses import collate, completion_nll, encode_pairs, token_nll_sums
from clas_lens.model import model_device, pad_id
from clas_lens.steerers import CLASSteerer
from clas_lens.training import train


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


def _nll_from_hidden(cache: ResidualCache, h: Tensor, labels: Tensor) -> Tensor:
    """Summed completion NLL per row, unembedding only the positions that carry a loss."""
    tgt = labels[:, 1:]
    valid = tgt != -100
    rows = valid.nonzero()[:, 0]
    logits = cache.logits(h[:, :-1][valid].unsqueeze(0))[0].float()
    ce = F.cross_entropy(logits, tgt[valid], reduction="none")
    return torch.zeros(h.shape[0], dtype=ce.dtype, device=ce.device).index_add_(0, rows, ce)


def check_coefficients(coefficients: Sequence[float], what: str = "coefficients") -> list[float]:
    """The values as floats; ``ValueError`` naming ``what`` when empty or not all finite.

    Example:
        >>> check_coefficients((0, 1, 2.5), "scales")
        [0.0, 1.0, 2.5]
        >>> check_coefficients([1, float("nan")], "scales")
        Traceback (most recent call last):
        ...
        ValueError: scales must be finite, got [1.0, nan]
    """
    cs = [float(c) for c in coefficients]
    if not cs:
        raise ValueError(f"{what} is empty")
    if not all(math.isfinite(c) for c in cs):
        raise ValueError(f"{what} must be finite, got {cs}")
    return cs


def _sweep_chunk_cached(model, dirs, layers, cs, ids, mask, labels, coef_batch, verify):
    cache = ResidualCache(model, ids, mask)
    if verify:
        cache.verify()
    base = token_nll_sums(cache.full_logits, labels)
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
        base = token_nll_sums(model(ids, attention_mask=mask), labels)
        for i, l in enumerate(layers):
            v = dirs.vector(l).to(ids.device)
            for j, c in enumerate(cs):
                def add(h, hook=None, c=c, v=v):
                    return (h.float() + c * v).to(h.dtype)
                with model.hooks(fwd_hooks=[(resid_hook(l), add)]):
                    S[i, j] = float(token_nll_sums(model(ids, attention_mask=mask), labels)[0].sum())
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
    cs = check_coefficients(coefficients)
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
        ids, mask, labels = collate(enc[k:k + batch_size], pad, device)
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


def train_at_layers(model, directions, layers, train_pairs, valid_pairs, train_kw: dict
                    ) -> tuple[float, int]:
    """Train ``CLASSteerer(directions, layers)``; ``(best valid NLL, best epoch)`` (a sweep job)."""
    steerer = CLASSteerer(directions, layers=layers)
    hist = train(model, steerer, train_pairs, valid_pairs, progress=False, **train_kw)
    return hist.best_valid_loss, hist.best_epoch


def _train_each(model, directions, layer_sets, train_pairs, valid_pairs, train_kw, workers,
                ray_address, load) -> list[tuple[float, int]]:
    """:func:`train_at_layers` for each layer set, here or on ``workers`` Ray actors."""
    args = [(directions, list(ls), train_pairs, valid_pairs, train_kw) for ls in layer_sets]
    if workers == 1 and ray_address is None:
        return [train_at_layers(model, *a) for a in args]
    import functools

    from clas_lens.model import load_model
    from clas_lens.parallel import check_workers, run_map

    load = load or functools.partial(load_model, str(model.cfg.model_name))
    return run_map(load, train_at_layers, args, workers=check_workers(workers), address=ray_address)


def layer_sweep_clas(model, directions: Directions, train_pairs, valid_pairs,
                     layers: Sequence[int] | None = None, *, epochs: int = 8, workers: int = 1,
                     ray_address: str | None = None, load=None, **train_kw) -> SweepResult:
    """Train a CLAS steerer at ONE layer at a time (``CLASSteerer(dirs, layers=[l])``).

    Args:
        model: a ``TransformerBridge``.
        directions: the probe directions.
        train_pairs, valid_pairs: pairs to train on and to score (best valid NLL).
        layers: layers to sweep (default: all the directions cover).
        epochs: training epochs per layer.
        workers: train the layers on this many Ray actors (each loads the model once;
            see :mod:`clas_lens.parallel`); 1 trains them here, one after the other.
        ray_address: an existing Ray cluster to run on.
        load: picklable loader of the model for the actors (default: ``load_model`` of
            the model's name).
        **train_kw: passed to :func:`~clas_lens.training.train` (``lr``, ``seed``, ...).

    Returns:
        A :class:`SweepResult` with ``nll [layer]`` (best valid NLL of each layer's steerer)
        and ``meta["best_epoch"]``.
    """
    layers = check_layers(model, directions.layers if layers is None else layers)
    t0 = time.perf_counter()
    done = _train_each(model, directions, [[l] for l in layers], train_pairs, valid_pairs,
                       {"epochs": epochs, **train_kw}, workers, ray_address, load)
    nll, epochs_kept = [d[0] for d in done], [d[1] for d in done]
    base = completion_nll(model, None, valid_pairs)
    return SweepResult(layers, torch.tensor(nll), base, None, "clas", time.perf_counter() - t0,
                       {"best_epoch": epochs_kept, "epochs": epochs})


def cumulative_sweep_clas(model, directions: Directions, train_pairs, valid_pairs,
                          ks: Sequence[int] | None = None, *, epochs: int = 8, workers: int = 1,
                          ray_address: str | None = None, load=None, **train_kw) -> SweepResult:
    """Train CLAS on the first ``k`` layers of ``directions`` for each ``k`` in ``ks``.

    ``workers``, ``ray_address`` and ``load`` spread the trainings over Ray actors as in
    :func:`layer_sweep_clas`.

    Returns:
        A :class:`SweepResult` whose ``layers`` are the values of ``k`` and ``nll [k]``.
    """
    n = len(directions.layers)
    ks = list(range(1, n + 1)) if ks is None else [int(k) for k in ks]
    if not ks or any(not 1 <= k <= n for k in ks):
        raise ValueError(f"ks must lie in 1..{n}, got {ks}")
    t0 = time.perf_counter()
    done = _train_each(model, directions, [directions.layers[:k] for k in ks], train_pairs,
                       valid_pairs, {"epochs": epochs, **train_kw}, workers, ray_address, load)
    nll = [d[0] for d in done]
    base = completion_nll(model, None, valid_pairs)
    return SweepResult(ks, torch.tensor(nll), base, None, "clas_cumulative",
                       time.perf_counter() - t0, {"epochs": epochs})


__all__ = ["SweepResult", "check_coefficients", "cumulative_sweep_clas", "layer_sweep_clas",
           "layer_sweep_las", "train_at_layers"]
