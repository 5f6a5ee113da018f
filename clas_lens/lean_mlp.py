"""Gated MLPs that keep two activations per token for the backward pass instead of three.

Backpropagating through a frozen SwiGLU MLP ``down(silu(gate(x)) * up(x))`` with autograd
keeps ``gate(x)``, ``silu(gate(x))`` and ``up(x)`` for every token of every layer: on
SmolLM2 (d_mlp 1536) that is half of what a training step keeps. Inside :func:`lean_mlp`
such an MLP keeps ``gate(x)`` and ``up(x)`` only and recomputes the SiLU in the backward
pass (an elementwise op); its output is the same computation as the eager forward.

Example:
    >>> x = torch.randn(2, 5, model.cfg.d_model, requires_grad=True)
    >>> mlp = model.blocks[0].mlp
    >>> with lean_mlp(model) as n_switched:
    ...     lean = mlp(x)
    >>> eager = mlp(x)
    >>> n_switched == model.cfg.n_layers, bool((lean - eager).abs().max() < 1e-5)
    (True, True)
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from torch.autograd.function import once_differentiable

from clas_lens.model import eager_forced, is_hooked


class SwiGLU(torch.autograd.Function):
    """``down(silu(gate(x)) * up(x))`` with frozen weights, saving ``gate(x)`` and ``up(x)``.

    The weights get no gradient (the caller checks they need none); the input's gradient
    is the one autograd computes through the eager ops.
    """

    @staticmethod
    def forward(ctx, x, w_gate, w_up, w_down):
        g, u = F.linear(x, w_gate), F.linear(x, w_up)
        ctx.save_for_backward(g, u, w_gate, w_up, w_down)
        return F.linear(F.silu(g) * u, w_down)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        g, u, w_gate, w_up, w_down = ctx.saved_tensors
        d_hidden = grad @ w_down
        s = torch.sigmoid(g)
        d_up = d_hidden * (g * s)
        d_gate = d_hidden * u * (s * (1 + g * (1 - s)))
        return d_gate @ w_gate + d_up @ w_up, None, None, None


def _weights(mlp) -> tuple[Tensor, Tensor, Tensor] | None:
    """The gate, up and down weights of a plain bias-free SwiGLU bridge, else ``None``."""
    from transformer_lens.model_bridge.generalized_components.gated_mlp import GatedMLPBridge

    hf = getattr(mlp, "original_component", None)
    if not isinstance(mlp, GatedMLPBridge) or type(mlp).forward is not GatedMLPBridge.forward \
            or "forward" in vars(mlp) or getattr(mlp, "_use_processed_weights", False) \
            or hf is None or getattr(getattr(hf, "config", None), "hidden_act", None) != "silu" \
            or type(hf).__name__ not in ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"):
        return None
    out = []
    for name in ("gate_proj", "up_proj", "down_proj"):
        lin = getattr(getattr(hf, name, None), "original_component", getattr(hf, name, None))
        if not isinstance(lin, torch.nn.Linear) or lin.bias is not None:
            return None
        out.append(lin.weight)
    return tuple(out)


def _lean_forward(model, mlp, weights):
    """A forward for ``mlp`` that runs :class:`SwiGLU` when it can, else the eager forward.

    The eager forward runs when no gradient is needed (evaluation is unchanged), when a
    weight requires a gradient or differs from the input in dtype or device, inside
    ``fast_attention(model, enabled=False)``, or when a hook point inside the MLP (gate, up
    or down projection) has a hook.
    """
    eager = mlp.forward
    inner = [m for n, m in mlp.named_modules()
             if n not in ("hook_in", "hook_out") and type(m).__name__ == "HookPoint"]

    def forward(x: Float[Tensor, "batch pos d_model"], *args, **kwargs):
        if args or kwargs or not torch.is_grad_enabled() or not isinstance(x, Tensor) \
                or not x.requires_grad or eager_forced(model) \
                or any(w.requires_grad or w.dtype != x.dtype or w.device != x.device for w in weights) \
                or any(is_hooked(m) for m in inner):
            return eager(x, *args, **kwargs)
        return mlp.hook_out(SwiGLU.apply(mlp.hook_in(x), *weights))

    return forward


@contextmanager
def lean_mlp(model):
    """Inside the block, SwiGLU MLPs keep two activations per token for the backward pass.

    Only plain bias-free SiLU-gated MLPs of Llama-style models (SmolLM2, Mistral, Qwen)
    are switched; the MLP's own ``hook_in`` and ``hook_out`` fire as before, and a call
    that needs more (a hook inside the MLP, a weight that needs a gradient, no gradient
    at all) runs the eager forward. Every MLP is eager again after the block.

    Yields:
        The number of MLPs switched (0 on other models: the block changes nothing).
    """
    switched = []
    try:
        for mlp in model.modules():
            weights = _weights(mlp)
            if weights is not None:
                vars(mlp)["forward"] = _lean_forward(model, mlp, weights)
                switched.append(mlp)
        yield len(switched)
    finally:
        for mlp in switched:
            vars(mlp).pop("forward", None)


__all__ = ["SwiGLU", "lean_mlp"]
