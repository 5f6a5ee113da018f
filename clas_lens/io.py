"""Artifacts on disk: safetensors weights plus a ``cfg.json``, written atomically.

An artifact is a folder holding ``cfg.json`` and ``weights-<sha256>.safetensors``.
The weights are written first under a content-addressed name, then ``cfg.json``
(which names the weights file and its hash) replaces the old one atomically, and
only then are older weights removed. A crash at any moment therefore leaves the
previous artifact or the new one, never a mixture. Loading checks the hashes
(of the weights, and of ``cfg.json`` itself through ``cfg_sha256``), so a truncated
or tampered file is refused (an artifact without ``cfg_sha256``, from an older
version or deliberately edited by hand, loads with the weights check only). Only
safetensors is read: no pickle. Every artifact records the versions of Python,
torch, TransformerLens and clas_lens.

Example:
    >>> folder = save_artifact(tmp / "a", {"w": torch.ones(2)}, {"kind": "demo"})
    >>> sorted(p.name.split("-")[0] for p in folder.iterdir())
    ['cfg.json', 'weights']
    >>> tensors, cfg = load_artifact(folder, kind="demo")
    >>> tensors["w"].tolist(), cfg["kind"], sorted(cfg["versions"])
    ([1.0, 1.0], 'demo', ['clas_lens', 'python', 'torch', 'transformer_lens'])
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

CFG_NAME = "cfg.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


class ArtifactError(ValueError):
    """An artifact on disk is missing, corrupt, or made for something else."""


def versions() -> dict:
    """Versions of the libraries an artifact depends on."""
    import transformer_lens

    from clas_lens import __version__

    try:
        from importlib.metadata import version

        tl = version("transformer-lens")
    except Exception:  # pragma: no cover - editable installs without metadata
        tl = getattr(transformer_lens, "__version__", "unknown")
    return {"clas_lens": __version__, "transformer_lens": tl, "torch": torch.__version__,
            "python": platform.python_version()}


CFG_HASH_KEY = "cfg_sha256"
#: entries of ``cfg.json`` written by :func:`save_artifact` itself, not by the artifact's config
ARTIFACT_KEYS = ("versions", "weights_file", "weights_sha256", CFG_HASH_KEY)


def cfg_digest(cfg: dict) -> str:
    """SHA-256 of a config's canonical JSON, leaving out its own ``cfg_sha256`` entry."""
    body = {k: v for k, v in cfg.items() if k != CFG_HASH_KEY}
    text = json.dumps(body, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Raise ``ValueError`` naming the first tensor holding NaN or infinite values."""
    for key, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{where}: tensor {key!r} contains NaN or infinite values")


def save_artifact(path: str | os.PathLike, tensors: dict[str, torch.Tensor], cfg: dict) -> Path:
    """Save tensors and a config as an artifact folder (atomic, see module doc)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ArtifactError(f"{folder} exists and is not a folder")
    check_finite(tensors, f"saving {folder}")
    data = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    digest = hashlib.sha256(data).hexdigest()
    weights = f"weights-{digest[:16]}.safetensors"
    full_cfg = dict(cfg)
    full_cfg.setdefault("versions", versions())
    full_cfg["weights_file"] = weights
    full_cfg["weights_sha256"] = digest
    full_cfg.pop(CFG_HASH_KEY, None)
    # round trip through JSON first, so the hash covers exactly what a load will read
    full_cfg = json.loads(json.dumps(full_cfg, default=str, allow_nan=True))
    full_cfg[CFG_HASH_KEY] = cfg_digest(full_cfg)
    text = json.dumps(full_cfg, indent=2, sort_keys=True)
    atomic_write_bytes(folder / weights, data)
    atomic_write_text(folder / CFG_NAME, text + "\n")
    for old in folder.glob("weights-*.safetensors"):
        if old.name != weights:
            old.unlink(missing_ok=True)
    return folder


def load_artifact(path: str | os.PathLike, *, kind: str | None = None) -> tuple[dict, dict]:
    """Load an artifact folder; returns ``(tensors, cfg)``.

    Raises:
        ArtifactError: missing files, a corrupt ``cfg.json``, a hash mismatch, a file
            safetensors cannot read, non-finite values, or a ``kind`` other than expected.
    """
    folder = Path(path)
    cfg_path = folder / CFG_NAME
    if not cfg_path.is_file():
        raise ArtifactError(f"{folder} is not a clas_lens artifact: {CFG_NAME} is missing")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{cfg_path} is not valid JSON (truncated or modified?): {err}") from err
    if not isinstance(cfg, dict) or "weights_file" not in cfg:
        raise ArtifactError(f"{cfg_path} does not name a weights file")
    if CFG_HASH_KEY in cfg and cfg[CFG_HASH_KEY] != cfg_digest(cfg):
        raise ArtifactError(
            f"{cfg_path} does not match its recorded {CFG_HASH_KEY}: it was modified after "
            f"saving (to accept a deliberate edit, delete its {CFG_HASH_KEY!r} entry)"
        )
    if kind is not None and cfg.get("kind") != kind:
        raise ArtifactError(f"{folder} holds a {cfg.get('kind')!r}, expected a {kind!r}")
    weights_path = folder / str(cfg["weights_file"])
    if weights_path.parent != folder or not weights_path.name.endswith(".safetensors"):
        raise ArtifactError(f"{cfg_path}: the weights file must be a .safetensors file inside "
                            "the artifact folder")
    if not weights_path.is_file():
        raise ArtifactError(f"{weights_path} is missing")
    data = weights_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != cfg.get("weights_sha256"):
        raise ArtifactError(
            f"{weights_path} does not match the hash recorded in {CFG_NAME}: truncated or modified"
        )
    try:
        tensors = st_load(data)
    except (SafetensorError, Exception) as err:
        raise ArtifactError(f"{weights_path} cannot be read as safetensors: {err}") from err
    try:
        check_finite(tensors, f"loading {folder}")
    except ValueError as err:
        raise ArtifactError(str(err)) from err
    return tensors, cfg


def check_model_matches(cfg: dict, model, what: str) -> None:
    """Refuse an artifact made for another model (name, n_layers or d_model differ)."""
    from clas_lens.model import model_info

    info = model_info(model)
    for key in ("model_name", "n_layers", "d_model"):
        if key in cfg and cfg[key] != info[key]:
            raise ArtifactError(
                f"{what} was made for a model with {key}={cfg[key]!r}, "
                f"but this model has {key}={info[key]!r}"
            )
    hook_dict = getattr(model, "hook_dict", None)
    names = cfg.get("hook_names")
    if hook_dict is not None and isinstance(names, list):
        unknown = [n for n in names if n not in hook_dict]
        if unknown:
            raise ArtifactError(
                f"{what} uses hook point(s) {unknown} that this model does not have"
            )
