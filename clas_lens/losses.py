"""Completion losses: pairs to token ids, padded batches, per-example NLL sums.

Only the completion tokens carry a loss: the chat-formatted prompt and the padding
are labelled ``-100``. Training, layer sweeps, the benchmark harness and the bench
scripts all score completions through this module.

Example:
    >>> import clas_lens as cl
    >>> from clas_lens.losses import collate
    >>> ids, mask, labels = collate([([5, 6, 7, 8], 2), ([5, 9, 10], 1)], pad=0, device="cpu")
    >>> labels.tolist()
    [[-100, -100, 7, 8], [-100, 9, 10, -100]]
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from clas_lens.data import LLAMA_EOT, SteerSet
from clas_lens.model import (
    chat_ids,
    check_batch_size,
    completion_ids,
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


class _TokenCE(torch.autograd.Function):
    """Per-token cross-entropy ``logsumexp(x) - x[target]`` over the last dim of ``x``.

    Used when gradients are needed. Same values as ``F.cross_entropy`` up to float
    rounding, but it saves only a reference to the logits instead of a log-softmax
    copy, and writes the input gradient into one buffer: the peak memory of a training
    step is one logit-sized tensor lower (236 MB for 4 x 300 tokens of a 49k
    vocabulary). Ignored targets (``-100``) give 0.
    """

    @staticmethod
    def forward(ctx, x, tgt):
        valid = tgt != -100
        safe = torch.where(valid, tgt, torch.zeros_like(tgt)).unsqueeze(-1)
        lse = torch.logsumexp(x, -1)
        ce = torch.where(valid, lse - x.gather(-1, safe).squeeze(-1), torch.zeros_like(lse))
        ctx.save_for_backward(x, lse, safe, valid)
        return ce

    @staticmethod
    def backward(ctx, grad):
        x, lse, safe, valid = ctx.saved_tensors
        g = torch.where(valid, grad, torch.zeros_like(grad)).unsqueeze(-1)
        out = torch.sub(x, lse.unsqueeze(-1))
        out.exp_().mul_(g)
        out.scatter_add_(-1, safe, -g)
        return out, None


def token_nll_sums(logits, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion cross-entropy and token count per example, from full logits.

    ``logits[:, t]`` predicts ``labels[:, t + 1]``; labels of ``-100`` carry no loss.
    With gradients enabled the cross-entropy keeps no log-softmax copy of the logits.
    """
    tgt = labels[:, 1:]
    if torch.is_grad_enabled() and logits.requires_grad:
        ce = _TokenCE.apply(logits[:, :-1].float(), tgt)
    else:
        ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tgt, ignore_index=-100,
                             reduction="none")
    valid = (tgt != -100)
    return (ce * valid).sum(1), valid.sum(1)


def nll_sums(model, encoded, pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed completion NLL and token counts for one micro-batch.

    Args:
        model: the model (steered or not: hooks already in place apply).
        encoded: ``(ids, n_prompt)`` items from :func:`encode_pairs`.
        pad: the padding token id.
        device: where the batch goes.
    """
    ids, mask, labels = collate(encoded, pad, device)
    return token_nll_sums(model(ids, attention_mask=mask), labels)


def completion_nll(model, steerer: Steerer | None, pairs, *, batch_size: int = 8,
                   scale: float = 1.0, per_example: bool = False,
                   max_completion_tokens: int | None = None, truncate: bool = False,
                   end_of_turn: str = "always"):
    """Mean per-token cross-entropy of the completions given the prompts.

    Returns the token-weighted mean over all pairs, or with ``per_example=True`` a
    tensor of per-pair means. ``max_completion_tokens``, ``truncate`` and ``end_of_turn``
    are as in :func:`encode_pairs`.
    """
    check_batch_size(batch_size)
    encoded = encode_pairs(model, pairs, max_completion_tokens=max_completion_tokens,
                           truncate=truncate, end_of_turn=end_of_turn)
    device = model_device(model)
    sums, counts = [], []
    ctx = steerer.apply(model, scale=scale) if steerer is not None else nullcontext()
    with torch.inference_mode(), ctx:
        for k in range(0, len(encoded), batch_size):
            s, n = nll_sums(model, encoded[k:k + batch_size], pad_id(model), device)
            sums.append(s.cpu())
            counts.append(n.cpu())
    s, n = torch.cat(sums), torch.cat(counts)
    if per_example:
        return s / n.clamp(min=1)
    return float(s.sum() / n.sum().clamp(min=1))


__all__ = ["END_OF_TURN_RULES", "as_pairs", "check_end_of_turn", "collate", "completion_nll",
           "encode_pairs", "end_of_turn_flags", "nll_sums", "token_nll_sums"]
