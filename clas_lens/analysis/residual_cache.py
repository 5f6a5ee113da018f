"""A cached unsteered forward pass that later blocks can be resumed from.

:class:`ResidualCache` keeps every layer's residual and the keyword arguments each block
received, so a layer sweep can edit layer ``l``'s residual and run only blocks ``l+1..``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from clas_lens.directions import resid_hook


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


__all__ = ["ResidualCache"]
