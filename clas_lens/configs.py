"""Typed configs of the artifacts on disk: one dataclass per artifact, as ``cfg.json``.

A :class:`SteererConfig` or :class:`DirectionsConfig` says everything needed to rebuild
an artifact's module except its tensors: the kind, the layers and hook points, the model
it was made for, the kind-specific settings and the provenance (which directions a
steerer was built from, how it was trained, how directions were fitted).
``to_dict()`` gives what is written to ``cfg.json``; ``from_dict()`` reads it back and
refuses unknown or missing keys with an :class:`~clas_lens.io.ArtifactError`.
Files written by the earlier layout (provenance in loose ``extra`` / ``meta`` entries)
still load: ``from_dict`` moves those entries to their typed fields.

Example:
    >>> cfg = SteererConfig(kind="clas", layers=[0, 1], hook_names=["a", "b"],
    ...                     model_name="tiny", n_layers=3, d_model=8)
    >>> SteererConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> SteererConfig.from_dict({**cfg.to_dict(), "colour": "red"})
    Traceback (most recent call last):
    ...
    clas_lens.io.ArtifactError: steerer cfg.json: unknown key(s) ['colour']; expected keys among ...
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from clas_lens.io import ARTIFACT_KEYS, ArtifactError


def checked_fields(cls, data: Any, what: str, *, required: tuple[str, ...] | None = None) -> dict:
    """The entries of ``data`` that are fields of dataclass ``cls``; an error on any other.

    Args:
        cls: the dataclass.
        data: the dict read from disk.
        what: names the config in error messages.
        required: keys that must be present (default: the fields without a default).

    Raises:
        ArtifactError: ``data`` is not a dict, has unknown keys or lacks required ones.
    """
    if not isinstance(data, dict):
        raise ArtifactError(f"{what}: expected a JSON object, got {type(data).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ArtifactError(f"{what}: unknown key(s) {unknown}; expected keys among {names} "
                            "(a file from a newer clas_lens?)")
    if required is None:
        required = tuple(f.name for f in fields(cls)
                         if f.default is MISSING and f.default_factory is MISSING)
    missing = [k for k in required if k not in data]
    if missing:
        raise ArtifactError(f"{what}: missing key(s) {missing} (truncated or hand-edited file?)")
    return dict(data)


def _without_bookkeeping(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ARTIFACT_KEYS}


@dataclass(frozen=True)
class DirectionSource:
    """Provenance of the directions a steerer was built from: one entry per rank."""

    method: str
    concept: str
    layers: list[int]

    @classmethod
    def from_dict(cls, d: dict) -> DirectionSource:
        return cls(**checked_fields(cls, d, "directions provenance"))


@dataclass(frozen=True)
class TrainingRecord:
    """How :func:`clas_lens.training.train` trained a steerer, and which state it kept.

    Attributes:
        settings: the settings of the run (learning rates, epochs, seed, batch sizes,
            protocol), as :attr:`clas_lens.training.TrainHistory.settings` holds them.
        best_epoch: epoch of the kept parameters (0 = untrained).
        best_step: optimiser step of the kept parameters (0 = untrained).
        best_valid_loss: their valid loss (``None`` without valid data).
    """

    settings: dict
    best_epoch: int
    best_step: int = 0
    best_valid_loss: float | None = None

    @classmethod
    def from_dict(cls, d: dict) -> TrainingRecord:
        """Read a record; a flat dict (the settings next to the ``best_*`` entries, as the
        earlier layout wrote it) is accepted too."""
        if isinstance(d, dict) and "settings" not in d:
            best = {k: d[k] for k in ("best_epoch", "best_step", "best_valid_loss") if k in d}
            d = {"settings": {k: v for k, v in d.items() if k not in best}, **best}
        return cls(**checked_fields(cls, d, "training record"))


@dataclass
class SteererConfig:
    """What a saved steerer is, apart from its tensors.

    Attributes:
        kind: ``"clas"``, ``"reft"``, ``"las"``, ``"las_layerwise"`` or ``"lora"``.
        layers: the model layers steered.
        hook_names: the hook point edited at each layer.
        model_name, n_layers, d_model: the model the steerer was made for.
        rank: directions (CLAS, ReFT) or LoRA rank per layer; 1 for LAS.
        d_mlp: the MLP width (LoRA only).
        lora_alpha: the LoRA scaling numerator, the update is ``(lora_alpha / rank) B A x``.
        seed: seed of the random initial directions (ReFT) or ``A`` (LoRA).
        directions: where the frozen directions came from (CLAS, LAS).
        training: set by :func:`clas_lens.training.train`.
    """

    kind: str
    layers: list[int]
    hook_names: list[str]
    model_name: str
    n_layers: int
    d_model: int
    rank: int = 1
    d_mlp: int | None = None
    lora_alpha: float | None = None
    seed: int | None = None
    directions: list[DirectionSource] | None = None
    training: TrainingRecord | None = None

    @property
    def model_info(self) -> dict:
        """``model_name``, ``n_layers`` and ``d_model`` (what a model must match)."""
        return {"model_name": self.model_name, "n_layers": self.n_layers, "d_model": self.d_model}

    def to_dict(self) -> dict:
        """The JSON-ready dict written to ``cfg.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, *, rank: int | None = None) -> SteererConfig:
        """Read a ``cfg.json`` dict (the artifact's hash and version entries are ignored).

        Args:
            d: the dict.
            rank: the rank implied by the tensors, for files of the earlier layout
                (which did not record it).

        Raises:
            ArtifactError: unknown or missing keys, or malformed provenance.
        """
        d = _without_bookkeeping(d)
        if "extra" in d:
            d = _upgrade_steerer(d, rank)
        d = checked_fields(cls, d, "steerer cfg.json")
        try:
            if d.get("directions") is not None:
                d["directions"] = [DirectionSource.from_dict(x) for x in d["directions"]]
            if d.get("training") is not None:
                d["training"] = TrainingRecord.from_dict(d["training"])
        except TypeError as err:
            raise ArtifactError(f"steerer cfg.json: malformed provenance: {err}") from err
        d["layers"] = [int(x) for x in d["layers"]]
        return cls(**d)


def _upgrade_steerer(d: dict, rank: int | None) -> dict:
    """The earlier layout kept seed, lora_alpha, d_mlp, directions and training in ``extra``."""
    d = dict(d)
    extra = d.pop("extra")
    if not isinstance(extra, dict):
        raise ArtifactError("steerer cfg.json: 'extra' must be an object")
    extra = dict(extra)
    if "train" in extra:
        extra["training"] = extra.pop("train")
    for key in ("seed", "lora_alpha", "d_mlp", "directions", "training"):
        if key in extra:
            d[key] = extra.pop(key)
    if extra:
        raise ArtifactError(f"steerer cfg.json: unknown key(s) {sorted(extra)} in 'extra'")
    d.setdefault("rank", 1 if rank is None else int(rank))
    return d


@dataclass(frozen=True)
class ProbeFit:
    """How :func:`clas_lens.directions.fit_directions` fitted a set of directions."""

    position: str
    seed: int
    holdout: float
    n_fit: int
    n_heldout: int
    truncate: bool = False
    #: ``"template"``, ``"response"`` or ``"prompts"`` (see ``ContrastSet.source``)
    contrast: str = "prompts"
    #: held-out accuracy reached by luck (``directions.chance_accuracy``); ``at_chance``
    #: is true when no layer does better
    chance_accuracy: float | None = None
    at_chance: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> ProbeFit:
        return cls(**checked_fields(cls, d, "probe fit settings"))


@dataclass
class DirectionsConfig:
    """What a saved :class:`~clas_lens.directions.Directions` is, apart from its tensors.

    Attributes:
        method: the probe method (see :data:`clas_lens.directions.PROBE_METHODS`).
        layers: the model layer of each direction.
        hook_names: the hook point each direction was read at.
        model_name, n_layers, d_model: the model the directions were read from.
        concept: the contrast set's name.
        fit: the fit settings (``None`` for directions made by hand).
        kind: always ``"directions"``.
    """

    method: str
    layers: list[int]
    hook_names: list[str]
    model_name: str
    n_layers: int
    d_model: int
    concept: str = ""
    fit: ProbeFit | None = None
    kind: str = field(default="directions")

    def to_dict(self) -> dict:
        """The JSON-ready dict written to ``cfg.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DirectionsConfig:
        """Read a ``cfg.json`` dict (the artifact's hash and version entries are ignored).

        Raises:
            ArtifactError: unknown or missing keys, another kind, or malformed fit settings.
        """
        d = _without_bookkeeping(d)
        if "meta" in d:  # the earlier layout: fit settings in a loose dict
            d = dict(d)
            meta = d.pop("meta")
            d["fit"] = meta if meta else None
        d = checked_fields(cls, d, "directions cfg.json")
        if d.get("kind", "directions") != "directions":
            raise ArtifactError(f"directions cfg.json: kind is {d['kind']!r}, not 'directions'")
        d["layers"] = [int(x) for x in d["layers"]]
        try:
            if d.get("fit") is not None:
                d["fit"] = ProbeFit.from_dict(d["fit"])
        except TypeError as err:
            raise ArtifactError(f"directions cfg.json: malformed fit settings: {err}") from err
        return cls(**d)


__all__ = ["DirectionSource", "DirectionsConfig", "ProbeFit", "SteererConfig", "TrainingRecord",
           "checked_fields"]
