"""Attribution of the CLAS strength ``alpha_{l,t} = w_l . h_{l,t} + b_l``: an exact
decomposition of the residual ``h_{l,t}`` into the embedding, every attention head, every
MLP and every earlier steering edit, each dotted with the read-out ``w_l``. Exact on
pre-norm blocks (Llama) and on blocks that RMS-normalise the attention output before the
residual add (Gemma: each head's output is scaled by that norm's elementwise gain).

All model access goes through hook names (``blocks.{l}.hook_resid_post`` and friends)
with temporary hooks inside ``with model.hooks(...)``, so no hook outlives a call.

Example:
    >>> from clas_lens.testing import randomize
    >>> steerer = randomize(cl.CLASSteerer(dirs), seed=1, scale=0.1)
    >>> attr = attribute_strength(model, steerer, "Hi", layer=2)
    >>> abs(attr.alpha - attr.bias - sum(attr.contributions.values())) < 1e-5   # exact parts
    True
    >>> sorted(attr.contributions)[:3], len(top_components(attr, 5))   # heads, MLPs, embed...
    (['L0.H0', 'L0.H1', 'L0.H2'], 5)
    >>> len(head_attention_sources(model, "Hi", layer=1, head=3, k=5))
    5
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor

from clas_lens.directions import resid_hook
from clas_lens.model import chat_ids, completion_ids, model_device
from clas_lens.steerers import CLASSteerer, Steerer


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


def _capture_names(model, n_layers: int) -> list[str]:
    names = ["blocks.0.hook_resid_pre"]  # the embedding (= hook_embed for rotary models)
    for k in range(n_layers):
        names += [f"blocks.{k}.attn.hook_z", f"blocks.{k}.hook_attn_out", f"blocks.{k}.hook_mlp_out"]
        if f"blocks.{k}.ln1_post.hook_scale" in model.hook_dict:  # post-attention norm (Gemma)
            names.append(f"blocks.{k}.ln1_post.hook_scale")
    return names


def _attn_gain(model, store, k: int, pos: int) -> Tensor | None:
    """Elementwise gain ``g`` of layer ``k``'s post-attention RMSNorm at ``pos`` (or ``None``).

    An RMSNorm without bias maps ``x`` to ``x * g`` with ``g = weight / rms(x)``
    (``1 + weight`` on Gemma): one vector for the whole input, so each head's share of
    the normed output (``hook_attn_out``) is its own output times ``g``.
    """
    norm = getattr(model.blocks[k], "ln1_post", None)
    name = f"blocks.{k}.ln1_post.hook_scale"
    if norm is None or not getattr(norm, "uses_rms_norm", False) or name not in store:
        return None  # no post norm, or one that is not elementwise: _check_attn_sum decides
    w = norm.weight.detach().double().cpu()
    return (1.0 + w if norm.uses_weight_offset else w) / store[name][0, pos].double().cpu()


def _steered_pass(model, steerer: Steerer, ids: list[int], top: int) -> tuple[dict, dict, dict]:
    """Run the steered model on ``ids`` up to block ``top``; cache components and edits."""
    store, before, after = {}, {}, {}

    def grab(name, box):
        def hook(h, hook=None):
            box[name] = h.detach().float().clone()
            return h
        return hook

    caps = [(n, grab(n, store)) for n in _capture_names(model, top + 1)]
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
        gain = _attn_gain(model, store, k, pos)
        g = 1.0 if gain is None else gain
        for h in range(H):
            comps[f"L{k}.H{h}"] = heads[h] * g
        if bias is not None:
            comps[f"L{k}.attn_bias"] = bias.detach().double().cpu() * g
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
        model: a ``TransformerBridge`` whose residual stream is the sum of the
            embedding, attention and MLP outputs (pre-norm blocks, optionally with an
            RMSNorm on the attention and MLP outputs as in Gemma); others raise.
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
    toks = [model.tokenizer.convert_tokens_to_string([t])
            for t in model.tokenizer.convert_ids_to_tokens(ids)]
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
    ``0..l``. A post-attention RMSNorm (Gemma) scales every head by its elementwise gain,
    so the sum is exact (up to float rounding).

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
    toks = [model.tokenizer.convert_tokens_to_string([t])
            for t in model.tokenizer.convert_ids_to_tokens(tok_ids)]
    w = box["p"]
    order = w.argsort(descending=True).tolist()[: k or len(w)]
    return [{"position": i, "token": toks[i], "weight": float(w[i])} for i in order]


__all__ = [
    "Attribution", "attribute_layers", "attribute_strength", "head_attention_sources",
    "top_components",
]
