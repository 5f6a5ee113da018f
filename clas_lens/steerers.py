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

Every steerer carries a :class:`~clas_lens.configs.SteererConfig` (``steerer.cfg``):
its kind, layers, hook points, model, settings and provenance, saved as ``cfg.json``.
A subclass declares its tensors' shapes (:meth:`Steerer.tensor_shapes`) and its edit
(:meth:`Steerer.edit`); hooks, checks, recording and loading are the base class's.

Example:
    >>> steerer = CLASSteerer(dirs, layers=[1, 2])   # W, b = 0: the unsteered model
    >>> steerer.cfg.kind, steerer.layers, steerer.rank
    ('clas', [1, 2], 1)
    >>> with steerer.apply(model, recorder=Recorder()) as rec:
    ...     logits = model(ids)
    >>> rec.stacked().shape[2:]                      # [batch, pos, layer, rank]
    torch.Size([2, 1])
    >>> steerer.save(tmp / "clas")
    >>> load_steerer(tmp / "clas", model=model).cfg == steerer.cfg
    True
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Float
from torch import Tensor, nn

from clas_lens import hf as plain_hf
from clas_lens.configs import DirectionSource, SteererConfig, TrainingRecord
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

#: a tensor's shape and whether it is trained (a parameter) or frozen (a buffer)
TensorSpec = tuple[tuple[int, ...], bool]


class Steerer(nn.Module):
    """Base class: one edit per hook point, saved as safetensors + ``cfg.json``.

    Args:
        cfg: the config; every tensor of :meth:`tensor_shapes` starts at zero.
    """

    kind = "steerer"
    records_strength = True
    default_lr: dict[str, float] = {}
    #: tensors whose being all zero makes the edit the identity (empty: never assumed)
    identity_when_zero: tuple[str, ...] = ()

    def __init__(self, cfg: SteererConfig):
        super().__init__()
        if cfg.kind != self.kind:
            raise ValueError(f"a {type(self).__name__} needs a config of kind {self.kind!r}, "
                             f"got {cfg.kind!r}")
        if not cfg.layers:
            raise ValueError("a steerer needs at least one layer")
        self.cfg = cfg
        for name, (shape, trained) in self.tensor_shapes(cfg).items():
            if trained:
                setattr(self, name, nn.Parameter(torch.zeros(shape)))
            else:
                self.register_buffer(name, torch.zeros(shape))

    # -- to implement ----------------------------------------------------
    @classmethod
    def tensor_shapes(cls, cfg: SteererConfig) -> dict[str, TensorSpec]:
        """Name -> ``(shape, trained)`` of every tensor a steerer of this config holds."""
        raise NotImplementedError

    def edit(self, j: int, h: Float[Tensor, "batch pos d"], scale: float):
        """Return ``(h_new, strength [b, p, r] | None, projection [b, p, r] | None)``.

        Steerers with :meth:`source_hook_names` get a fourth argument ``source``: the
        activation at ``source_hook_names[j]`` in the same forward pass.
        """
        raise NotImplementedError

    @classmethod
    def hook_names_for(cls, layers: Sequence[int]) -> list[str]:
        """The hook point edited at each layer (default: the residual stream after the block)."""
        return [resid_hook(l) for l in layers]

    def source_hook_names(self) -> list[str] | None:
        """Hook points read, in the same pass, before each edit (``None``: the edit reads ``h``)."""
        return None

    def is_identity(self) -> bool:
        """Whether the edit leaves every activation unchanged: all tensors named in
        :attr:`identity_when_zero` are zero (a zero-initialised or ``c = 0`` steerer)."""
        return bool(self.identity_when_zero) and not any(
            bool(getattr(self, n).detach().any()) for n in self.identity_when_zero)

    # -- what the config says ---------------------------------------------
    @property
    def layers(self) -> list[int]:
        return self.cfg.layers

    @property
    def rank(self) -> int:
        return self.cfg.rank

    @property
    def hook_names(self) -> list[str]:
        return self.cfg.hook_names

    @classmethod
    def make_config(cls, layers: Sequence[int], info: dict, **settings) -> SteererConfig:
        """A config of this kind for ``layers`` of the model described by ``info``."""
        layers = [int(x) for x in layers]
        return SteererConfig(kind=cls.kind, layers=layers, hook_names=cls.hook_names_for(layers),
                             **info, **settings)

    def record_training(self, record: TrainingRecord | dict) -> None:
        """Keep how the steerer was trained in its config (saved with it)."""
        if isinstance(record, dict):
            record = TrainingRecord.from_dict(record)
        self.cfg.training = record

    # -- hooks -----------------------------------------------------------
    def check_model(self, model) -> None:
        """Refuse a model whose name, shape or hook points differ from the ones this steerer
        was made for."""
        check_model_matches({**self.cfg.model_info, "hook_names": self.hook_names}, model,
                            f"this {type(self).__name__}")

    def param_groups(self) -> list[dict]:
        """AdamW parameter groups with the default learning rates (:attr:`default_lr`)."""
        return [{"params": [getattr(self, name)], "lr": lr, "name": name}
                for name, lr in self.default_lr.items()]

    def fwd_hooks(self, *, scale: float = 1.0, recorder: Recorder | None = None
                  ) -> list[tuple[str, Callable]]:
        """``(hook_name, fn)`` pairs for ``model.hooks`` / ``run_with_hooks``."""
        if not math.isfinite(scale):
            raise ValueError(f"scale must be finite, got {scale}")
        sources = self.source_hook_names()
        hooks: list[tuple[str, Callable]] = []
        for j, name in enumerate(self.hook_names):
            box: dict = {}

            def grab(x, hook=None, box=box):
                box["source"] = x
                return x

            def steer(h, hook=None, j=j, box=box):
                args = (j, h, scale) if sources is None else (j, h, scale, box.pop("source"))
                new, strength, proj = self.edit(*args)
                if recorder is not None:
                    recorder.add(j, strength, proj)
                return new

            if sources is not None:
                hooks.append((sources[j], grab))
            hooks.append((name, steer))
        return hooks

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

    def apply_hf(self, hf_model, *, scale: float = 1.0, recorder: Recorder | None = None,
                 model_name: str | None = None):
        """Context manager steering a plain ``transformers`` model: the same edits as
        :meth:`apply`, as forward hooks on its decoder layers (see :func:`clas_lens.hf.apply_hf`)."""
        return plain_hf.apply_hf(self, hf_model, scale=scale, recorder=recorder,
                                 model_name=model_name)

    def export(self, path: str | os.PathLike, *, hf_model=None, scale: float = 1.0):
        """Write the per-layer affine map ``W, b, V`` and the module paths it edits, for a
        serving engine (see :func:`clas_lens.hf.export` and ``docs/serving.md``)."""
        return plain_hf.export(self, path, hf_model=hf_model, scale=scale)

    # -- persistence -----------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Save as safetensors + ``cfg.json`` (atomic; see :mod:`clas_lens.io`)."""
        save_artifact(path, dict(self.state_dict()), self.cfg.to_dict())

    def param_norms(self) -> dict[str, float]:
        return {n: float(p.detach().norm()) for n, p in self.named_parameters()}

    @classmethod
    def _from_cfg(cls, cfg: SteererConfig) -> Steerer:
        """A steerer of this kind with every tensor at zero (the loader fills them)."""
        obj = cls.__new__(cls)
        Steerer.__init__(obj, cfg)
        return obj

    @classmethod
    def rank_of(cls, tensors: dict[str, Tensor]) -> int:
        """The rank implied by saved tensors (for files that did not record it)."""
        return 1


def _stack_directions(directions, layers) -> tuple[Tensor, list[int], dict, list[DirectionSource]]:
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
    prov = [DirectionSource(d.method, d.concept, list(d.layers)) for d in dlist]
    return V, layers, info, prov


class CLASSteerer(Steerer):
    """Contextual Linear Activation Steering: ``h' = h + (W_l h + b_l) V_l``.

    Args:
        directions: a :class:`Directions` (rank 1) or a list of them (rank = their
            number, e.g. several concepts steered at once).
        layers: layers to steer (default: every layer the directions cover).
        rank: optional check of the rank implied by ``directions``.

    Example:
        >>> CLASSteerer([dirs, dirs], layers=[0]).W.shape   # [layer, rank, d_model]
        torch.Size([1, 2, 32])
    """

    kind = "clas"
    default_lr = {"W": 3e-3, "b": 0.1}
    identity_when_zero = ("W", "b")

    def __init__(self, directions, layers: Sequence[int] | None = None, rank: int | None = None):
        V, layers, info, prov = _stack_directions(directions, layers)
        if rank is not None and rank != V.shape[1]:
            raise ValueError(
                f"rank={rank} but {V.shape[1]} direction set(s) given: pass one Directions per rank"
            )
        super().__init__(self.make_config(layers, info, rank=V.shape[1], directions=prov))
        self.V.copy_(V)

    @classmethod
    def tensor_shapes(cls, cfg):
        L, r, d = len(cfg.layers), cfg.rank, cfg.d_model
        return {"W": ((L, r, d), True), "b": ((L, r), True), "V": ((L, r, d), False)}

    @classmethod
    def rank_of(cls, tensors):
        return int(tensors["W"].shape[1]) if "W" in tensors and tensors["W"].ndim == 3 else 1

    def edit(self, j, h, scale):
        h32 = h.float()
        # each layer's slice follows the hook's device (a model split across devices)
        V, W, b = (t[j].to(h.device) for t in (self.V, self.W, self.b))
        proj = h32 @ V.T                             # [b, p, r]
        alpha = (h32 @ W.T + b) * scale
        return (h32 + alpha @ V).to(h.dtype), alpha, proj


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
        Steerer.__init__(self, self.make_config(layers, info, rank=rank, seed=seed))
        gen = torch.Generator().manual_seed(seed)
        U = torch.randn(len(layers), rank, info["d_model"], generator=gen)
        self.U.data.copy_(U / U.norm(dim=-1, keepdim=True))

    @classmethod
    def tensor_shapes(cls, cfg):
        L, r, d = len(cfg.layers), cfg.rank, cfg.d_model
        return {"W": ((L, r, d), True), "b": ((L, r), True), "U": ((L, r, d), True)}

    @property
    def V(self) -> Tensor:  # the learned directions play the role of V
        return self.U


class LayerwiseLASSteerer(Steerer):
    """Fixed-strength steering with one learned coefficient per layer: ``h' = h + c_l v_l``."""

    kind = "las_layerwise"
    default_lr = {"c": 0.1}
    identity_when_zero = ("c",)

    def __init__(self, directions: Directions, layers: Sequence[int] | None = None):
        V, layers, info, prov = _stack_directions(directions, layers)
        if V.shape[1] != 1:
            raise ValueError("LAS steerers take a single Directions (rank 1)")
        super().__init__(self.make_config(layers, info, directions=prov))
        self.V.copy_(V[:, 0])

    @classmethod
    def tensor_shapes(cls, cfg):
        L = len(cfg.layers)
        return {"c": ((L,), True), "V": ((L, cfg.d_model), False)}

    def coefficient(self, j: int) -> Tensor:
        return self.c[j]

    def edit(self, j, h, scale):
        h32 = h.float()
        c = self.coefficient(j).to(h.device) * scale
        V = self.V[j].to(h.device)
        proj = (h32 @ V).unsqueeze(-1)
        strength = c.expand(h.shape[0], h.shape[1]).unsqueeze(-1)
        return (h32 + c * V).to(h.dtype), strength, proj


class LASSteerer(LayerwiseLASSteerer):
    """Linear activation steering with ONE coefficient for all layers: ``h' = h + c v_l``.

    ``c`` is set by :func:`clas_lens.training.grid_search_las` (or by hand: ``steerer.set(c)``).

    Example:
        >>> float(LASSteerer(dirs).set(2.5).c.detach())
        2.5
    """

    kind = "las"

    @classmethod
    def tensor_shapes(cls, cfg):
        return {"c": ((), True), "V": ((len(cfg.layers), cfg.d_model), False)}

    def coefficient(self, j):
        return self.c

    def set(self, c: float) -> LASSteerer:
        """Set the shared coefficient."""
        if not math.isfinite(float(c)):
            raise ValueError(f"the LAS coefficient must be finite, got {c}")
        with torch.no_grad():
            self.c.fill_(float(c))
        return self


class LoRASteerer(Steerer):
    """Rank-r LoRA on each MLP's down projection: ``mlp_out += (a/r) B A x``.

    ``x`` is the input of the down projection (``blocks.{l}.mlp.out.hook_in``, read as the
    edit's ``source``); the update is added at ``blocks.{l}.mlp.out.hook_out``. ``A`` starts
    random (seeded), ``B`` at zero, so the untrained steerer is the unsteered model.
    It records no strength.

    Example:
        >>> lora = LoRASteerer(model, layers=[0], rank=2)
        >>> lora.cfg.d_mlp, lora.hook_names
        (64, ['blocks.0.mlp.out.hook_out'])
    """

    kind = "lora"
    records_strength = False
    default_lr = {"A": 3e-3, "B": 3e-3}
    identity_when_zero = ("B",)

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
        super().__init__(self.make_config(layers, info, rank=rank, d_mlp=d_mlp,
                                          lora_alpha=float(lora_alpha), seed=seed))
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(d_mlp)
        self.A.data.copy_((torch.rand(len(layers), rank, d_mlp, generator=gen) * 2 - 1) * bound)

    @classmethod
    def tensor_shapes(cls, cfg):
        if cfg.d_mlp is None or cfg.lora_alpha is None:
            raise ArtifactError("a lora steerer's config needs d_mlp and lora_alpha")
        L, r = len(cfg.layers), cfg.rank
        return {"A": ((L, r, cfg.d_mlp), True), "B": ((L, cfg.d_model, r), True)}

    @classmethod
    def rank_of(cls, tensors):
        return int(tensors["A"].shape[1]) if "A" in tensors and tensors["A"].ndim == 3 else 1

    @classmethod
    def hook_names_for(cls, layers):
        return [f"blocks.{l}.mlp.out.hook_out" for l in layers]

    def source_hook_names(self):
        return [f"blocks.{l}.mlp.out.hook_in" for l in self.layers]

    def edit(self, j, h, scale, source=None):
        if source is None:
            raise RuntimeError("a LoRA edit needs the down projection's input (its source hook)")
        x = source.float()
        A, B = self.A[j].to(x.device), self.B[j].to(x.device)
        upd = (x @ A.T) @ B.T * (self.cfg.lora_alpha / self.rank * scale)
        return (h.float() + upd).to(h.dtype), None, None


def _check_rank(rank) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    return rank


KINDS: dict[str, type[Steerer]] = {
    c.kind: c for c in (CLASSteerer, ReFTSteerer, LASSteerer, LayerwiseLASSteerer, LoRASteerer)
}


def load_steerer(path: str | os.PathLike, model=None) -> Steerer:
    """Load a saved steerer of any kind; with ``model``, refuse a mismatched model.

    Raises:
        ArtifactError: unknown kind, corrupt or tampered files, unknown or missing
            ``cfg.json`` keys, or another model.
    """
    tensors, raw = load_artifact(path)
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ArtifactError(f"{path}: unknown steerer kind {kind!r}; known: {sorted(KINDS)}")
    cls = KINDS[kind]
    try:
        cfg = SteererConfig.from_dict(raw, rank=cls.rank_of(tensors))
        validate_layers(cfg.layers, cfg.n_layers)
    except (ArtifactError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path}: {err}") from err
    if model is not None:
        check_model_matches(cfg.to_dict(), model, f"steerer {path}")
    if cfg.hook_names != cls.hook_names_for(cfg.layers):
        raise ArtifactError(f"{path}: hook_names {cfg.hook_names} do not match a {kind} steerer "
                            f"of layers {cfg.layers}")
    obj = cls._from_cfg(cfg)
    try:
        obj.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ArtifactError(f"{path}: tensors do not fit a {kind} steerer: {err}") from err
    return obj
