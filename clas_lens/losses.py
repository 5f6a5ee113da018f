"""Completion losses: pairs to token ids, padded batches, per-example NLL sums.

Only the completion tokens carry a loss: the chat-formatted prompt and the padding
are labelled ``-100``, and the final norm and the unembedding are applied only at the
positions that predict completion tokens (:func:`nll_sums`). Training, layer sweeps, the
benchmark harness and the bench scripts all score completions through this module.

Example:
    >>> import clas_lens as cl
    >>> from clas_lens.losses import collate
    >>> ids, mask, labels = collate([([5, 6, 7, 8], 2), ([5, 9, 10], 1)], pad=0, device="cpu")
    >>> labels.tolist()
    [[-100, -100, 7, 8], [-100, 9, 10, -100]]
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext

import torch
from jaxtyping import Float, Int
from torch import Tensor

from clas_lens.data import LLAMA_EOT, SteerSet
from clas_lens.lean_mlp import lean_mlp
from clas_lens.model import (
    chat_ids,
    check_batch_size,
    completion_ids,
    fast_attention,
    fit_context,
    model_device,
    pad_id,
)
from clas_lens.steerers import Steerer


def as_pairs(data) -> list[tuple[str, str]]:
    """Accept a :class:`SteerSet` or a sequence of ``(prompt, completion)`` tuples."""
    if isinstance(data, SteerSet):
        return data.pairs
    pairs = [tuple(p) for p in data]
    if not pairs:
        raise ValueError("no (prompt, completion) pairs given")
    for i, p in enumerate(pairs):
        if len(p) != 2 or not all(isinstance(x, str) for x in p):
            raise TypeError(f"pair {i} is not a (prompt, completion) pair of strings")
    return pairs


END_OF_TURN_RULES = ("always", "marker", "never")


def check_end_of_turn(end_of_turn: str) -> str:
    """Validate an end-of-turn rule (``"always"``, ``"marker"`` or ``"never"``)."""
    if end_of_turn not in END_OF_TURN_RULES:
        raise ValueError(f"end_of_turn must be one of {END_OF_TURN_RULES}, got {end_of_turn!r}")
    return end_of_turn


def end_of_turn_flags(data, end_of_turn: str = "always") -> list[bool]:
    """Per pair: does its completion end with the model's end-of-turn token?

    ``"always"`` and ``"never"`` apply to every pair. ``"marker"`` follows the data:
    a :class:`SteerSet` answers with :meth:`SteerSet.end_of_turn_marks` (the reference
    CSV's ``<|eot_id|>`` marker); a plain ``(prompt, completion)`` pair carries the marker
    when its completion text ends with it.
    """
    check_end_of_turn(end_of_turn)
    pairs = as_pairs(data)
    if end_of_turn != "marker":
        return [end_of_turn == "always"] * len(pairs)
    if isinstance(data, SteerSet):
        return data.end_of_turn_marks()
    return [c.rstrip().endswith(LLAMA_EOT) for _, c in pairs]


def encode_pairs(model, pairs, *, chat: bool = True, max_completion_tokens: int | None = None,
                 truncate: bool = False, end_of_turn: str = "always") -> list[tuple[list[int], int]]:
    """Token ids ``prompt + completion (+ end-of-turn)`` and the prompt length, per pair.

    A trailing ``<|eot_id|>`` marker in a completion's text is never tokenised as text;
    ``end_of_turn`` says which completions get the model's end-of-turn token (see
    :func:`end_of_turn_flags`). ``max_completion_tokens`` truncates long targets (the
    end-of-turn token is then dropped); ``truncate=True`` keeps the end of a prompt too
    long for the context instead of raising.
    """
    flags = end_of_turn_flags(pairs, end_of_turn)
    out = []
    for i, ((p, c), eot) in enumerate(zip(as_pairs(pairs), flags)):
        pids = chat_ids(model, p, chat=chat)
        if c.rstrip().endswith(LLAMA_EOT):
            c = c.rstrip().removesuffix(LLAMA_EOT).rstrip()
        cids = completion_ids(model, c, end_of_turn=eot)
        if max_completion_tokens is not None and len(cids) > max_completion_tokens:
            cids = cids[:max_completion_tokens]
        pids = fit_context(model, pids, f"pair {i}", truncate=truncate, reserve=len(cids))
        out.append((pids + cids, len(pids)))
    return out


def collate(encoded, pad: int, device):
    """Right-padded ids, attention mask and labels (-100 on prompt and padding)."""
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (seq, n_prompt) in enumerate(encoded):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, n_prompt: len(seq)] = torch.tensor(seq[n_prompt:])
    return ids.to(device), mask.to(device), labels.to(device)


#: rows of logits made at a time when no gradient is needed (bounds evaluation memory)
HEAD_CHUNK = 256


class _FinalResidual(Exception):
    """Carries the final residual out of a forward pass stopped at ``ln_final``."""

    def __init__(self, h: Tensor):
        super().__init__("final residual captured")
        self.h = h


def _stop_at_final(h, hook=None):
    raise _FinalResidual(h)


def final_residual(model, ids: Int[Tensor, "batch pos"],
                   attention_mask: Int[Tensor, "batch pos"] | None = None,
                   **kwargs) -> Float[Tensor, "batch pos d"]:
    """The residual stream entering the final norm (``ln_final.hook_in``), without the logits.

    Every hook in place (steering included) runs; the pass stops when the final norm's
    input is ready, so neither the norm nor the unembedding is computed. Gradients flow
    through the returned tensor as through the model. ``kwargs`` go to the model's forward
    (say, ``past_key_values``: every layer has filled the cache when the pass stops).

    Raises:
        ValueError: the model has no ``ln_final.hook_in`` hook point.
    """
    if "ln_final.hook_in" not in getattr(model, "hook_dict", {}):
        raise ValueError("final_residual needs a model with an 'ln_final.hook_in' hook point "
                         "(a TransformerBridge); use model(ids) for the logits instead")
    try:
        with model.hooks(fwd_hooks=[("ln_final.hook_in", _stop_at_final)]):
            model(ids, attention_mask=attention_mask, **kwargs)
    except _FinalResidual as stop:
        return stop.h
    raise RuntimeError("the forward pass never reached 'ln_final.hook_in'")


def head_logits(model, h: Float[Tensor, "n d"]) -> Float[Tensor, "n vocab"]:
    """Logits of final residuals: ``model.unembed(model.ln_final(h))`` on ``[n, d]`` rows."""
    return model.unembed(model.ln_final(h.unsqueeze(0)))[0]


_HEAD_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def head_matches(model) -> bool:
    """Whether :func:`final_residual` + :func:`head_logits` give the model's own logits.

    Checked once per model on an 8-token input (cached): a model whose forward does more
    after the final norm and unembedding (say, logit soft-capping), or whose head mixes
    positions, fails the check, and the losses then use its full logits.
    """
    if model in _HEAD_OK:
        return _HEAD_OK[model]
    ok = False
    if "ln_final.hook_in" in getattr(model, "hook_dict", {}) and hasattr(model, "ln_final") \
            and hasattr(model, "unembed"):
        vocab = int(model.cfg.d_vocab)
        ids = (torch.arange(8) * 7 + 3).remainder(vocab).unsqueeze(0).to(model_device(model))
        with torch.inference_mode():
            full = model(ids).float()
            h = final_residual(model, ids)[0]
            part = head_logits(model, h).float()
            rows = head_logits(model, h[2:5]).float()  # the head acts on each row alone
        tol = (1e-3 if full.dtype == torch.float32 else 2e-2) * (1.0 + float(full.abs().max()))
        ok = part.shape == full.shape[1:] and float((part - full[0]).abs().max()) <= tol \
            and float((rows - part[2:5]).abs().max()) <= tol
    _HEAD_OK[model] = ok
    return ok


#: rows of logits made at a time when a gradient is needed (:class:`HeadCE`)
GRAD_HEAD_CHUNK = 64


class HeadCE(torch.autograd.Function):
    """Per-row cross-entropy of ``head(h)``, differentiable in ``h``, without logit-sized saves.

    The forward pass runs the head (final norm and unembedding) ``chunk`` rows at a time
    and computes, for each row, the cross-entropy and its gradient with respect to that
    row; only the ``[n, d]`` gradient is kept for the backward pass, which scales it by the
    incoming per-row gradient. The head must act on each row alone (true of a final norm and
    an unembedding; :func:`head_matches` checks it). Training through the standard head
    keeps ``[n, vocab]`` logits for the backward pass and makes two more of that size in it.

    Example:
        >>> head = torch.nn.Linear(4, 10)
        >>> h, tgt = torch.randn(5, 4, requires_grad=True), torch.tensor([1, 2, 3, 4, 5])
        >>> ce = HeadCE.apply(h, tgt, head, 2)
        >>> torch.allclose(ce, token_ce(head(h), tgt))
        True
    """

    @staticmethod
    def forward(ctx, h, targets, head, chunk: int):
        ces, grads = [], []
        for k in range(0, h.shape[0], chunk):
            with torch.enable_grad():
                x = h[k:k + chunk].detach().requires_grad_(True)
                logits = head(x)
            # d ce / d logits = softmax - one-hot target, made in place in the float logits
            # (the unembedding's backward needs its input, not its output)
            d, tgt = logits.detach().float(), targets[k:k + chunk].unsqueeze(-1)
            picked, top = d.gather(-1, tgt), d.amax(-1, keepdim=True)
            total = d.sub_(top).exp_().sum(-1, keepdim=True)
            ces.append((top + total.log() - picked).squeeze(-1))
            d.div_(total).scatter_add_(-1, tgt, torch.full_like(total, -1.0))
            (g,) = torch.autograd.grad(logits, x, d.to(logits.dtype))
            del logits, d
            grads.append(g)
        ctx.save_for_backward(torch.cat(grads) if grads else h.detach()[:0])
        return torch.cat(ces) if ces else h.new_zeros(0, dtype=torch.float32)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ce):
        (g,) = ctx.saved_tensors
        return g * grad_ce.unsqueeze(-1).to(g.dtype), None, None, None


def token_ce(logits: Float[Tensor, "n vocab"], targets: Int[Tensor, " n"], *,
             chunk: int | None = None) -> Float[Tensor, " n"]:
    """Per-row cross-entropy ``logsumexp(x) - x[target]`` in float32.

    ``chunk`` rows at a time when given (bounds the temporaries). The ``logsumexp`` form
    is closer to a float64 computation than ``F.cross_entropy`` over a 49k vocabulary
    (1e-7 against 1e-5 per token on SmolLM2).
    """
    if chunk is not None and logits.shape[0] > chunk:
        return torch.cat([token_ce(logits[k:k + chunk], targets[k:k + chunk])
                          for k in range(0, logits.shape[0], chunk)])
    x = logits.float()
    return torch.logsumexp(x, -1) - x.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _per_example(ce: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Scatter per-token losses of the selected positions back to per-example sums."""
    valid = labels[:, 1:] != -100
    rows = valid.nonzero()[:, 0]
    sums = torch.zeros(labels.shape[0], dtype=ce.dtype, device=ce.device).index_add(0, rows, ce)
    return sums, valid.sum(1)


def token_nll_sums(logits: Float[Tensor, "batch pos vocab"],
                   labels: Int[Tensor, "batch pos"]) -> tuple[Tensor, Tensor]:
    """Summed completion cross-entropy and token count per example, from full logits.

    ``logits[:, t]`` predicts ``labels[:, t + 1]``; labels of ``-100`` carry no loss. Only
    the positions that predict a completion token are gathered before the cross-entropy,
    so no float copy or log-softmax of the full logits is made.
    """
    valid = labels[:, 1:] != -100
    ce = token_ce(logits[:, :-1][valid], labels[:, 1:][valid],
                  chunk=None if torch.is_grad_enabled() else HEAD_CHUNK)
    return _per_example(ce, labels)



def nll_sums(model, encoded, pad: int, device, *,
             all_positions: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed completion NLL and token counts for one micro-batch.

    The model runs to its final residual; the final norm and the unembedding are applied
    only at the positions that predict completion tokens (in chunks of :data:`HEAD_CHUNK`
    rows when no gradient is needed). A model on which that head differs from its own
    logits (see :func:`head_matches`), or ``all_positions=True``, takes the full logits.
    The forward pass runs under :func:`~clas_lens.model.fast_attention` and
    :func:`~clas_lens.lean_mlp.lean_mlp`: no attention pattern is kept for the backward pass
    (a layer with a hook on its pattern stays eager), and a SwiGLU MLP keeps two activations
    per token instead of three. The batch is right-padded, so under causal attention no
    real token attends to padding: this path runs without an attention mask (the causal
    kernel skips the scores above the diagonal) and never reads a padded position's
    output. With a gradient, the head's cross-entropy runs through
    :class:`HeadCE` (no logit-sized tensor is kept for the backward pass).

    Args:
        model: the model (steered or not: hooks already in place apply).
        encoded: ``(ids, n_prompt)`` items from :func:`encode_pairs`.
        pad: the padding token id.
        device: where the batch goes.
        all_positions: compute the logits at every position (the generic path).
    """
    ids, mask, labels = collate(encoded, pad, device)
    lean = lean_mlp(model) if torch.is_grad_enabled() else nullcontext()  # only backward gains
    if all_positions or not head_matches(model):
        with fast_attention(model), lean:
            return token_nll_sums(model(ids, attention_mask=mask), labels)
    valid = labels[:, 1:] != -100
    with fast_attention(model), lean:  # right padding: no real token sees a pad (no mask)
        h = final_residual(model, ids)[:, :-1][valid]
    tgt = labels[:, 1:][valid]
    if torch.is_grad_enabled() and not _head_trainable(model):
        ce = HeadCE.apply(h, tgt, lambda x: head_logits(model, x), GRAD_HEAD_CHUNK)
    elif torch.is_grad_enabled():
        ce = token_ce(head_logits(model, h), tgt)
    else:
        ce = torch.cat([token_ce(head_logits(model, h[k:k + HEAD_CHUNK]), tgt[k:k + HEAD_CHUNK])
                        for k in range(0, max(len(tgt), 1), HEAD_CHUNK)])
    return _per_example(ce, labels)


def _head_trainable(model) -> bool:
    """Whether a parameter of the final norm or the unembedding requires a gradient."""
    return any(p.requires_grad for m in (model.ln_final, model.unembed) for p in m.parameters())


def micro_batches(batch: list, size: int | None, tokens: int) -> list[list]:
    """Split a batch into micro-batches: ``size`` items each, or by padded-token budget.

    With ``size=None`` consecutive items are packed while ``rows x longest <= tokens``
    (an item longer than the budget goes alone).
    """
    if size is not None:
        return [batch[m:m + size] for m in range(0, len(batch), size)]
    out, cur, width = [], [], 0
    for item in batch:
        w = max(width, len(item[0]))
        if cur and w * (len(cur) + 1) > tokens:
            out.append(cur)
            cur, w = [], len(item[0])
        cur.append(item)
        width = w
    if cur:
        out.append(cur)
    return out


def completion_nll(model, steerer: Steerer | None, pairs, *, batch_size: int = 8,
                   micro_batch_tokens: int = 1024, scale: float = 1.0, per_example: bool = False,
                   max_completion_tokens: int | None = None, truncate: bool = False,
                   end_of_turn: str = "always"):
    """Mean per-token cross-entropy of the completions given the prompts.

    Returns the token-weighted mean over all pairs, or with ``per_example=True`` a
    tensor of per-pair means (in the order of ``pairs``). Pairs are sorted by length and
    evaluated in micro-batches of at most ``batch_size`` pairs and ``micro_batch_tokens``
    padded tokens (a longer pair goes alone). ``max_completion_tokens``, ``truncate`` and
    ``end_of_turn`` are as in :func:`encode_pairs`.
    """
    check_batch_size(batch_size)
    if int(micro_batch_tokens) < 1:
        raise ValueError(f"micro_batch_tokens must be >= 1, got {micro_batch_tokens}")
    encoded = encode_pairs(model, pairs, max_completion_tokens=max_completion_tokens,
                           truncate=truncate, end_of_turn=end_of_turn)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    device = model_device(model)
    sums, counts = [], []
    ctx = steerer.apply(model, scale=scale) if steerer is not None else nullcontext()
    with torch.inference_mode(), ctx:
        for k in range(0, len(order), batch_size):
            chunk = [encoded[i] for i in order[k:k + batch_size]]
            for micro in micro_batches(chunk, None, int(micro_batch_tokens)):
                s, n = nll_sums(model, micro, pad_id(model), device)
                sums.append(s.cpu())
                counts.append(n.cpu())
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(order))
    s, n = torch.cat(sums)[back], torch.cat(counts)[back]
    if per_example:
        return s / n.clamp(min=1)
    return float(s.sum() / n.sum().clamp(min=1))


__all__ = ["END_OF_TURN_RULES", "GRAD_HEAD_CHUNK", "HEAD_CHUNK", "HeadCE", "as_pairs",
           "check_end_of_turn", "collate", "completion_nll", "encode_pairs", "end_of_turn_flags",
           "final_residual", "head_logits", "head_matches", "micro_batches", "nll_sums", "token_ce",
           "token_nll_sums"]
