"""lean_mlp: SwiGLU MLPs that keep two activations per token for the backward pass."""

from contextlib import contextmanager

import pytest
import torch

from clas_lens.lean_mlp import SwiGLU, lean_mlp
from clas_lens.model import fast_attention


def mlp_input(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 7, model.cfg.d_model, generator=g).requires_grad_(True)


@contextmanager
def frozen(model):
    """The model's weights need no gradient inside the block (the shared fixture's flags are
    restored after)."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def saved_bytes(model, fn) -> int:
    """Bytes of the tensors autograd saves while ``fn`` runs (each storage once, the model's
    weights left out)."""
    seen, total = {p.untyped_storage().data_ptr() for p in model.parameters()}, [0]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


def test_swiglu_equals_autograd():
    """Values and the input's gradient equal autograd through the eager ops, for an
    upstream gradient that differs per element (a wrong SiLU derivative would show)."""
    g = torch.Generator().manual_seed(1)
    wg, wu, wd = (torch.randn(*s, generator=g) * 0.3 for s in [(12, 5), (12, 5), (5, 12)])
    x = torch.randn(3, 4, 5, generator=g).requires_grad_(True)
    up = torch.randn(3, 4, 5, generator=g)
    want = torch.nn.functional.linear(torch.nn.functional.silu(x @ wg.T) * (x @ wu.T), wd)
    (dx_want,) = torch.autograd.grad((want * up).sum(), x)
    got = SwiGLU.apply(x, wg, wu, wd)
    (dx_got,) = torch.autograd.grad((got * up).sum(), x)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(dx_got, dx_want, atol=1e-6)


def test_lean_mlp_matches_eager_and_saves_less(tiny):
    """Inside the block every MLP of the tiny Llama is switched: same output and input
    gradient as eager, and two of the three d_mlp-wide activations saved per token."""
    mlp = tiny.blocks[1].mlp
    x = mlp_input(tiny)
    up = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    with frozen(tiny):
        eager_saved = saved_bytes(tiny, lambda: mlp(x))
        eager = mlp(x)
        (dx_eager,) = torch.autograd.grad((eager * up).sum(), x)
        with lean_mlp(tiny) as n:
            lean_saved = saved_bytes(tiny, lambda: mlp(x))
            lean = mlp(x)
            (dx_lean,) = torch.autograd.grad((lean * up).sum(), x)
    assert n == tiny.cfg.n_layers
    assert all("forward" not in vars(b.mlp) for b in tiny.blocks)
    assert torch.allclose(lean, eager, atol=1e-6)
    assert torch.allclose(dx_lean, dx_eager, atol=1e-6)
    d_mlp, tokens = int(tiny.cfg.d_mlp), x.shape[0] * x.shape[1]
    assert eager_saved - lean_saved == tokens * d_mlp * 4


def test_lean_mlp_steps_aside(tiny):
    """A hook inside the MLP still fires (eager forward), the eager reference block is
    untouched, and a weight that requires a gradient gets it."""
    mlp = tiny.blocks[0].mlp
    x = mlp_input(tiny, seed=3)
    seen = []
    with frozen(tiny):
        eager_saved = saved_bytes(tiny, lambda: mlp(x))
    with frozen(tiny), lean_mlp(tiny):
        with tiny.hooks(fwd_hooks=[("blocks.0.mlp.out.hook_in", lambda t, hook: seen.append(t.shape))]):
            assert saved_bytes(tiny, lambda: mlp(x)) == eager_saved
        assert seen == [torch.Size([2, 7, int(tiny.cfg.d_mlp)])]
        with fast_attention(tiny, enabled=False):
            assert saved_bytes(tiny, lambda: mlp(x)) == eager_saved
        assert saved_bytes(tiny, lambda: mlp(x)) < eager_saved
        weight = mlp.original_component.up_proj.original_component.weight
        weight.requires_grad_(True)
        try:
            mlp(x).sum().backward()
            assert weight.grad is not None and weight.grad.abs().max() > 0
        finally:
            weight.grad = None


@pytest.mark.embedded
def test_lean_mlp_on_smollm2(smol):
    """Every SmolLM2 MLP is switched and gives eager's gradient at float rounding."""
    mlp = smol.blocks[5].mlp
    x = mlp_input(smol, seed=4)
    with frozen(smol):
        eager_saved = saved_bytes(smol, lambda: mlp(x))
        (dx_eager,) = torch.autograd.grad(mlp(x).square().sum(), x)
        with lean_mlp(smol) as n:
            lean_saved = saved_bytes(smol, lambda: mlp(x))
            (dx_lean,) = torch.autograd.grad(mlp(x).square().sum(), x)
    assert n == smol.cfg.n_layers
    assert eager_saved - lean_saved == x.shape[0] * x.shape[1] * int(smol.cfg.d_mlp) * 4
    assert torch.allclose(dx_lean, dx_eager, rtol=1e-4, atol=1e-5 * float(dx_eager.abs().max()))
