"""The core checks on every embedded model: SmolLM2-135M-Instruct (Llama) and Gemma 3 270M.

Each test runs once per model through the parametrised ``embedded`` fixture; the
exact checks are the same for both architectures.
"""

import os

import pytest
import torch
from conftest import n_hooks, random_directions, randomize

import clas_lens as cl
from clas_lens import analysis as an
from clas_lens.io import ArtifactError

pytestmark = pytest.mark.embedded

#: (name, n_layers, d_model) of each embedded model
SHAPES = {"HuggingFaceTB/SmolLM2-135M-Instruct": (30, 576), "google/gemma-3-270m": (18, 640)}


def test_loads_offline_with_its_shape(embedded):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    name = embedded.cfg.model_name
    assert (embedded.cfg.n_layers, embedded.cfg.d_model) == SHAPES[name]


def test_a_known_fact_is_the_top_token(embedded):
    ids = embedded.tokenizer.encode("The Eiffel Tower is in the city of", return_tensors="pt")
    with torch.inference_mode():
        top = embedded(ids)[0, -1].argmax().item()
    assert embedded.tokenizer.decode([top]) == " Paris"


def test_untrained_clas_is_exactly_the_unsteered_model(embedded):
    steerer = cl.CLASSteerer(random_directions(embedded, seed=1))
    ids = torch.tensor([cl.chat_ids(embedded, "Tell me about your weekend plans.")])
    with torch.inference_mode():
        plain = embedded(ids)
        with steerer.apply(embedded):
            steered = embedded(ids)
    assert torch.equal(plain, steered)
    assert n_hooks(embedded) == 0


def test_training_lowers_the_valid_loss(embedded):
    contrast, pairs = cl.load_concept("data/positive")
    n = embedded.cfg.n_layers
    dirs = cl.fit_directions(embedded, contrast, method="mean_diff", layers=[n // 3, n // 2],
                             progress=False)
    steerer = cl.CLASSteerer(dirs)
    hist = cl.train(embedded, steerer, pairs.train.pairs[:4], pairs.valid.pairs[:2], epochs=2,
                    max_completion_tokens=24, progress=False)
    assert hist.best_valid_loss < hist.valid_losses[0] - 1e-3, hist.valid_losses
    assert float(steerer.W.abs().sum()) > 0
    assert n_hooks(embedded) == 0


def test_traced_generation_kv_cache_equals_full_passes(embedded):
    steerer = randomize(cl.CLASSteerer(random_directions(embedded, seed=5)), seed=6, scale=0.002)
    prompts = ["Name a colour.", "Describe a rainy morning in two words."]
    kw = dict(max_new_tokens=4, stop_at_eos=False, progress=False)
    cached = cl.generate(embedded, steerer, prompts, use_cache=True, **kw)
    full = cl.generate(embedded, steerer, prompts, use_cache=False, **kw)
    assert cached.token_ids == full.token_ids
    assert cached.strengths.shape == (2, cached.mask.shape[1], embedded.cfg.n_layers)
    assert float(cached.strengths.abs().sum()) > 0
    torch.testing.assert_close(cached.strengths, full.strengths, rtol=0, atol=2e-3)
    assert n_hooks(embedded) == 0


def test_attribution_sums_to_alpha(embedded):
    steerer = randomize(cl.CLASSteerer(random_directions(embedded, seed=2)), seed=3, scale=0.002)
    n = embedded.cfg.n_layers
    # exact on Gemma too: its post-attention RMSNorm scales every head by the same gain
    attrs = an.attribute_layers(embedded, steerer, "Tell me about your weekend plans.",
                                layers=[1, n // 2, n - 1])
    assert [a.layer for a in attrs] == [1, n // 2, n - 1]
    for a in attrs:
        assert abs(a.total - a.alpha) < 1e-3 * max(1.0, abs(a.alpha)), (a.layer, a.total, a.alpha)
    assert n_hooks(embedded) == 0


def test_saved_steerer_refuses_the_other_embedded_model(embedded, smol, gemma, tmp_path):
    other = gemma if embedded is smol else smol
    steerer = randomize(cl.CLASSteerer(random_directions(embedded, seed=4, layers=[0, 1])))
    steerer.save(tmp_path / "s")
    back = cl.load_steerer(tmp_path / "s", model=embedded)
    assert torch.equal(back.W, steerer.W)
    with pytest.raises(ArtifactError, match="model"):
        cl.load_steerer(tmp_path / "s", model=other)
    with pytest.raises(ArtifactError, match="model"):
        with back.apply(other):
            pass
    assert n_hooks(other) == 0
