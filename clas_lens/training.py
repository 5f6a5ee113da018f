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
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from clas_lens.losses import as_pairs, completion_nll, encode_pairs, nll_sums
from clas_lens.model import model_device, pad_id
from clas_lens.steerers import LASSteerer, Steerer


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss); the best parameters so far were kept."""


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
            warnings.warn(f"valid loss is {loss} after epoch {epoch}; that state is never kept",
                          stacklevel=2)
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
                        sums, _ = nll_sums(model, micro, pad, device)
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
        warnings.warn(f"training interrupted at step {step}; keeping the best parameters so far",
                      stacklevel=2)
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
