"""Training steerers on (prompt, completion) pairs, and completion NLL.

The loss is the cross-entropy of the completion tokens only (chat-formatted
prompt and padding carry no loss), with the model frozen: only the steerer's
parameters receive gradients. Defaults follow the CLAS reference: AdamW with
separate learning rates per parameter group (3e-3 for ``w``, 0.1 for ``b``),
constant schedule, 8 full-batch epochs; the parameters with the best valid
loss (evaluated before training and after each epoch) are kept.
``protocol="reference"`` follows the reference trainer in three more ways (end-of-turn
token only where the target carries the marker, gradient norm clipped at 1.0, valid
loss at steps 0, 2, 4, ...); see :data:`PROTOCOLS`.

Example:
    >>> steerer = cl.CLASSteerer(dirs)               # W, b = 0: the unsteered model
    >>> history = train(model, steerer, pairs.train, pairs.valid, epochs=2, progress=False)
    >>> len(history.valid_losses)                    # before training, then after each epoch
    3
    >>> history.best_valid_loss == min(history.valid_losses)
    True
    >>> ref = train(model, cl.CLASSteerer(dirs), pairs.train, pairs.valid, epochs=4,
    ...             protocol="reference", progress=False)
    >>> [v["step"] for v in ref.valid], ref.settings["clip_grad_norm"]
    ([0, 2, 4], 1.0)
    >>> steerer.cfg.training.best_epoch == history.best_epoch   # saved with the steerer
    True
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from clas_lens.data import SteerSet
from clas_lens.losses import (
    as_pairs,
    check_end_of_turn,
    completion_nll,
    encode_pairs,
    micro_batches,
    nll_sums,
)
from clas_lens.model import fast_attention, model_device, pad_id
from clas_lens.steerers import LASSteerer, Steerer


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss); the best parameters so far were kept."""


@dataclass
class TrainHistory:
    """What happened during training.

    Attributes:
        steps: one dict per optimiser step: ``step``, ``epoch``, ``train_loss``,
            ``seconds`` and the parameter norms.
        valid: one dict per evaluation: ``step`` and ``epoch`` (0 = before training),
            ``valid_loss``.
        best_epoch: epoch whose parameters were kept (0 = untrained).
        best_step: optimiser step whose parameters were kept (0 = untrained).
        best_valid_loss: its valid loss (``nan`` without valid data).
        seconds: wall time.
        interrupted: training stopped by KeyboardInterrupt (best parameters kept).
        settings: learning rates, epochs, seed, batch sizes, protocol and its settings.
    """

    steps: list[dict] = field(default_factory=list)
    valid: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_step: int = 0
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


#: named training protocols: the settings each one gives to :func:`train`
PROTOCOLS = {
    # every target ends with the end-of-turn token; no clipping; valid loss after every epoch
    "clas_lens": {"end_of_turn": "always", "clip_grad_norm": None, "eval_steps": None,
                  "max_completion_tokens": None},
    # the CLAS reference trainer: end-of-turn only where the target carries the marker,
    # gradient norm clipped at 1.0, valid loss at steps 0, 2, 4, ...; targets never capped
    "reference": {"end_of_turn": "marker", "clip_grad_norm": 1.0, "eval_steps": 2,
                  "max_completion_tokens": None},
}


def resolve_protocol(protocol: str | None = None, **given) -> dict:
    """Training settings of a protocol, overridden by the non-``None`` values of ``given``.

    Args:
        protocol: a name in :data:`PROTOCOLS` (``None`` = ``"clas_lens"``).
        **given: ``end_of_turn``, ``clip_grad_norm``, ``eval_steps``, ``max_completion_tokens``.

    Returns:
        The settings, with ``protocol`` set to the name.
    """
    name = "clas_lens" if protocol is None else protocol
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
    unknown = set(given) - set(PROTOCOLS[name])
    if unknown:
        raise TypeError(f"resolve_protocol got unknown setting(s) {sorted(unknown)}")
    out = {**PROTOCOLS[name], **{k: v for k, v in given.items() if v is not None}}
    check_end_of_turn(out["end_of_turn"])
    clip = out["clip_grad_norm"]
    if clip is not None and not (math.isfinite(float(clip)) and float(clip) > 0):
        raise ValueError(f"clip_grad_norm must be a finite number > 0 (or None for no clipping), "
                         f"got {clip!r}")
    return {"protocol": name, **out}


def eval_schedule(eval_steps, n_steps: int, steps_per_epoch: int) -> list[int]:
    """The optimiser steps after which the valid loss is evaluated (0 = before training).

    Args:
        eval_steps: ``None`` (step 0 and the end of every epoch), an ``int`` ``k`` (steps
            0, k, 2k, ... up to the last step) or a sequence of step numbers.
        n_steps: optimiser steps of the whole run.
        steps_per_epoch: optimiser steps per epoch.
    """
    if eval_steps is None:
        return [0] + list(range(steps_per_epoch, n_steps + 1, steps_per_epoch))
    if isinstance(eval_steps, bool):
        raise TypeError("eval_steps must be None, an int or a list of steps, not a bool")
    if isinstance(eval_steps, int):
        if eval_steps < 1:
            raise ValueError(f"eval_steps as an interval must be >= 1, got {eval_steps}")
        return list(range(0, n_steps + 1, eval_steps))
    steps = sorted({int(x) for x in eval_steps})
    bad = [x for x in steps if not 0 <= x <= n_steps]
    if bad or not steps:
        raise ValueError(f"eval_steps {bad or list(eval_steps)} outside the run's steps 0..{n_steps}; "
                         "list steps of this run, or give an interval (eval_steps=2)")
    return steps


class _Selection:
    """Valid evaluations and the parameters of the best one (the untrained state included)."""

    def __init__(self, model, steerer: Steerer, valid_pairs, hist: TrainHistory, nll_kw: dict):
        self.model, self.steerer, self.valid_pairs, self.hist = model, steerer, valid_pairs, hist
        self.nll_kw = nll_kw
        self.best = float("inf")
        self.best_state = copy.deepcopy(steerer.state_dict())

    def evaluate(self, step: int, epoch: int, loss: float | None = None) -> None:
        """Evaluate the valid loss (or record ``loss``, already known for this state)."""
        if loss is None:
            loss = completion_nll(self.model, self.steerer, self.valid_pairs, batch_size=8,
                                  **self.nll_kw)
        self.hist.valid.append({"step": step, "epoch": epoch, "valid_loss": loss})
        if not math.isfinite(loss):
            warnings.warn(f"valid loss is {loss} after step {step}; that state is never kept",
                          stacklevel=3)
        elif loss < self.best:
            self.keep(step, epoch, loss)

    def keep(self, step: int, epoch: int, loss: float = float("inf")) -> None:
        self.best = loss
        self.hist.best_epoch, self.hist.best_step = epoch, step
        self.best_state = copy.deepcopy(self.steerer.state_dict())

    def finish(self) -> None:
        """Load the best parameters and record them in the history and ``steerer.cfg.training``."""
        hist = self.hist
        self.steerer.load_state_dict(self.best_state)
        hist.best_valid_loss = self.best if math.isfinite(self.best) else float("nan")
        best_loss = hist.best_valid_loss if math.isfinite(hist.best_valid_loss) else None
        self.steerer.record_training({
            **hist.settings, "best_epoch": hist.best_epoch, "best_step": hist.best_step,
            "best_valid_loss": best_loss})


def _batches(n: int, bs: int, epochs: int, gen: torch.Generator):
    """``(epoch, indices)`` of every optimiser step; shuffled per epoch unless full batch."""
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=gen).tolist() if bs < n else list(range(n))
        for k in range(0, n, bs):
            yield epoch, order[k:k + bs]


def _optimizer_step(model, steerer: Steerer, opt, batch, *, micro_batch_size, micro_batch_tokens,
                    clip_grad_norm, where: str) -> dict:
    """One optimiser step on ``batch``: accumulated completion loss, optional clipping.

    The forward passes run under :func:`~clas_lens.model.fast_attention`.
    """
    n_tok = sum(len(s) - n for s, n in batch)
    pad, device = pad_id(model), model_device(model)
    opt.zero_grad(set_to_none=True)
    total = 0.0
    with steerer.apply(model), fast_attention(model):
        for micro in micro_batches(batch, micro_batch_size, micro_batch_tokens):
            sums, _ = nll_sums(model, micro, pad, device)
            loss = sums.sum() / n_tok
            loss.backward()
            total += float(loss.detach())
            # let go of this micro-batch's spent graph before the next forward pass (held,
            # it raised the peak memory of a SmolLM2 step by about 80 MB)
            del sums, loss
    if not math.isfinite(total):
        raise TrainingError(f"non-finite training loss ({total}) at {where}; "
                            "the best parameters found so far were kept")
    params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
    grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params])) if params else 0.0
    if clip_grad_norm is not None and params:
        torch.nn.utils.clip_grads_with_norm_(params, clip_grad_norm, torch.tensor(grad_norm))
    opt.step()
    if not all(torch.isfinite(p).all() for p in steerer.parameters()):
        raise TrainingError(f"non-finite parameters after {where}; "
                            "the best parameters found so far were kept")
    return {"train_loss": total, "grad_norm": grad_norm}


@contextmanager
def _frozen(model):
    """The model's weights get no gradient inside the block; their flags are restored after."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def _run_steps(model, steerer: Steerer, opt, enc_train, hist: TrainHistory, sel: _Selection, gen,
               *, bs, epochs, per_epoch, eval_at, clip_grad_norm, micro_batch_size,
               micro_batch_tokens, progress, t0) -> None:
    """The optimiser steps with their evaluations; on any exit the best state is loaded."""
    step = 0
    bar = tqdm(total=epochs * per_epoch, desc=f"train {steerer.kind}", disable=not progress)
    try:
        for epoch, idx in _batches(len(enc_train), bs, epochs, gen):
            out = _optimizer_step(
                model, steerer, opt, [enc_train[i] for i in idx],
                micro_batch_size=micro_batch_size, micro_batch_tokens=micro_batch_tokens,
                clip_grad_norm=clip_grad_norm, where=f"step {step + 1} (epoch {epoch})")
            step += 1
            hist.steps.append({"step": step, "epoch": epoch, **out,
                               "seconds": time.perf_counter() - t0,
                               **{f"norm_{n}": v for n, v in steerer.param_norms().items()}})
            bar.update(1)
            bar.set_postfix(loss=f"{out['train_loss']:.4f}")
            if step in eval_at:
                sel.evaluate(step, epoch)
            elif sel.valid_pairs is None and step % per_epoch == 0:
                sel.keep(step, epoch)
    except KeyboardInterrupt:
        hist.interrupted = True
        warnings.warn(f"training interrupted at step {step}; keeping the best parameters so far",
                      stacklevel=3)
    finally:
        bar.close()
        hist.seconds = time.perf_counter() - t0
        sel.finish()


def train(
    model, steerer: Steerer, train_pairs, valid=None, *, epochs: int = 8,
    lr: float | dict | None = None, seed: int = 0, batch_size: int | None = None,
    micro_batch_size: int | None = None, micro_batch_tokens: int = 512,
    weight_decay: float = 0.0, progress: bool = True, max_completion_tokens: int | None = None,
    truncate: bool = False, protocol: str | None = None, end_of_turn: str | None = None,
    clip_grad_norm: float | None = None, eval_steps: int | Sequence[int] | None = None,
    unsteered_valid_loss: float | None = None,
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
            it bounds the activation memory of the backward pass (about 0.7 MiB per token
            on SmolLM2-135M).
        weight_decay: AdamW weight decay.
        progress: tqdm progress bar.
        max_completion_tokens: truncate long targets (default: never).
        truncate: keep the end of prompts too long for the context instead of raising.
        protocol: ``"clas_lens"`` (default) or ``"reference"`` (the CLAS reference
            trainer: end-of-turn only where the target carries the marker, gradient norm
            clipped at 1.0, valid loss at steps 0, 2, 4, ...); see :data:`PROTOCOLS`. The
            three settings below override the protocol's when given.
        end_of_turn: ``"always"``, ``"marker"`` or ``"never"``: which targets end with the
            model's end-of-turn token (see :func:`clas_lens.losses.end_of_turn_flags`).
        clip_grad_norm: clip the total gradient norm of each step to this value.
        eval_steps: when the valid loss is evaluated (see :func:`eval_schedule`); only
            evaluated states can be kept, the untrained one included when step 0 is listed.
        unsteered_valid_loss: the unsteered model's loss on ``valid``, when already known
            (computed with :func:`clas_lens.losses.completion_nll` and this run's
            ``max_completion_tokens``, ``truncate`` and ``end_of_turn``); a steerer that
            starts as the identity records it at step 0 instead of evaluating again.

    Returns:
        A :class:`TrainHistory`.

    Raises:
        TrainingError: a NaN or infinite loss (the best parameters so far are kept).
    """
    proto = resolve_protocol(protocol, end_of_turn=end_of_turn, clip_grad_norm=clip_grad_norm,
                             eval_steps=eval_steps, max_completion_tokens=max_completion_tokens)
    steerer.check_model(model)
    if epochs < 0:
        raise ValueError("epochs must be >= 0")
    if (micro_batch_size is not None and micro_batch_size < 1) or micro_batch_tokens < 1 \
            or (batch_size is not None and batch_size < 1):
        raise ValueError("batch sizes and micro_batch_tokens must be >= 1")
    enc_kw = {"max_completion_tokens": proto["max_completion_tokens"], "truncate": truncate,
              "end_of_turn": proto["end_of_turn"]}
    enc_train = encode_pairs(model, train_pairs, **enc_kw)
    valid_pairs = None if valid is None else (valid if isinstance(valid, SteerSet) else as_pairs(valid))
    bs = batch_size or len(enc_train)
    per_epoch = math.ceil(len(enc_train) / bs)
    n_steps = epochs * per_epoch
    eval_at = set(eval_schedule(proto["eval_steps"], n_steps, per_epoch)) if valid_pairs else set()
    groups = _groups(steerer, lr)
    opt = torch.optim.AdamW([{k: v for k, v in g.items() if k != "name"} for g in groups],
                            weight_decay=weight_decay)
    steerer.to(model_device(model))
    hist = TrainHistory(settings={
        "epochs": epochs, "lr": {g["name"]: g["lr"] for g in groups}, "seed": seed,
        "batch_size": bs, "micro_batch_size": micro_batch_size,
        "micro_batch_tokens": micro_batch_tokens, "weight_decay": weight_decay,
        "n_train": len(enc_train), "n_valid": 0 if valid_pairs is None else len(valid_pairs),
        **proto, "eval_steps": sorted(eval_at),
    })
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    sel = _Selection(model, steerer, valid_pairs, hist, enc_kw)
    t0 = time.perf_counter()
    with _frozen(model):
        if 0 in eval_at:  # an interrupt here propagates: nothing was trained yet
            known = unsteered_valid_loss if steerer.is_identity() else None
            sel.evaluate(0, 0, None if known is None else float(known))
        _run_steps(model, steerer, opt, enc_train, hist, sel, gen, bs=bs, epochs=epochs,
                   per_epoch=per_epoch, eval_at=eval_at, clip_grad_norm=proto["clip_grad_norm"],
                   micro_batch_size=micro_batch_size, micro_batch_tokens=micro_batch_tokens,
                   progress=progress, t0=t0)
    return hist


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


LAS_SEARCHES = ("bracket", "full")


def bracket_argmin(f, n: int) -> tuple[int, dict[int, float]]:
    """Index of the smallest ``f(i)`` over ``0..n-1`` for ``f`` unimodal in ``i``.

    A golden-section search on the indices (at most 6 calls for ``n = 20``) ending with a
    scan of the last two or three indices. Ties keep the lower index.

    Returns:
        The index and every value computed, by index.
    """
    seen: dict[int, float] = {}

    def at(i: int) -> float:
        if i not in seen:
            v = float(f(i))
            seen[i] = v if math.isfinite(v) else math.inf
        return seen[i]

    lo, hi = 0, n - 1
    while hi - lo > 2:
        a, b = lo + round(0.382 * (hi - lo)), lo + round(0.618 * (hi - lo))
        b = max(b, a + 1)
        if at(a) < at(b):
            hi = b - 1
        elif at(a) > at(b):
            lo = a + 1
        else:
            lo, hi = a, b
    for i in range(lo, hi + 1):
        at(i)
    return min(seen, key=lambda i: (seen[i], i)), seen


def unimodal_around(values: dict[int, float], best: int) -> bool:
    """Whether the computed values fall toward ``best`` and rise after it (finite ones only)."""
    idx = sorted(values)
    if not all(math.isfinite(values[i]) for i in idx):
        return False
    left = [values[i] for i in idx if i <= best]
    right = [values[i] for i in idx if i >= best]
    return all(x >= y for x, y in zip(left, left[1:])) and all(x <= y for x, y in zip(right, right[1:]))


def grid_search_las(model, steerer: LASSteerer, pairs, grid: Sequence[float] | None = None, *,
                    batch_size: int = 8, progress: bool = True,
                    max_completion_tokens: int | None = None, end_of_turn: str = "always",
                    search: str = "bracket") -> dict:
    """Choose LAS's single coefficient by completion NLL on ``pairs`` (sets it in place).

    ``search="bracket"`` (default) assumes the NLL is unimodal along a sorted grid and
    finds its minimum with a golden-section search on the grid's indices (6 of 20 values
    evaluated at most); when the values it computed are not unimodal, or one is not
    finite, or the grid is not sorted, every grid value is evaluated (``"bracket+full"``).
    ``search="full"`` evaluates every value. ``max_completion_tokens`` and ``end_of_turn``
    shape the targets as in :func:`train`, so the search scores the same tokens the trained
    methods see.

    Returns:
        ``{"grid": [...], "nll": [...], "best": c, "search": how, "evaluated": [indices]}``;
        ``nll`` holds ``nan`` at the grid values the search did not evaluate, and ``search``
        is ``"bracket"``, ``"bracket+full"`` or ``"full"``.
    """
    if search not in LAS_SEARCHES:
        raise ValueError(f"search must be one of {LAS_SEARCHES}, got {search!r}")
    grid = list(grid) if grid is not None else las_grid(model, steerer, pairs)
    if not grid:
        raise ValueError("the LAS grid is empty")
    bad = [c for c in grid if not math.isfinite(float(c))]
    if bad:
        raise ValueError(f"the LAS grid holds non-finite values {bad}")
    bar = tqdm(total=len(grid), desc="LAS grid", disable=not progress)

    def nll(i: int) -> float:
        steerer.set(grid[i])
        bar.update(1)
        return completion_nll(model, steerer, pairs, batch_size=batch_size,
                              max_completion_tokens=max_completion_tokens, end_of_turn=end_of_turn)

    ordered = all(x < y for x, y in zip(grid, grid[1:])) or all(x > y for x, y in zip(grid, grid[1:]))
    how, values = search, {}
    if search == "bracket" and ordered:
        best_i, values = bracket_argmin(nll, len(grid))
        if not unimodal_around(values, best_i):
            how = "bracket+full"
    else:
        how = "full"
    if how != "bracket":
        for i in range(len(grid)):
            if i not in values:
                v = nll(i)
                values[i] = v if math.isfinite(v) else math.inf
        best_i = min(values, key=lambda i: (values[i], i))
    bar.close()
    scores = [float("nan") if i not in values else values[i] for i in range(len(grid))]
    best = grid[best_i]
    steerer.set(best)
    return {"grid": grid, "nll": scores, "best": best, "search": how, "evaluated": sorted(values)}
