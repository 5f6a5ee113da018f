"""fast_attention: the fused attention kernel inside a block, eager attention everywhere else."""

from contextlib import nullcontext

import pytest
import torch
from conftest import random_directions, randomize

import clas_lens as cl
from clas_lens.losses import completion_nll, encode_pairs, micro_batches, nll_sums
from clas_lens.model import PATTERN_HOOKS, fast_attention
from clas_lens.testing import tiny_pairs

# prompts and completions of different lengths: batched together they are right-padded
PAIRS = [("hello", "world and more words here"), ("The capital of France", "Paris!"),
         ("Describe a rainy morning in a few words", "wet, grey and calm"), ("hi", "ok")]


def steered(model, seed=3):
    return randomize(cl.CLASSteerer(random_directions(model, seed=seed)), seed=seed + 1, scale=0.2)


def count_sdpa(monkeypatch) -> list:
    """Record every call of ``scaled_dot_product_attention`` (the calls still run)."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


def grads(model, steerer, enc, budget, fast):
    """The steerer's gradients of the summed completion NLL (micro-batched) and the loss."""
    steerer.zero_grad(set_to_none=True)
    total = 0.0
    with fast_attention(model, enabled=fast), steerer.apply(model):
        for micro in micro_batches(enc, None, budget):
            loss = nll_sums(model, micro, 0, "cpu")[0].sum()
            loss.backward()
            total += float(loss.detach())
    return total, [p.grad.clone() for p in steerer.parameters()]


def assert_eager(model):
    assert all("forward" not in vars(b.attn) for b in model.blocks)
    assert model.original_model.config._attn_implementation == "eager"


@pytest.mark.parametrize("budget", [10_000, 1])  # one padded micro-batch; one pair at a time
def test_nll_and_gradients_match_eager(tiny, monkeypatch, budget):
    """Per-pair NLL and the steerer's gradients equal eager attention's, padded or not, and
    the fused kernel really ran once per layer and micro-batch."""
    st = steered(tiny)
    calls = count_sdpa(monkeypatch)
    with fast_attention(tiny, enabled=False) as n_off:
        eager = completion_nll(tiny, st, PAIRS, per_example=True, micro_batch_tokens=budget)
    assert (n_off, calls) == (0, [])
    fast = completion_nll(tiny, st, PAIRS, per_example=True, micro_batch_tokens=budget)
    n_micro = 1 if budget > 1 else len(PAIRS)
    assert len(calls) == tiny.cfg.n_layers * n_micro
    # right-padded batches need no mask under causal attention (nor does a lone pair)
    assert all(m is None for m in calls)
    assert float((fast - eager).abs().max()) < 1e-5
    assert float(eager.min()) > 0

    enc = encode_pairs(tiny, PAIRS)
    loss_e, g_eager = grads(tiny, st, enc, budget, fast=False)
    loss_f, g_fast = grads(tiny, st, enc, budget, fast=True)
    assert abs(loss_e - loss_f) < 1e-4
    for a, b in zip(g_eager, g_fast):
        assert float(a.abs().max()) > 0
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-4)
    assert_eager(tiny)


def test_left_padded_batch_with_its_mask_matches_eager(tiny, monkeypatch):
    """A left-padded batch called with its attention mask runs the fused kernel with HF's
    mask and gives eager attention's logits at every real position."""
    seqs = [cl.chat_ids(tiny, p) for p in ("Hi.", "Describe a cat in some detail, please.")]
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    calls = count_sdpa(monkeypatch)
    with torch.no_grad():
        eager = tiny(ids, attention_mask=mask)
        with fast_attention(tiny):
            fast = tiny(ids, attention_mask=mask)
    assert len(calls) == tiny.cfg.n_layers and all(m is not None for m in calls)
    real = mask.bool()
    assert float((fast[real] - eager[real]).abs().max()) < 1e-5
    assert float((fast[0, -1] - tiny(torch.tensor([seqs[0]]))[0, -1]).abs().max()) < 1e-4


def test_back_to_eager_after_an_exception(tiny, monkeypatch):
    calls = count_sdpa(monkeypatch)
    ids = torch.tensor([cl.chat_ids(tiny, "Describe a cat.")])
    with pytest.raises(RuntimeError, match="stop here"):
        with fast_attention(tiny):
            tiny(ids)
            raise RuntimeError("stop here")
    assert len(calls) == tiny.cfg.n_layers
    assert_eager(tiny)
    tiny(ids)
    assert len(calls) == tiny.cfg.n_layers  # no fused call after the block


@pytest.mark.parametrize("point", PATTERN_HOOKS)
def test_pattern_hooks_fire_outside_and_inside_the_block(tiny, monkeypatch, point):
    """Outside the block every layer's pattern hook fires; inside it, a hooked layer runs
    eagerly (its hook fires, the output is unchanged) and only the other layers are fused."""
    ids = torch.tensor([cl.chat_ids(tiny, "Describe the weather.")])
    seen = []

    def grab(x, hook):
        seen.append((hook.name, tuple(x.shape)))
        return x

    with torch.no_grad():
        with fast_attention(tiny):
            pass
        want = tiny.run_with_hooks(ids, fwd_hooks=[(lambda name: name.endswith(point), grab)])
        n_pos = ids.shape[1]
        assert seen == [(f"blocks.{l}.attn.{point}", (1, 4, n_pos, n_pos))
                        for l in range(tiny.cfg.n_layers)]
        seen.clear()
        calls = count_sdpa(monkeypatch)
        with fast_attention(tiny):
            got = tiny.run_with_hooks(ids, fwd_hooks=[(f"blocks.1.attn.{point}", grab)])
    assert seen == [(f"blocks.1.attn.{point}", (1, 4, n_pos, n_pos))]
    assert len(calls) == tiny.cfg.n_layers - 1
    assert float((got - want).abs().max()) < 1e-5


def test_other_hooks_fire_inside_the_block(tiny):
    """Residual, Q/K/V, rotated Q/K, hook_z and attention-output hooks fire in both paths
    with the same values; an edit at the residual stream acts the same way."""
    ids = torch.tensor([cl.chat_ids(tiny, "Describe Paris.")])
    names = ["blocks.1.hook_resid_pre", "blocks.1.attn.hook_q", "blocks.1.attn.hook_k",
             "blocks.1.attn.hook_v", "blocks.1.attn.hook_rot_q", "blocks.1.attn.hook_rot_k",
             "blocks.1.attn.hook_z", "blocks.1.attn.hook_out", "blocks.2.hook_out"]
    runs = {}
    for fast in (False, True):
        acts = {}

        def keeper(name, acts=acts):
            def keep(x, hook):
                acts[name] = x.detach().clone()
                return x
            return keep

        def push(x, hook):
            return x + 3.0

        with torch.no_grad(), fast_attention(tiny, enabled=fast):
            out = tiny.run_with_hooks(ids, fwd_hooks=[("blocks.0.hook_out", push)]
                                      + [(n, keeper(n)) for n in names])
        runs[fast] = out, acts
    assert sorted(runs[True][1]) == sorted(names)
    for n in names:
        torch.testing.assert_close(runs[True][1][n], runs[False][1][n], atol=1e-5, rtol=1e-5)
    plain = tiny(ids)
    assert float((runs[False][0] - plain).abs().max()) > 1e-3  # the edit mattered
    torch.testing.assert_close(runs[True][0], runs[False][0], atol=1e-5, rtol=1e-5)


def test_nested_and_disabled_blocks(tiny, monkeypatch):
    calls = count_sdpa(monkeypatch)
    ids = torch.tensor([cl.chat_ids(tiny, "Describe a dog.")])
    with fast_attention(tiny, enabled=False) as n:
        tiny(ids)
    assert (n, calls) == (0, [])
    with fast_attention(tiny) as outer:
        with fast_attention(tiny) as inner:
            tiny(ids)
        tiny(ids)  # the inner block's end leaves the outer one's setting alone
    assert (outer, inner) == (tiny.cfg.n_layers, 0)
    assert len(calls) == 2 * tiny.cfg.n_layers
    with torch.no_grad():
        want = tiny(ids)
        with fast_attention(tiny), fast_attention(tiny, enabled=False):
            got = tiny(ids)  # eager inside a fast block
        with fast_attention(tiny, enabled=False), fast_attention(tiny) as n:
            tiny(ids)  # and a fast block inside it switches nothing
    assert n == 0
    assert len(calls) == 2 * tiny.cfg.n_layers
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert_eager(tiny)


def test_training_runs_fused_and_matches_eager(tiny, monkeypatch):
    """train() steps and evaluates through the fused kernel; its losses and parameters equal
    an all-eager run's."""
    pairs = tiny_pairs()
    calls = count_sdpa(monkeypatch)
    runs = {}
    for fast in (False, True):
        st = cl.CLASSteerer(random_directions(tiny, seed=5))
        with fast_attention(tiny, enabled=False) if not fast else nullcontext():
            hist = cl.train(tiny, st, pairs.train, pairs.valid, epochs=3, progress=False)
        runs[fast] = hist, [p.detach().clone() for p in st.parameters()], len(calls)
    assert runs[False][2] == 0
    assert runs[True][2] >= tiny.cfg.n_layers * (3 + 4)  # 3 steps, 4 evaluations
    (h_e, p_e, _), (h_f, p_f, _) = runs[False], runs[True]
    torch.testing.assert_close(torch.tensor(h_f.train_losses), torch.tensor(h_e.train_losses),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(h_f.valid_losses), torch.tensor(h_e.valid_losses),
                               atol=1e-5, rtol=0)
    assert h_f.best_step == h_e.best_step
    for a, b in zip(p_e, p_f):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    assert_eager(tiny)


def test_unsupported_attention_changes_nothing(tiny, monkeypatch):
    """A model with one attention layer the fused path does not reproduce stays eager."""
    calls = count_sdpa(monkeypatch)
    ids = torch.tensor([cl.chat_ids(tiny, "Describe a tree.")])
    monkeypatch.setattr(tiny.blocks[2].attn, "compatibility_mode", True, raising=False)
    with fast_attention(tiny) as n:
        tiny(ids)
    assert (n, calls) == (0, [])
    assert_eager(tiny)


def test_cached_decoding_matches_eager(tiny):
    """With a KV cache (queries fewer than keys) the causal offset is kept."""
    ids = torch.tensor([cl.chat_ids(tiny, "Describe the sea.")])
    out = {}
    for fast in (False, True):
        with torch.no_grad(), fast_attention(tiny, enabled=fast):
            _, cache = tiny(ids[:, :-3], return_type="logits_and_cache")
            out[fast] = tiny(ids[:, -3:], past_key_values=cache)
    full = tiny(ids)[:, -3:]
    torch.testing.assert_close(out[False], full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[True], out[False], atol=1e-5, rtol=1e-5)
