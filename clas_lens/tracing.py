"""Steered generation and teacher-forced passes that record the steering strength.

For every prompt and generated token at every steered layer, the strength
(``alpha = w.h + b`` for CLAS and ReFT, ``c`` for LAS) and the projection
``h.v`` before steering are recorded. Generation uses the KV cache: each new
token's strengths are computed once, when that token is fed.

Example:
    >>> steerer = cl.LASSteerer(dirs).set(0.5)      # LAS: the strength is c at every token
    >>> res = generate(model, steerer, ["Tell me about cats.", "Hi"], max_new_tokens=3,
    ...                progress=False)
    >>> len(res.texts), res.strengths.shape[0], res.strengths.shape[2]   # [batch, pos, layer]
    (2, 2, 3)
    >>> float(res.strengths_of(1).max())
    0.5
    >>> tf = trace(model, steerer, pairs.test.prompts, pairs.test.completions)  # teacher forced
    >>> tf.strengths.shape[0], tf.strengths.shape[2]
    (2, 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from clas_lens.losses import final_residual, head_logits, head_matches
from clas_lens.model import (
    chat_ids,
    check_batch_size,
    completion_ids,
    context_length,
    end_of_turn_id,
    fit_context,
    left_pad,
    model_device,
    pad_id,
)
from clas_lens.steerers import Recorder, Steerer


@dataclass
class GenerationResult:
    """Texts, tokens and the strength trace of a batch of prompts.

    Positions are per example, left-aligned: position 0 is the example's first
    prompt token; ``mask`` is False past its last token.

    Attributes:
        prompts: the user prompts.
        texts: generated (or teacher-forced) continuation texts.
        token_ids: all token ids per example (prompt then continuation).
        prompt_lengths: number of prompt tokens per example.
        str_tokens: each token's text, from the tokenizer (``" sun"``, ``"\\n"``,
            ``"<|im_start|>"``; a piece of a multi-byte character shows as ``"\\ufffd"``).
        strengths: ``[batch, pos, layer]`` (``[batch, pos, layer, rank]`` when rank > 1),
            zero where ``mask`` is False; ``None`` unsteered or for steerers without strengths.
        projections: ``h . v`` before steering, same shape, or ``None``.
        mask: ``[batch, pos]`` True at real tokens.
        layers: the steered layers (the ``layer`` axis).
        method: the steerer kind (``"none"`` when unsteered).
    """

    prompts: list[str]
    texts: list[str]
    token_ids: list[list[int]]
    prompt_lengths: list[int]
    str_tokens: list[list[str]]
    strengths: Tensor | None
    projections: Tensor | None
    mask: Bool[Tensor, "batch pos"]
    layers: list[int] = field(default_factory=list)
    method: str = "none"

    def __len__(self) -> int:
        return len(self.prompts)

    def strengths_of(self, i: int) -> Float[Tensor, "pos layer"]:
        """Strengths of example ``i`` over its real tokens."""
        if self.strengths is None:
            raise ValueError("no strengths were recorded (unsteered, or a steerer without strengths)")
        return self.strengths[i, : int(self.mask[i].sum())]

    def generated_mask(self) -> Bool[Tensor, "batch pos"]:
        """True at continuation (generated or target) tokens."""
        pos = torch.arange(self.mask.shape[1])
        starts = torch.tensor(self.prompt_lengths).unsqueeze(1)
        return self.mask & (pos.unsqueeze(0) >= starts)


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts is empty")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt {i} is a {type(p).__name__}, not a str")
    return prompts


def _apply_repetition_penalty(logits: Tensor, seqs: list[list[int]], penalty: float) -> Tensor:
    for i, seq in enumerate(seqs):
        idx = torch.tensor(sorted(set(seq)), dtype=torch.long, device=logits.device)
        vals = logits[i, idx]
        logits[i, idx] = torch.where(vals > 0, vals / penalty, vals * penalty)
    return logits


def _choose(logits: Tensor, do_sample: bool, temperature: float, top_k: int | None,
            gen: torch.Generator | None) -> Tensor:
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / max(temperature, 1e-6)
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits.float(), -1).cpu()
    return torch.multinomial(probs, 1, generator=gen).squeeze(1).to(logits.device)


def _last_only(rec: Recorder, before: dict[int, int]) -> None:
    """Keep only the last position of the entries recorded since ``before`` (uncached mode)."""
    for store in (rec.strengths, rec.projections):
        for j, items in store.items():
            if len(items) > before.get(j, 0):
                items[-1] = items[-1][:, -1:]


def _generate_batch(model, steerer, seqs, *, max_new_tokens, do_sample, temperature, top_k,
                    repetition_penalty, use_cache, scale, gen, eos_ids):
    from transformers import DynamicCache

    device = model_device(model)
    pad = pad_id(model)
    ids, am = left_pad(seqs, pad, device)
    B = len(seqs)
    rec = Recorder()
    ctx = steerer.apply(model, scale=scale, recorder=rec) if steerer is not None else nullcontext()
    cache = DynamicCache() if use_cache else None
    # with a cache, the prompt pass unembeds only its last position (checked before any
    # steering hook or recorder is in place)
    last_only = use_cache and head_matches(model)
    running = [list(s) for s in seqs]
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    full = ids
    with torch.inference_mode(), ctx:
        if last_only:
            h = final_residual(model, ids, am, past_key_values=cache)[:, -1]
            logits = head_logits(model, h).unsqueeze(1)
        else:
            logits = model(ids, attention_mask=am, past_key_values=cache) if use_cache else \
                model(ids, attention_mask=am)
        for _ in range(max_new_tokens):
            nxt = logits[:, -1].float().clone()
            if repetition_penalty and repetition_penalty != 1.0:
                nxt = _apply_repetition_penalty(nxt, running, repetition_penalty)
            tok = _choose(nxt, do_sample, temperature, top_k, gen)
            tok = torch.where(finished, torch.full_like(tok, pad), tok)
            live = (~finished).long()
            done, toks = finished.tolist(), tok.tolist()  # one host copy each, not one per row
            for i in range(B):
                if not done[i]:
                    running[i].append(toks[i])
            finished = finished | torch.isin(tok, eos_ids)
            am = torch.cat([am, live.unsqueeze(1)], dim=1)
            full = torch.cat([full, tok.unsqueeze(1)], dim=1)
            if use_cache:
                logits = model(tok.unsqueeze(1), attention_mask=am, past_key_values=cache)
            else:
                before = {j: len(v) for j, v in rec.strengths.items()}
                logits = model(full, attention_mask=am)
                _last_only(rec, before)
            if bool(finished.all()):
                break
    return full, am, rec


def _assemble(model, steerer, prompts, rows, method) -> GenerationResult:
    """Turn per-batch left-padded outputs into one left-aligned result."""
    tok = model.tokenizer
    token_ids, plens, texts, strs, S, P = [], [], [], [], [], []
    for full, am, rec, seq_lens in rows:
        st, pr = rec.stacked("strengths"), rec.stacked("projections")
        for i in range(full.shape[0]):
            real = am[i].bool().cpu()
            ids = full[i].cpu()[real].tolist()
            token_ids.append(ids)
            plens.append(seq_lens[i])
            texts.append(tok.decode(ids[seq_lens[i]:], skip_special_tokens=True))
            strs.append([tok.convert_tokens_to_string([t]) for t in tok.convert_ids_to_tokens(ids)])
            if st is not None:
                S.append(st[i][real])
            if pr is not None:
                P.append(pr[i][real])
    width = max(len(t) for t in token_ids)
    mask = torch.zeros(len(token_ids), width, dtype=torch.bool)
    for i, t in enumerate(token_ids):
        mask[i, : len(t)] = True

    def pack(items):
        if not items:
            return None
        out = torch.zeros((len(items), width) + tuple(items[0].shape[1:]))
        for i, x in enumerate(items):
            out[i, : len(x)] = x
        return out.squeeze(-1) if out.shape[-1] == 1 else out

    layers = list(steerer.layers) if steerer is not None else []
    return GenerationResult(prompts, texts, token_ids, plens, strs, pack(S), pack(P), mask,
                            layers, method)


def generate(
    model, steerer: Steerer | None, prompts: str | Sequence[str], *, max_new_tokens: int = 64,
    do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
    repetition_penalty: float | None = None, batch_size: int = 8, scale: float = 1.0,
    use_cache: bool = True, seed: int = 0, system: str | None = None, chat: bool = True,
    stop_at_eos: bool = True, progress: bool = True, truncate: bool = False,
) -> GenerationResult:
    """Generate with (or without) steering and record the strength of every token.

    Args:
        model: a ``TransformerBridge``.
        steerer: any :class:`~clas_lens.steerers.Steerer`, or ``None`` for the unsteered
            model through the same code path.
        prompts: user prompts (chat-formatted unless ``chat=False``).
        max_new_tokens: tokens to generate at most.
        do_sample: sample instead of greedy decoding.
        temperature, top_k: sampling settings.
        repetition_penalty: HF-style penalty (>1 discourages repeats), ``None`` for none.
        batch_size: prompts per batch (left padded).
        scale: multiply the steering strength (dose-response).
        use_cache: KV cache (``False`` re-runs the whole sequence; for checking).
        seed: seed of sampling.
        system: optional system prompt.
        chat: apply the chat template.
        stop_at_eos: stop an example at its end-of-turn/EOS token.
        progress: show a progress bar over batches.
        truncate: keep the end of a prompt too long for the context (with its BOS)
            instead of raising ``ValueError``.

    Returns:
        A :class:`GenerationResult`.
    """
    prompts = _check_prompts(prompts)
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    check_batch_size(batch_size)
    if do_sample and not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    vocab = len(model.tokenizer)
    if top_k is not None and not 1 <= top_k <= vocab:
        raise ValueError(f"top_k must be between 1 and the vocabulary size {vocab}, got {top_k}")
    if repetition_penalty is not None and not (repetition_penalty > 0
                                               and math.isfinite(repetition_penalty)):
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    if steerer is not None:
        steerer.check_model(model)
    seqs = [fit_context(model, chat_ids(model, p, system=system, chat=chat),
                        f"prompt {i} plus max_new_tokens", truncate=truncate,
                        reserve=max_new_tokens)
            for i, p in enumerate(prompts)]
    device = model_device(model)
    eos = {end_of_turn_id(model)}
    if model.tokenizer.eos_token_id is not None:
        eos.add(int(model.tokenizer.eos_token_id))
    eos_ids = torch.tensor(sorted(eos) if stop_at_eos else [-1], device=device)
    gen = torch.Generator().manual_seed(seed) if do_sample else None
    rows = []
    starts = list(range(0, len(seqs), batch_size))
    for start in tqdm(starts, desc="generate", disable=not progress or len(starts) < 2):
        chunk = seqs[start:start + batch_size]
        full, am, rec = _generate_batch(
            model, steerer, chunk, max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=temperature, top_k=top_k, repetition_penalty=repetition_penalty,
            use_cache=use_cache, scale=scale, gen=gen, eos_ids=eos_ids)
        rows.append((full, am, rec, [len(s) for s in chunk]))
    return _assemble(model, steerer, prompts, rows, steerer.kind if steerer else "none")


def trace(
    model, steerer: Steerer | None, prompts: str | Sequence[str],
    completions: Sequence[str] | None = None, *, batch_size: int = 8, scale: float = 1.0,
    system: str | None = None, chat: bool = True, truncate: bool = False,
) -> GenerationResult:
    """Teacher-forced pass: strengths over prompt (and given completion) tokens.

    Args:
        model: a ``TransformerBridge``.
        steerer: the steerer to apply and trace (or ``None``).
        prompts: user prompts.
        completions: optional target completions appended after the chat prompt
            (with the model's end-of-turn token).
        batch_size, scale, system, chat: as in :func:`generate`.
        truncate: keep the end of a prompt too long for the context instead of raising.
    """
    prompts = _check_prompts(prompts)
    check_batch_size(batch_size)
    if completions is not None and len(completions) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if steerer is not None:
        steerer.check_model(model)
    seqs, plens = [], []
    for i, p in enumerate(prompts):
        tail = completion_ids(model, completions[i]) if completions is not None else []
        s = fit_context(model, chat_ids(model, p, system=system, chat=chat), f"example {i}",
                        truncate=truncate, reserve=len(tail))
        plens.append(len(s))
        s = s + tail
        seqs.append(s)
    rows = []
    device = model_device(model)
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        ids, am = left_pad(chunk, pad_id(model), device)
        rec = Recorder()
        ctx = steerer.apply(model, scale=scale, recorder=rec) if steerer is not None else nullcontext()
        with torch.inference_mode(), ctx:
            model(ids, attention_mask=am)
        rows.append((ids, am, rec, plens[start:start + batch_size]))
    return _assemble(model, steerer, prompts, rows, steerer.kind if steerer else "none")


__all__ = ["GenerationResult", "generate", "trace", "context_length"]
