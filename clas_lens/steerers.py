"""Steerers: small torch modules that edit the residual stream through hook points.

CLAS adds, at each steered layer ``l`` and every token ``t``,
``h' = h + (W_l h + b_l) V_l`` with frozen probe directions ``V_l`` and learned
``W_l, b_l`` (zero at start, so an untrained steerer is the unsteered model).
The baselines share the same interface: ``LASSteerer`` (one coefficient for
all layers), ``LayerwiseLASSteerer`` (one learned coefficient per layer),
``ReFTSteerer`` (the CLAS form with a learned direction) and ``LoRASteerer``
(rank-r update of each MLP's down projection).

Steering arithmetic runs in float32 whatever the model dtype. Edits compose
through depth: layer ``l`` reads the residual already steered at earlier layers.

Applying: ``with steerer.apply(model): ...`` adds the hooks and always removes
them. Nesting two different steerers stacks their edits (the inner one's hook
runs after the outer one's at a shared hook point); applying the same steerer
again while it is applied to the same model raises ``RuntimeError``.

Example:
    >>> steerer = CLASSteerer(directions)                    # doctest: +SKIP
    >>> with steerer.apply(model):                           # doctest: +SKIP
    ...     logits = model(ids)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Float
from torch import Tensor, nn

from clas_lens.directions import Directions, resid_hook, validate_layers
from clas_lens.io import (
    ArtifactError,
    check_finite,
    check_model_matches,
    load_artifact,
    save_artifact,
)
from clas_lens.model import model_info


class Recorder:
    """Collects strengths ``[batch, pos, r]`` and projections per steered layer, per call.

    Entries stay on the model's device while recording (no device-to-host copy, hence
    no synchronisation, inside the hooks); :meth:`stacked` returns them on the CPU.
    """

    def __init__(self):
        self.strengths: dict[int, list[Tensor]] = {}
        self.projections: dict[int, list[Tensor]] = {}

    def add(self, j: int, strength: Tensor | None, projection: Tensor | None) -> None:
        if strength is not None:
            self.strengths.setdefault(j, []).append(strength.detach().float())
        if projection is not None:
            self.projections.setdefault(j, []).append(projection.detach().float())

    def clear(self) -> None:
        self.strengths.clear()
        self.projections.clear()

    def stacked(self, which: str = "strengths") -> Tensor | None:
        """``[batch, pos, layer, r]`` over the recorded calls (concatenated along pos)."""
        store = getattr(self, which)
        if not store:
            return None
        per_layer = [torch.cat(store[j], dim=1) for j in sorted(store)]
        return torch.stack(per_layer, dim=2).cpu()


_APPLIED: set[tuple[int, int]] = set()


class Steerer(nn.Module):
    """Base class: one edit per hook point, saved as safetensors + ``cfg.json``."""

    kind = "steerer"
    records_strength = True

    def __init__(self, layers: Sequence[int], info: dict):
        super().__init__()
        self.layers = [int(x) for x in layers]
        if not self.layers:
            raise ValueError("a steerer needs at least one layer")
        self.info = dict(info)
        self.extra: dict = {}

    # -- to implement ----------------------------------------------------
    def edit(self, j: int, h: Float[Tensor, "batch pos d"], scale: float):
        """Return ``(h_new, strength [b, p, r] | None, projection [b, p, r] | None)``."""
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        """AdamW parameter groups with the default learning rates."""
        raise NotImplementedError

    # -- hooks -----------------------------------------------------------
    @property
    def hook_names(self) -> list[str]:
        return [resid_hook(l) for l in self.layers]

    def check_model(self, model) -> None:
        """Refuse a model whose name or shape differs from the one this steerer was made for."""
        check_model_matches(self.info, model, f"this {type(self).__name__}")

    def fwd_hooks(self, *, scale: float = 1.0, recorder: Recorder | None = None
                  ) -> list[tuple[str, Callable]]:
        """``(hook_name, fn)`` pairs for ``model.hooks`` / ``run_with_hooks``."""
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale}")

        def make(j: int):
            def hook(h, hook=None):
                new, strength, proj = self.edit(j, h, scale)
                if recorder is not None:
                    recorder.add(j, strength, proj)
                return new
            return hook

        return [(name, make(j)) for j, name in enumerate(self.hook_names)]

    @contextmanager
    def apply(self, model, *, scale: float = 1.0, recorder: Recorder | None = None
              ) -> Iterator[Recorder | None]:
        """Context manager that steers ``model`` inside the block and always unhooks it.

        Args:
            model: the ``TransformerBridge`` this steerer was made for.
            scale: multiplies the strength (0 = unsteered, 2 = twice as strong).
            recorder: collects strengths and projections of every forward pass.
        """
        self.check_model(model)
        check_finite(dict(self.state_dict()), f"applying this {type(self).__name__}")
        key = (id(self), id(model))
        if key in _APPLIED:
            raise RuntimeError(f"this {type(self).__name__} is already applied to this model")
        _APPLIED.add(key)
        try:
            with model.hooks(fwd_hooks=self.fwd_hooks(scale=scale, recorder=recorder)):
                yield recorder
        finally:
            _APPLIED.discard(key)

    # -- persistence -----------------------------------------------------
    def cfg(self) -> dict:
        return {"kind": self.kind, "layers": self.layers, "hook_names": self.hook_names,
                **self.info, "extra": self.extra}

    def save(self, path: str | os.PathLike) -> None:
        """Save as safetensors + ``cfg.json`` (atomic; see :mod:`clas_lens.io`)."""
        save_artifact(path, dict(self.state_dict()), self.cfg())

    def param_norms(self) -> dict[str, float]:
        return {n: float(p.detach().norm()) for n, p in self.named_parameters()}

    @classmethod
    def _from_cfg(cls, cfg: dict, tensors: dict) -> "Steerer":
        raise NotImplementedError


def _stack_directions(directions, layers) -> tuple[Tensor, dict, list[dict]]:
    dlist = [directions] if isinstance(directions, Directions) else list(directions)
    if not dlist or not all(isinstance(d, Directions) for d in dlist):
        raise TypeError("directions must be a Directions or a list of Directions")
    info = {"model_name": dlist[0].model_name, "n_layers": dlist[0].n_layers,
            "d_model": dlist[0].d_model}
    for d in dlist[1:]:
        other = {"model_name": d.model_name, "n_layers": d.n_layers, "d_model": d.d_model}
        if other != info:
            raise ValueError(f"directions come from different models: {info} vs {other}")
    if layers is None:
        layers = sorted(set.intersection(*[set(d.layers) for d in dlist]))
        if not layers:
            raise ValueError("the directions given share no layer")
    layers = validate_layers(layers, info["n_layers"])
    for l in layers:
        for d in dlist:
            if l not in d.layers:
                raise ValueError(f"directions {d.concept or d.method!r} have no layer {l}")
    V = torch.stack([torch.stack([d.vector(l) for d in dlist]) for l in layers])  # [L, r, d]
    prov = [{"method": d.method, "concept": d.concept, "layers": d.layers} for d in dlist]
    return V, info, prov


class CLASSteerer(Steerer):
    """Contextual Linear Activation Steering: ``h' = h + (W_l h + b_l) V_l``.

    Args:
        directions: a :class:`Directions` (rank 1) or a list of them (rank = their
            number, e.g. several concepts steered at once).
        layers: layers to steer (default: every layer the directions cover).
        rank: optional check of the rank implied by ``directions``.

    Example:
        >>> steerer = CLASSteerer(dirs, layers=[10, 11])    # doctest: +SKIP
    """

    kind = "clas"
    default_lr = {"W": 3e-3, "b": 0.1}

    def __init__(self, directions, layers: Sequence[int] | None = None, rank: int | None = None):
        V, info, prov = _stack_directions(directions, layers)
        if rank is not None and rank != V.shape[1]:
            raise ValueError(
                f"rank={rank} but {V.shape[1]} direction set(s) given: pass one Directions per rank"
            )
        super().__init__(_layers_of(directions, layers), info)
        self._init(V.shape[1], info["d_model"])
        self.V.copy_(V)
        self.extra = {"directions": prov}

    def _init_wb(self, r: int, d: int) -> None:
        L = len(self.layers)
        self.rank = r
        self.W = nn.Parameter(torch.zeros(L, r, d))
        self.b = nn.Parameter(torch.zeros(L, r))

    def _init(self, r: int, d: int) -> None:
        self._init_wb(r, d)
        self.register_buffer("V", torch.zeros(len(self.layers), r, d))

    def edit(self, j, h, scale):
        h32 = h.float()
        # each layer's slice follows the hook's device (a model split across devices)
        V, W, b = (t[j].to(h.device) for t in (self.V, self.W, self.b))
        proj = h32 @ V.T                             # [b, p, r]
        alpha = (h32 @ W.T + b) * scale
        return (h32 + alpha @ V).to(h.dtype), alpha, proj

    def param_groups(self):
        return [{"params": [self.W], "lr": self.default_lr["W"], "name": "W"},
                {"params": [self.b], "lr": self.default_lr["b"], "name": "b"}]

    @classmethod
    def _from_cfg(cls, cfg, tensors):
        obj = cls.__new__(cls)
        Steerer.__init__(obj, cfg["layers"], _info(cfg))
        obj._init(tensors["V"].shape[1], cfg["d_model"])
        obj.extra = cfg.get("extra", {})
        return obj


class ReFTSteerer(CLASSteerer):
    """Rank-r ReFT-style edit ``h' = h + (W_l h + b_l) U_l`` with ``U_l`` learned.

    ``U_l`` starts as random unit vectors (seeded), ``W_l`` and ``b_l`` at zero.

    Args:
        model: the model (for its name and shape).
        layers: layers to steer (default: all).
        rank: number of directions per layer.
        seed: seed of the random directions.
    """

    kind = "reft"
    default_lr = {"W": 3e-3, "b": 0.1, "U": 3e-3}

    def __init__(self, model, layers: Sequence[int] | None = None, rank: int = 1, seed: int = 0):
        info = model_info(model)
        layers = validate_layers(layers, info["n_layers"])
        rank = _check_rank(rank)
        Steerer.__init__(self, layers, info)
        self._init(rank, info["d_model"])
        gen = torch.Generator().manual_seed(seed)
        U = torch.randn(len(layers), rank, info["d_model"], generator=gen)
        self.U.data.copy_(U / U.norm(dim=-1, keepdim=True))
        self.extra = {"seed": seed}

    def _init(self, r, d):
        self._init_wb(r, d)
        self.U = nn.Parameter(torch.zeros(len(self.layers), r, d))

    @property
    def V(self) -> Tensor:  # the learned directions play the role of V
        return self.U

    def param_groups(self):
        return super().param_groups() + [{"params": [self.U], "lr": self.default_lr["U"], "name": "U"}]

    @classmethod
    def _from_cfg(cls, cfg, tensors):
        obj = cls.__new__(cls)
        Steerer.__init__(obj, cfg["layers"], _info(cfg))
        obj._init(tensors["U"].shape[1], cfg["d_model"])
        obj.extra = cfg.get("extra", {})
        return obj


class LayerwiseLASSteerer(Steerer):
    """Fixed-strength steering with one learned coefficient per layer: ``h' = h + c_l v_l``."""

    kind = "las_layerwise"
    default_lr = {"c": 0.1}

    def __init__(self, directions: Directions, layers: Sequence[int] | None = None):
        V, info, prov = _stack_directions(directions, layers)
        if V.shape[1] != 1:
            raise ValueError("LAS steerers take a single Directions (rank 1)")
        super().__init__(_layers_of(directions, layers), info)
        self._init()
        self.V.copy_(V[:, 0])
        self.extra = {"directions": prov}

    def _init(self):
        self.c = nn.Parameter(torch.zeros(len(self.layers)))
        self.register_buffer("V", torch.zeros(len(self.layers), self.info["d_model"]))

    def coefficient(self, j: int) -> Tensor:
        return self.c[j]

    def edit(self, j, h, scale):
        h32 = h.float()
        c = self.coefficient(j).to(h.device) * scale
        V = self.V[j].to(h.device)
        proj = (h32 @ V).unsqueeze(-1)
        strength = c.expand(h.shape[0], h.shape[1]).unsqueeze(-1)
        return (h32 + c * V).to(h.dtype), strength, proj

    def param_groups(self):
        return [{"params": [self.c], "lr": self.default_lr["c"], "name": "c"}]

    @classmethod
    def _from_cfg(cls, cfg, tensors):
        obj = cls.__new__(cls)
        Steerer.__init__(obj, cfg["layers"], _info(cfg))
        obj._init()
        obj.extra = cfg.get("extra", {})
        return obj


class LASSteerer(LayerwiseLASSteerer):
    """Linear activation steering with ONE coefficient for all layers: ``h' = h + c v_l``.

    ``c`` is set by :func:`clas_lens.training.grid_search_las` (or by hand: ``steerer.set(c)``).
    """

    kind = "las"

    def _init(self):
        self.c = nn.Parameter(torch.zeros(()))
        self.register_buffer("V", torch.zeros(len(self.layers), self.info["d_model"]))

    def coefficient(self, j):
        return self.c

    def set(self, c: float) -> "LASSteerer":
        """Set the shared coefficient."""
        if not math.isfinite(float(c)):
            raise ValueError(f"the LAS coefficient must be finite, got {c}")
        with torch.no_grad():
            self.c.fill_(float(c))
        return self


class LoRASteerer(Steerer):
    """Rank-r LoRA on each MLP's down projection: ``mlp_out += (a/r) B A x``.

    ``x`` is the input of the down projection (``blocks.{l}.mlp.out.hook_in``); the
    update is added at ``blocks.{l}.mlp.out.hook_out``. ``A`` starts random
    (seeded), ``B`` at zero, so the untrained steerer is the unsteered model.
    It records no strength.
    """

    kind = "lora"
    records_strength = False
    default_lr = {"A": 3e-3, "B": 3e-3}

    def __init__(self, model, layers: Sequence[int] | None = None, rank: int = 1,
                 lora_alpha: float = 2.0, seed: int = 0):
        info = model_info(model)
        d_mlp = int(getattr(model.cfg, "d_mlp", 0) or 0)
        if d_mlp <= 0:
            raise ValueError("the model config has no d_mlp")
        layers = validate_layers(layers, info["n_layers"])
        rank = _check_rank(rank)
        if not math.isfinite(lora_alpha):
            raise ValueError(f"lora_alpha must be finite, got {lora_alpha}")
        super().__init__(layers, info)
        self._init(rank, d_mlp)
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(d_mlp)
        self.A.data.copy_((torch.rand(len(layers), rank, d_mlp, generator=gen) * 2 - 1) * bound)
        self.extra = {"seed": seed, "lora_alpha": lora_alpha, "d_mlp": d_mlp}

    def _init(self, r, d_mlp):
        self.rank = r
        self.A = nn.Parameter(torch.zeros(len(self.layers), r, d_mlp))
        self.B = nn.Parameter(torch.zeros(len(self.layers), self.info["d_model"], r))

    @property
    def hook_names(self):
        return [f"blocks.{l}.mlp.out.hook_out" for l in self.layers]

    def fwd_hooks(self, *, scale=1.0, recorder=None):
        k = self.extra.get("lora_alpha", 2.0) / self.rank * scale
        hooks = []
        for j, l in enumerate(self.layers):
            box: dict = {}

            def grab(x, hook=None, box=box):
                box["x"] = x
                return x

            def add(out, hook=None, box=box, j=j):
                x = box.pop("x").float()
                A, B = self.A[j].to(x.device), self.B[j].to(x.device)
                upd = (x @ A.T) @ B.T * k
                return (out.float() + upd).to(out.dtype)

            hooks += [(f"blocks.{l}.mlp.out.hook_in", grab), (f"blocks.{l}.mlp.out.hook_out", add)]
        return hooks

    def param_groups(self):
        return [{"params": [self.A], "lr": self.default_lr["A"], "name": "A"},
                {"params": [self.B], "lr": self.default_lr["B"], "name": "B"}]

    @classmethod
    def _from_cfg(cls, cfg, tensors):
        obj = cls.__new__(cls)
        Steerer.__init__(obj, cfg["layers"], _info(cfg))
        obj.extra = cfg.get("extra", {})
        obj._init(tensors["A"].shape[1], tensors["A"].shape[2])
        return obj


def _info(cfg: dict) -> dict:
    return {k: cfg[k] for k in ("model_name", "n_layers", "d_model")}


def _check_rank(rank) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    return rank


def _layers_of(directions, layers) -> list[int]:
    dlist = [directions] if isinstance(directions, Directions) else list(directions)
    if layers is not None:
        return validate_layers(layers, dlist[0].n_layers)
    return sorted(set.intersection(*[set(d.layers) for d in dlist]))


KINDS: dict[str, type[Steerer]] = {
    c.kind: c for c in (CLASSteerer, ReFTSteerer, LASSteerer, LayerwiseLASSteerer, LoRASteerer)
}


def load_steerer(path: str | os.PathLike, model=None) -> Steerer:
    """Load a saved steerer of any kind; with ``model``, refuse a mismatched model.

    Raises:
        ArtifactError: unknown kind, corrupt or tampered files, or another model.
    """
    tensors, cfg = load_artifact(path)
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise ArtifactError(f"{path}: unknown steerer kind {kind!r}; known: {sorted(KINDS)}")
    for key in ("layers", "model_name", "n_layers", "d_model"):
        if key not in cfg:
            raise ArtifactError(f"{path}: cfg.json lacks {key!r}")
    if model is not None:
        check_model_matches(cfg, model, f"steerer {path}")
    obj = KINDS[kind]._from_cfg(cfg, tensors)
    try:
        obj.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ArtifactError(f"{path}: tensors do not fit a {kind} steerer: {err}") from err
    return obj
