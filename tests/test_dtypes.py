"""Devices and dtypes: steering arithmetic in float32 whatever the model dtype, parameters
that follow the hook's device, bf16 models on the CPU, placement arguments."""

import pytest
import torch
from conftest import n_hooks, random_directions, randomize

import clas_lens as cl
from clas_lens.model import resolve_placement


def test_edit_on_bf16_is_float32_arithmetic_cast_back(tiny):
    steerer = randomize(cl.CLASSteerer(random_directions(tiny, seed=1)), seed=2, scale=0.3)
    h = torch.randn(2, 5, tiny.cfg.d_model, generator=torch.Generator().manual_seed(0))
    hb = h.to(torch.bfloat16)
    new, alpha, proj = steerer.edit(0, hb, 1.0)
    assert new.dtype == torch.bfloat16 and alpha.dtype == torch.float32
    expected_alpha = hb.float() @ steerer.W[0].T + steerer.b[0]
    assert torch.equal(alpha, expected_alpha)  # computed from the bf16 values, in float32
    assert torch.equal(new, (hb.float() + expected_alpha @ steerer.V[0]).to(torch.bfloat16))
    assert steerer.W.dtype == torch.float32


@pytest.mark.parametrize("kind", ["clas", "las_layerwise", "lora"])
def test_parameters_follow_the_hooks_device(tiny, kind):
    """A hook tensor on another device (``meta`` stands in for a second GPU) gets the
    layer's parameters moved to it, instead of a device-mismatch error."""
    dirs = random_directions(tiny, seed=3)
    steerer = {"clas": lambda: cl.CLASSteerer(dirs), "las_layerwise": lambda: cl.LayerwiseLASSteerer(dirs),
               "lora": lambda: cl.LoRASteerer(tiny)}[kind]()
    if kind == "lora":
        (grab_name, grab), (add_name, add) = steerer.fwd_hooks()[:2]
        grab(torch.zeros(1, 3, tiny.cfg.d_mlp, device="meta"))
        out = add(torch.zeros(1, 3, tiny.cfg.d_model, device="meta"))
    else:
        out, alpha, _ = steerer.edit(0, torch.zeros(1, 3, tiny.cfg.d_model, device="meta"), 1.0)
        assert alpha.device.type == "meta"
    assert out.device.type == "meta"
    assert next(steerer.parameters()).device.type == "cpu"  # the steerer itself stays put


def test_n_devices_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="n_devices must be a positive integer"):
        cl.load_model(n_devices=0)
    with pytest.raises(ValueError, match="either device_map or n_devices"):
        resolve_placement("cpu", 2, "auto")
    assert resolve_placement("cpu", 1, None) == (None, None)


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="this machine has two GPUs")
def test_two_devices_without_two_gpus_is_a_clear_error():
    with pytest.raises(ValueError, match="n_devices=2 requires CUDA|only .* CUDA devices"):
        resolve_placement("cpu", 2, None)


# ---- embedded models in bf16 ------------------------------------------------------------

#: bf16 keeps 8 bits of mantissa: the residual stream, hence alpha = W h + b, is off by a few
#: parts in a hundred after 18-30 layers. The bound is relative to the largest |alpha|.
BF16_RTOL = 0.08


@pytest.mark.embedded
def test_bf16_strengths_match_fp32(embedded):
    name = "gemma-3-270m" if "gemma" in embedded.cfg.model_name else None
    half = cl.load_model(name, dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16
    steerer = randomize(cl.CLASSteerer(random_directions(embedded, seed=7)), seed=8, scale=0.002)
    prompts = ["Tell me about your weekend plans.", "Name a colour."]
    full = cl.trace(embedded, steerer, prompts)
    low = cl.trace(half, steerer, prompts)
    assert steerer.W.dtype == torch.float32
    assert float(full.strengths.abs().max()) > 0.1  # the steerer acts
    for i in range(len(prompts)):
        ref, err = full.strengths_of(i), (low.strengths_of(i) - full.strengths_of(i)).abs()
        # position 0 (BOS) has activations ~100x larger: judged apart, by its own scale
        for pos in (slice(0, 1), slice(1, None)):
            scale = float(ref[pos].abs().max())
            assert float(err[pos].max()) <= BF16_RTOL * scale, (i, float(err[pos].max()), scale)
    assert n_hooks(half) == 0
