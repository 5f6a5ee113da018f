"""Steering outside TransformerLens: plain ``transformers`` models and an exported affine map.

A steerer edits TransformerLens hook points; the same edits land on a plain
``transformers`` causal LM through PyTorch forward hooks on the modules those hook
points wrap:

==================================  ===============================================
TransformerLens hook point          module of the plain model
==================================  ===============================================
``blocks.{l}.hook_resid_post``      output of decoder layer ``l`` (``model.layers.{l}``)
``blocks.{l}.mlp.out.hook_in``      input of ``model.layers.{l}.mlp.down_proj``
``blocks.{l}.mlp.out.hook_out``     output of ``model.layers.{l}.mlp.down_proj``
==================================  ===============================================

:func:`apply_hf` installs a steerer's own hook functions there (so the arithmetic is
the very code TransformerLens runs) and removes them when the block ends, also on
errors. :func:`export` writes the per-layer affine map ``h' = h + (W_l h + b_l) V_l``
of a residual-stream steerer with the module path of each layer, for a serving engine
(see ``docs/serving.md``).

This module knows steerers only through their interface (``fwd_hooks``, ``layers``,
``info``, ``state_dict``), so it sits below :mod:`clas_lens.steerers`, which calls it
from ``Steerer.apply_hf`` and ``Steerer.export``.

Example:
    >>> hf, tok, name = cl.load_hf()                          # doctest: +SKIP
    >>> with steerer.apply_hf(hf):                            # doctest: +SKIP
    ...     logits = hf(ids).logits
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from clas_lens.io import ArtifactError, check_finite, load_artifact, save_artifact

EXPORT_KIND = "affine_export"
EXPORT_FORMAT = "clas_lens.affine/1"
_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_post|mlp\.out\.hook_in|mlp\.out\.hook_out)$")
_APPLIED_HF: set[tuple[int, int]] = set()


def steerer_info(steerer) -> dict:
    """``model_name``, ``n_layers`` and ``d_model`` of the model a steerer was made for."""
    cfg = getattr(steerer, "cfg", None)
    info = getattr(cfg, "model_info", None)
    return dict(info) if isinstance(info, dict) else dict(steerer.info)


def decoder_layers(hf_model) -> tuple[str, nn.ModuleList]:
    """``(module path, ModuleList)`` of the decoder layers of a causal LM.

    Raises:
        ValueError: no ``layers`` list is found (the message names the model class).
    """
    get = getattr(hf_model, "get_decoder", None)
    decoder = get() if callable(get) else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"cannot find the decoder layers of {type(hf_model).__name__}: expected "
            "hf_model.get_decoder().layers (Llama, Gemma, Qwen, Mistral layouts)"
        )
    names = {id(m): n for n, m in hf_model.named_modules()}
    return names[id(layers)], layers


def model_info_hf(hf_model, model_name: str | None = None) -> dict:
    """Name, number of layers and width of a plain model, as :func:`clas_lens.model.model_info`.

    ``model_name`` overrides the name recorded in the config (``config._name_or_path``),
    e.g. for a model loaded from a local folder.
    """
    cfg = hf_model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    _, layers = decoder_layers(hf_model)
    name = model_name or getattr(hf_model.config, "_name_or_path", "") or ""
    return {"model_name": str(name), "n_layers": len(layers), "d_model": int(cfg.hidden_size)}


def check_hf_model(info: dict, hf_model, what: str, model_name: str | None = None) -> None:
    """Refuse a plain model whose name, layer count or width differ from ``info``'s.

    Raises:
        ArtifactError: the first differing field, both values, and the way out for names.
    """
    have = model_info_hf(hf_model, model_name)
    for key in ("n_layers", "d_model", "model_name"):
        if info.get(key) != have[key]:
            hint = (" (a model loaded from a local folder: pass model_name= with the "
                    "name it was made for)") if key == "model_name" else ""
            raise ArtifactError(f"{what} was made for a model with {key}={info.get(key)!r}, "
                                f"but this model has {key}={have[key]!r}{hint}")


def hf_module_path(hf_model, hook_name: str) -> tuple[str, str]:
    """``(module path, "output" | "input")`` of the plain-model module under a hook point.

    Raises:
        ValueError: a hook point with no plain-model counterpart here.
    """
    m = _HOOK.match(hook_name)
    if m is None:
        raise ValueError(f"hook point {hook_name!r} has no plain transformers counterpart; "
                         "supported: blocks.{l}.hook_resid_post, blocks.{l}.mlp.out.hook_in/out")
    path, layers = decoder_layers(hf_model)
    l, where = int(m.group(1)), m.group(2)
    if l >= len(layers):
        raise ValueError(f"hook point {hook_name!r}: the model has {len(layers)} layers")
    if where == "hook_resid_post":
        return f"{path}.{l}", "output"
    if not isinstance(getattr(getattr(layers[l], "mlp", None), "down_proj", None), nn.Module):
        raise ValueError(f"{type(layers[l]).__name__} has no mlp.down_proj for {hook_name!r}")
    return f"{path}.{l}.mlp.down_proj", "input" if where.endswith("hook_in") else "output"


def _output_hook(fn):
    def hook(module, args, output):
        if isinstance(output, tuple):  # older decoder layers return (hidden, ...)
            return (fn(output[0]), *output[1:])
        return fn(output)
    return hook


def _input_hook(fn):
    def hook(module, args):
        return (fn(args[0]), *args[1:])
    return hook


@contextmanager
def apply_hf(steerer, hf_model, *, scale: float = 1.0, recorder=None,
             model_name: str | None = None) -> Iterator:
    """Steer a plain ``transformers`` model inside the block; the hooks always go.

    Args:
        steerer: any :class:`~clas_lens.steerers.Steerer`.
        hf_model: a ``transformers`` causal LM of the model the steerer was made for.
        scale: multiplies the strength, as in ``Steerer.apply``.
        recorder: a :class:`~clas_lens.steerers.Recorder` collecting strengths.
        model_name: the model's name when ``hf_model.config._name_or_path`` is not it
            (a local folder, a renamed copy).

    Yields:
        ``recorder``.

    Raises:
        ArtifactError: the model's name, layer count or width is not the steerer's.
        RuntimeError: this steerer is already applied to this model.
    """
    name = type(steerer).__name__
    check_hf_model(steerer_info(steerer), hf_model, f"this {name}", model_name)
    check_finite(dict(steerer.state_dict()), f"applying this {name}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    key = (id(steerer), id(hf_model))
    if key in _APPLIED_HF:
        raise RuntimeError(f"this {name} is already applied to this model")
    modules = dict(hf_model.named_modules())
    targets = [(hf_module_path(hf_model, hook), fn)
               for hook, fn in steerer.fwd_hooks(scale=scale, recorder=recorder)]
    _APPLIED_HF.add(key)
    handles = []
    try:
        for (path, where), fn in targets:
            if where == "output":
                handles.append(modules[path].register_forward_hook(_output_hook(fn)))
            else:
                handles.append(modules[path].register_forward_pre_hook(_input_hook(fn)))
        yield recorder
    finally:
        for h in handles:
            h.remove()
        _APPLIED_HF.discard(key)


def affine_map(steerer) -> dict[str, torch.Tensor]:
    """``{"W": [L, r, d], "b": [L, r], "V": [L, r, d]}`` of a residual-stream steerer.

    CLAS and ReFT give their own ``W, b, V`` (``V = U`` for ReFT); LAS and layerwise LAS
    are the special case ``W = 0``, ``b_l = c_l``.

    Raises:
        ValueError: the steerer is not an edit of the residual stream (LoRA).
    """
    if any(not h.endswith("hook_resid_post") for h in steerer.hook_names):
        raise ValueError(f"a {steerer.kind} steerer does not edit the residual stream, so it has "
                         "no affine map to export (merge a LoRA update into the weights instead)")
    with torch.no_grad():
        V = steerer.V.detach().float().cpu()
        if hasattr(steerer, "W"):
            return {"W": steerer.W.detach().float().cpu().clone(),
                    "b": steerer.b.detach().float().cpu().clone(), "V": V.clone()}
        L = len(steerer.layers)
        c = torch.stack([steerer.coefficient(j).detach().float().cpu() for j in range(L)])
        return {"W": torch.zeros(L, 1, V.shape[-1]), "b": c.reshape(L, 1),
                "V": V.reshape(L, 1, -1).clone()}


def export(steerer, path: str | os.PathLike, *, hf_model=None, scale: float = 1.0) -> Path:
    """Write a steerer's per-layer affine map for use outside clas_lens.

    The folder holds a safetensors file with ``W [L, r, d]``, ``b [L, r]`` and
    ``V [L, r, d]`` (float32, ``scale`` folded into ``W`` and ``b``) and ``cfg.json`` with
    ``layers``, the ``module_paths`` whose outputs (the residual stream after each
    decoder layer) are edited, the formula, the model's name and shape. Written atomically.

    Args:
        steerer: a CLAS, ReFT, LAS or layerwise LAS steerer.
        path: the export folder.
        hf_model: the plain model, to read the module paths from (and check its shape);
            default: the usual ``model.layers.{l}`` layout.
        scale: strength multiplier folded into the exported map.

    Returns:
        The folder.
    """
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    tensors = affine_map(steerer)
    info = steerer_info(steerer)
    tensors["W"] *= scale
    tensors["b"] *= scale
    if hf_model is not None:
        check_hf_model(info, hf_model, f"this {type(steerer).__name__}", info["model_name"])
        paths = [hf_module_path(hf_model, h)[0] for h in steerer.hook_names]
    else:
        paths = [f"model.layers.{l}" for l in steerer.layers]
    cfg = {"kind": EXPORT_KIND, "format": EXPORT_FORMAT, "steerer_kind": steerer.kind,
           "formula": "h' = h + (W[j] @ h + b[j]) @ V[j] on the output h of module_paths[j], "
                      "in float32, cast back to the model dtype",
           "layers": list(steerer.layers), "module_paths": paths, "scale": float(scale),
           "rank": int(tensors["V"].shape[1]),
           **info}
    return save_artifact(path, tensors, cfg)


def load_export(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an export written by :func:`export`: ``(tensors, cfg)``, hashes checked."""
    tensors, cfg = load_artifact(path, kind=EXPORT_KIND)
    if cfg.get("format") != EXPORT_FORMAT:
        raise ArtifactError(f"{path}: export format {cfg.get('format')!r}, expected {EXPORT_FORMAT!r}")
    return tensors, cfg


@contextmanager
def apply_export(path: str | os.PathLike, hf_model) -> Iterator[dict]:
    """Apply an exported affine map to a plain model with nothing but its tensors and paths.

    This is the reference a serving engine reimplements (``docs/serving.md``).
    """
    tensors, cfg = load_export(path)
    check_hf_model(cfg, hf_model, f"export {path}", cfg["model_name"])
    modules = dict(hf_model.named_modules())
    handles = []

    def make(j: int):
        def fn(h):
            W, b, V = (tensors[k][j].to(h.device) for k in ("W", "b", "V"))
            h32 = h.float()
            return (h32 + (h32 @ W.T + b) @ V).to(h.dtype)
        return fn

    try:
        for j, p in enumerate(cfg["module_paths"]):
            handles.append(modules[p].register_forward_hook(_output_hook(make(j))))
        yield cfg
    finally:
        for h in handles:
            h.remove()
