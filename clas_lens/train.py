"""Training steerers on (prompt, completion) pairs, and completion NLL.

The loss is the cross-entropy of the completion tokens only (chat-formatted
prompt and padding carry no loss), with the model frozen: only the steerer's
parameters receive gradients. Defaults follow the CLAS reference: AdamW with
separate learning rates per parameter group (3e-3 for ``w``, 0.1 for ``b``),
constant schedule, 8 full-batch epochs; the parameters with the best valid
loss (evaluated before training and after each epoch) are kept.

Example:
    >>> history = train(model, steerer, steer_set.train, steer_set.valid)   # doctest: +SKIP
    >>> history.best_valid_loss                                             # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clas_lens.data import SteerSet
from clas_lens.model import (
    check_batch_size, chat_ids, completion_ids, fit_context, model_device, pad_id,
)
from clas_lens.steerers import LASSteerer, Steerer


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss); the best parameters so far were kept."""


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


def encode_pairs(model, pairs, *, chat: bool = True, max_completion_tokens: int | None = None,
                 truncate: bool = False) -> list[tuple[list[int], int]]:
    """Token ids ``prompt + completion + end-of-turn`` and the prompt length, per pair.

    ``max_completion_tokens`` truncates long targets (the end-of-turn token is then dropped);
    ``truncate=True`` keeps the end of a prompt too long for the context instead of raising.
    """
    out = []
    for i, (p, c) in enumerate(as_pairs(pairs)):
        pids = chat_ids(model, p, chat=chat)
        cids = completion_ids(model, c)
        if max_completion_tokens is not None and len(cids) > max_completion_tokens:
            cids = cids[:max_completion_tokens]
        pids = fit_context(model, pids, f"pair {i}", truncate=truncate, reserve=len(cids))
        out.append((pids + cids, len(pids)))
    return out


def _collate(encoded, pad: int, device):
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


def _nll_sums(model, encoded, pad, device):
    """Per-example summed completion NLL and token counts for one micro-batch."""
    ids, mask, labels = _collate(encoded, pad, device)
    logits = model(ids, attention_mask=mask)
    tgt = labels[:, 1:]
    if torch.is_grad_enabled() and logits.requires_grad:
        ce = _TokenCE.apply(logits[:, :-1].float(), tgt)
    else:
        ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tgt, ignore_index=-100,
                             reduction="none")
    valid = (tgt != -100)
    return (ce * valid).sum(1), valid.sum(1)


def completion_nll(model, steerer: Steerer | None, pairs, *, batch_size: int = 8,
                   scale: float = 1.0, per_example: bool = False,
                   max_completion_tokens: int | None = None, truncate: bool = False):
    """Mean per-token cross-entropy of the completions given the prompts.

    Returns the token-weighted mean over all pairs, or with ``per_example=True`` a
    tensor of per-pair means.
    """
    check_batch_size(batch_size)
    encoded = encode_pairs(model, pairs, max_completion_tokens=max_completion_tokens,
                           truncate=truncate)
    device = model_device(model)
    sums, counts = [], []
    ctx = steerer.apply(model, scale=scale) if steerer is not None else nullcontext()
    with torch.inference_mode(), ctx:
        for k in range(0, len(encoded), batch_size):
            s, n = _nll_sums(model, encoded[k:k + batch_size], pad_id(model), device)
            sums.append(s.cpu())
            counts.append(n.cpu())
    s, n = torch.cat(sums), torch.cat(counts)
    if per_example:
        return s / n.clamp(min=1)
    return float(s.sum() / n.sum().clamp(min=1))


@dataclass
class TrainHistory:
    """What happened during training.

    Attributes:
        steps: one dict per optimiser step: ``step``, ``epoch``, ``train_loss``,
            ``seconds`` and the parameter norms.
        valid: one dict per evaluation: ``epoch`` (0 = before training), ``valid_loss``.
        best_epoch: epoch whose parameters were kept (0 = untrained).
        best_valid_loss: its valid loss (``nan`` without valid data).
        seconds: wall time.
        interrupted: training stopped by KeyboardInterrupt (best parameters kept).
        settings: learning rates, epochs, seed, batch sizes.
    """

    steps: list[dict] = field(default_factory=list)
    valid: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_valid_loss: float = float("nan")
    seconds: float = 0.0
    interrupted: bool = False
    settings: dict = field(default_factory=dict)

    @property
    def train_losses(self) -> list[float]:
        return [s["train_loss"] for s in self.steps]

    @property
    def valid_losses(self) -> list[float]:
        return [v["valid_loss"] for v in self.valid]


def _groups(steerer: Steerer, lr) -> list[dict]:
    groups = steerer.param_groups()
    if lr is None:
        return groups
    if isinstance(lr, (int, float)):
        groups = [{**g, "lr": float(lr)} for g in groups]
    else:
        unknown = set(lr) - {g["name"] for g in groups}
        if unknown:
            raise ValueError(f"lr has unknown group(s) {sorted(unknown)}; "
                             f"this steerer has {[g['name'] for g in groups]}")
        groups = [{**g, "lr": float(lr.get(g["name"], g["lr"]))} for g in groups]
    for g in groups:
        if not math.isfinite(g["lr"]) or g["lr"] < 0:
            raise ValueError(f"lr (learning rate) of group {g['name']!r} must be finite and >= 0, "
                             f"got {g['lr']}")
    return groups


def train(
    model, steerer: Steerer, train_pairs, valid=None, *, epochs: int = 8,
    lr: float | dict | None = None, seed: int = 0, batch_size: int | None = None,
    micro_batch_size: int | None = None, micro_batch_tokens: int = 512,
    weight_decay: float = 0.0, progress: bool = True, max_completion_tokens: int | None = None,
    truncate: bool = False,
) -> TrainHistory:
    """Train a steerer on (prompt, completion) pairs with the model frozen.

    Args:
        model: a ``TransformerBridge`` (its weights get no gradient).
        steerer: the steerer to train (modified in place; ends at the best valid state).
        train_pairs: a :class:`SteerSet` or ``(prompt, completion)`` pairs.
        valid: optional validation pairs for checkpoint selection.
        epochs: passes over the training pairs.
        lr: ``None`` for the steerer's defaults, a float for all groups, or a dict
            by group name (``{"W": 3e-3, "b": 0.1}`` for CLAS).
        seed: seed of shuffling (same seed and data => identical parameters).
        batch_size: pairs per optimiser step (default: all = full batch).
        micro_batch_size: pairs per forward pass (gradient accumulation); default: as
            many as fit in ``micro_batch_tokens`` padded tokens (at least one).
        micro_batch_tokens: token budget of a micro-batch when ``micro_batch_size`` is None;
            it bounds the activation memory of the backward pass (about 1.2 MB per token
            on SmolLM2-135M).
        weight_decay: AdamW weight decay.
        progress: tqdm progress bar.
        max_completion_tokens: truncate long targets.
        truncate: keep the end of prompts too long for the context instead of raising.

    Returns:
        A :class:`TrainHistory`.

    Raises:
        TrainingError: a NaN or infinite loss (the best parameters so far are kept).
    """
    steerer.check_model(model)
    if epochs < 0:
        raise ValueError("epochs must be >= 0")
    if (micro_batch_size is not None and micro_batch_size < 1) or micro_batch_tokens < 1 \
            or (batch_size is not None and batch_size < 1):
        raise ValueError("batch sizes and micro_batch_tokens must be >= 1")
    enc_train = encode_pairs(model, train_pairs, max_completion_tokens=max_completion_tokens,
                             truncate=truncate)
    valid_pairs = None if valid is None else as_pairs(valid)
    bs = batch_size or len(enc_train)
    groups = _groups(steerer, lr)
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "name"} for g in groups],
                            weight_decay=weight_decay)
    device = model_device(model)
    steerer.to(device)
    pad = pad_id(model)
    hist = TrainHistory(settings={
        "epochs": epochs, "lr": {g["name"]: g["lr"] for g in groups}, "seed": seed,
        "batch_size": bs, "micro_batch_size": micro_batch_size,
        "micro_batch_tokens": micro_batch_tokens, "weight_decay": weight_decay,
        "n_train": len(enc_train), "n_valid": 0 if valid_pairs is None else len(valid_pairs),
    })
    grad_flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    def evaluate(epoch: int) -> float:
        loss = completion_nll(model, steerer, valid_pairs, batch_size=8,
                              max_completion_tokens=max_completion_tokens, truncate=truncate)
        hist.valid.append({"epoch": epoch, "valid_loss": loss})
        if not math.isfinite(loss):
            warnings.warn(f"valid loss is {loss} after epoch {epoch}; that state is never kept")
        return loss

    best_state = copy.deepcopy(steerer.state_dict())
    best = evaluate(0) if valid_pairs else float("inf")
    hist.best_valid_loss = best if valid_pairs else float("nan")
    t0 = time.perf_counter()
    step = 0
    n_steps = epochs * math.ceil(len(enc_train) / bs)
    bar = tqdm(total=n_steps, desc=f"train {steerer.kind}", disable=not progress)
    try:
        for epoch in range(1, epochs + 1):
            with steerer.apply(model):
                order = torch.randperm(len(enc_train), generator=gen).tolist() \
                    if bs < len(enc_train) else list(range(len(enc_train)))
                for k in range(0, len(order), bs):
                    batch = [enc_train[i] for i in order[k:k + bs]]
                    n_tok = sum(len(s) - n for s, n in batch)
                    opt.zero_grad(set_to_none=True)
                    total = 0.0
                    for micro in _micro_batches(batch, micro_batch_size, micro_batch_tokens):
                        sums, _ = _nll_sums(model, micro, pad, device)
                        loss = sums.sum() / n_tok
                        loss.backward()
                        total += float(loss.detach())
                    step += 1
                    if not math.isfinite(total):
                        raise TrainingError(
                            f"non-finite training loss ({total}) at step {step} (epoch {epoch}); "
                            "the best parameters found so far were kept")
                    opt.step()
                    if not all(torch.isfinite(p).all() for p in steerer.parameters()):
                        raise TrainingError(
                            f"non-finite parameters after step {step} (epoch {epoch}); "
                            "the best parameters found so far were kept")
                    hist.steps.append({"step": step, "epoch": epoch, "train_loss": total,
                                       "seconds": time.perf_counter() - t0,
                                       **{f"norm_{n}": v for n, v in steerer.param_norms().items()}})
                    bar.update(1)
                    bar.set_postfix(loss=f"{total:.4f}")
            if valid_pairs:
                loss = evaluate(epoch)
                if math.isfinite(loss) and loss < best:
                    best, hist.best_epoch = loss, epoch
                    best_state = copy.deepcopy(steerer.state_dict())
            else:
                best_state = copy.deepcopy(steerer.state_dict())
                hist.best_epoch = epoch
    except KeyboardInterrupt:
        hist.interrupted = True
        warnings.warn(f"training interrupted at step {step}; keeping the best parameters so far")
    finally:
        bar.close()
        steerer.load_state_dict(best_state)
        for p, flag in zip(model.parameters(), grad_flags):
            p.requires_grad_(flag)
        hist.seconds = time.perf_counter() - t0
        if valid_pairs:
            hist.best_valid_loss = best
        best_loss = hist.best_valid_loss if math.isfinite(hist.best_valid_loss) else None
        steerer.extra = {**steerer.extra, "train": {**hist.settings, "best_epoch": hist.best_epoch,
                                                    "best_valid_loss": best_loss}}
    return hist


def _micro_batches(batch, size: int | None, tokens: int):
    """Split a batch into micro-batches: ``size`` pairs each, or by padded-token budget."""
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


def las_grid(model, steerer: LASSteerer, pairs, n: int = 20) -> list[float]:
    """Scale-aware grid for LAS: ``n`` evenly spaced values from 0 to ``4 |h| / L``.

    ``|h|`` is the mean residual norm at the steered layers on the pairs' prompts
    (position 0 left out) and ``L`` the number of steered layers: adding ``c v`` at
    ``L`` layers shifts the last residual by up to ``L c``, so the grid spans shifts
    from zero to about four residual norms, whatever the model's scale.
    """
    from clas_lens.directions import resid_activations

    prompts = [p for p, _ in as_pairs(pairs)]
    acts = resid_activations(model, prompts, steerer.layers, position="mean")
    mean_norm = float(acts.norm(dim=-1).mean())
    top = 4.0 * mean_norm / len(steerer.layers)
    return [top * k / (n - 1) for k in range(n)]


def grid_search_las(model, steerer: LASSteerer, pairs, grid: Sequence[float] | None = None, *,
                    batch_size: int = 8, progress: bool = True,
                    max_completion_tokens: int | None = None) -> dict:
    """Choose LAS's single coefficient by completion NLL on ``pairs`` (sets it in place).

    ``max_completion_tokens`` caps the targets as :func:`train` does, so the search
    scores the same tokens the trained methods see.

    Returns:
        ``{"grid": [...], "nll": [...], "best": c}``.
    """
    grid = list(grid) if grid is not None else las_grid(model, steerer, pairs)
    if not grid:
        raise ValueError("the LAS grid is empty")
    bad = [c for c in grid if not math.isfinite(float(c))]
    if bad:
        raise ValueError(f"the LAS grid holds non-finite values {bad}")
    scores = []
    for c in tqdm(grid, desc="LAS grid", disable=not progress):
        steerer.set(c)
        scores.append(completion_nll(model, steerer, pairs, batch_size=batch_size,
                                     max_completion_tokens=max_completion_tokens))
    best = grid[min(range(len(grid)), key=lambda i: scores[i] if math.isfinite(scores[i]) else 1e30)]
    steerer.set(best)
    return {"grid": grid, "nll": scores, "best": best}
