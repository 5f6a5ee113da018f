"""Completion losses: logits only where the loss needs them, micro-batched evaluation."""

import pytest
import torch
import torch.nn.functional as F
from conftest import random_directions, randomize

import clas_lens as cl
from clas_lens.losses import (
    HeadCE,
    collate,
    completion_nll,
    encode_pairs,
    final_residual,
    head_matches,
    micro_batches,
    nll_sums,
    token_ce,
)

# prompts and completions of different lengths: the batch is padded, rows predict
# different spans
PAIRS = [("hello", "world and more words here"), ("The capital of France", "Paris!"),
         ("Describe a rainy morning in a few words", "wet, grey and calm"), ("hi", "ok")]


def all_logits_reference(model, encoded):
    """The loss from the full logits at every position, in float64."""
    ids, mask, labels = collate(encoded, 0, "cpu")
    logits = model(ids, attention_mask=mask).double()
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100,
                         reduction="none")
    return ce.sum(1).float()


def steered(model, seed=3):
    return randomize(cl.CLASSteerer(random_directions(model, seed=seed)), seed=seed + 1, scale=0.2)


def test_head_on_completion_positions_only(tiny):
    """The unembedding sees exactly the positions that predict completion tokens (a shift or
    mask error changes the count), and the final residual is what ln_final receives."""
    enc = encode_pairs(tiny, PAIRS)
    n_completion = sum(len(s) - n for s, n in enc)
    assert head_matches(tiny)  # checked once per model (its own small forward)
    rows = []
    with tiny.hooks(fwd_hooks=[("unembed.hook_in", lambda x, hook=None: rows.append(x.shape) or x)]):
        nll_sums(tiny, enc, 0, "cpu")
    assert rows == [torch.Size([1, n_completion, 32])]
    ids, mask, _ = collate(enc, 0, "cpu")
    with torch.inference_mode():
        h = final_residual(tiny, ids, mask)
        full = tiny(ids, attention_mask=mask)
    assert torch.allclose(tiny.unembed(tiny.ln_final(h)), full, atol=1e-5)


def test_nll_sums_and_gradients_equal_full_logits(tiny):
    """Per-example sums and the steerer's parameter gradients equal the all-position loss
    (each example weighted differently: the head's gradient must follow each row's weight)."""
    enc = encode_pairs(tiny, PAIRS)
    st = steered(tiny)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0])
    got, want = {}, {}
    for name, fn in [("head", lambda: nll_sums(tiny, enc, 0, "cpu")[0]),
                     ("full", lambda: all_logits_reference(tiny, enc))]:
        st.zero_grad(set_to_none=True)
        with st.apply(tiny):
            sums = fn()
            (sums * weights).sum().backward()
        (got if name == "head" else want).update(
            sums=sums.detach().clone(), **{k: p.grad.clone() for k, p in st.named_parameters()})
    assert torch.allclose(got["sums"], want["sums"], rtol=1e-5, atol=1e-5)
    assert got["sums"].abs().min() > 1.0  # real losses, not zeros
    for k in ("W", "b"):
        assert want[k].abs().max() > 1e-3
        assert torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-6), k
    counts = nll_sums(tiny, enc, 0, "cpu")[1]
    assert counts.tolist() == [len(s) - n for s, n in enc]


def test_head_ce_gradient_follows_each_row():
    """HeadCE gives token_ce's values and, whatever the chunking, each row's own gradient
    times that row's incoming weight (a missing scale or a chunk offset error changes it)."""
    g = torch.Generator().manual_seed(0)
    head = torch.nn.Sequential(torch.nn.LayerNorm(6), torch.nn.Linear(6, 11))
    h = torch.randn(7, 6, generator=g)
    tgt = torch.randint(0, 11, (7,), generator=g)
    w = torch.rand(7, generator=g) + 0.5
    ref = h.clone().requires_grad_(True)
    want = token_ce(head(ref), tgt)
    (want * w).sum().backward()
    for chunk in (1, 3, 64):
        x = h.clone().requires_grad_(True)
        ce = HeadCE.apply(x, tgt, head, chunk)
        (ce * w).sum().backward()
        assert torch.allclose(ce, want.detach(), atol=1e-6)
        assert torch.allclose(x.grad, ref.grad, atol=1e-6), chunk
    empty = torch.zeros(0, 6, requires_grad=True)
    out = HeadCE.apply(empty, tgt[:0], head, 3)
    out.sum().backward()
    assert out.shape == (0,) and empty.grad.shape == (0, 6)


def test_completion_nll_micro_batches_keep_pair_order(tiny):
    """Sorted, token-budgeted micro-batches give each pair its own loss, in input order."""
    st = steered(tiny, seed=5)
    with torch.inference_mode(), st.apply(tiny):
        alone = [float(all_logits_reference(tiny, encode_pairs(tiny, [p]))[0]
                       / (len(encode_pairs(tiny, [p])[0][0]) - encode_pairs(tiny, [p])[0][1]))
                 for p in PAIRS]
    got = completion_nll(tiny, st, PAIRS, per_example=True, micro_batch_tokens=16)
    assert got.tolist() == pytest.approx(alone, rel=1e-5)
    assert len(set(round(x, 4) for x in alone)) == len(PAIRS)  # an order error would show
    mean = completion_nll(tiny, st, PAIRS, micro_batch_tokens=4096)
    enc = encode_pairs(tiny, PAIRS)
    n = torch.tensor([len(s) - k for s, k in enc], dtype=torch.float)
    assert mean == pytest.approx(float((torch.tensor(alone) * n).sum() / n.sum()), rel=1e-5)


def test_completion_nll_refuses_bad_budget(tiny):
    with pytest.raises(ValueError, match="micro_batch_tokens must be >= 1"):
        completion_nll(tiny, None, PAIRS, micro_batch_tokens=0)


def test_micro_batches_budget():
    items = [([0] * 3, 1), ([0] * 4, 1), ([0] * 9, 1), ([0] * 2, 1)]
    assert micro_batches(items, None, 8) == [items[:2], items[2:3], items[3:]]
    assert micro_batches(items, 3, 8) == [items[:3], items[3:]]
    assert [len(m) for m in micro_batches(items, None, 100)] == [4]


class Rescaled(torch.nn.Module):
    """A model whose forward does more after the unembedding (here: logits x 20, then
    soft-capped at 5, as some architectures cap their logits)."""

    def __init__(self, model, cap=5.0):
        super().__init__()
        self.inner, self.cap = model, cap
        self.hook_dict, self.hooks, self.cfg = model.hook_dict, model.hooks, model.cfg
        self.ln_final, self.unembed = model.ln_final, model.unembed

    def forward(self, ids, attention_mask=None):
        return self.cap * torch.tanh(20 * self.inner(ids, attention_mask=attention_mask) / self.cap)


def test_model_with_other_head_uses_full_logits(tiny):
    """A model whose logits are not unembed(ln_final(h)) is detected and scored on its own
    logits (taking the head path there would give the uncapped loss)."""
    capped = Rescaled(tiny)
    enc = encode_pairs(tiny, PAIRS)
    assert not head_matches(capped)
    with torch.inference_mode():
        got = nll_sums(capped, enc, 0, "cpu")[0]
        want = all_logits_reference(capped, enc)
        uncapped = all_logits_reference(tiny, enc)
    assert torch.allclose(got, want, rtol=1e-6)
    assert (got - uncapped).abs().max() > 0.1


def test_final_residual_needs_hook_point():
    class Plain(torch.nn.Module):
        hook_dict = {}

    with pytest.raises(ValueError, match="ln_final.hook_in"):
        final_residual(Plain(), torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.embedded
def test_head_equals_full_logits_embedded(smol):
    """SmolLM2: the completion-only head gives the full-logits loss (float64 reference, 1e-5
    per token; F.cross_entropy in float32 is off by 1.5e-4 here) and its gradients."""
    pairs = [("Name a colour.", "Blue is a calm colour."), ("What is 2 + 2?", "2 + 2 = 4.")]
    enc = encode_pairs(smol, pairs)
    st = steered(smol, seed=7)
    with torch.no_grad():
        st.W.mul_(0.01)
    out = {}
    for name, fn in [("head", lambda: nll_sums(smol, enc, 0, "cpu")[0]),
                     ("full", lambda: all_logits_reference(smol, enc))]:
        st.zero_grad(set_to_none=True)
        with st.apply(smol):
            sums = fn()
            sums.sum().backward()
        out[name] = (sums.detach(), st.W.grad.clone(), st.b.grad.clone())
    assert head_matches(smol)
    n = torch.tensor([len(s) - k for s, k in enc])
    assert torch.allclose(out["head"][0] / n, out["full"][0] / n, atol=1e-5)
    for a, b in zip(out["head"][1:], out["full"][1:]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
