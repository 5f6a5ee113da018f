"""Probe directions: planted-direction recovery, sign, padding, persistence."""

import numpy as np
import pytest
import torch
from conftest import n_hooks

import clas_lens as cl
from clas_lens.directions import direction_from_features, resid_activations


def planted(n=60, d=24, seed=0, sep=3.0):
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    y = np.tile([0, 1], n // 2)
    X = rng.normal(size=(n, d)) + np.outer(y * sep, u) + 5.0
    return X, y, u


@pytest.mark.parametrize("method", ["mean_diff", "logistic", "pca", "rfm"])
def test_each_method_recovers_a_planted_direction(method):
    X, y, u = planted()
    pairs = [i // 2 for i in range(len(y))]
    v = direction_from_features(X, y, method, pairs=pairs)
    assert np.linalg.norm(v) == pytest.approx(1.0)
    assert v @ u > 0.8, f"{method}: cos={v @ u:.3f}"


@pytest.mark.parametrize("method", ["mean_diff", "logistic", "pca", "rfm"])
def test_sign_points_to_label_one(method):
    X, y, u = planted(seed=1)
    v = direction_from_features(X, 1 - y, method, pairs=[i // 2 for i in range(len(y))])
    assert v @ u < -0.8


def test_unknown_method_and_single_class():
    X, y, _ = planted()
    with pytest.raises(ValueError, match="unknown method"):
        direction_from_features(X, y, "magic")
    with pytest.raises(ValueError, match="both labels"):
        direction_from_features(X, np.zeros_like(y), "mean_diff")


def test_padding_does_not_change_activations(tiny):
    prompts = ["hello", "The capital of France is Paris and the weather is sunny"]
    together = resid_activations(tiny, prompts, batch_size=2)
    alone = torch.cat([resid_activations(tiny, [p], batch_size=1) for p in prompts])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    mean_t = resid_activations(tiny, prompts, batch_size=2, position="mean")
    mean_a = torch.cat([resid_activations(tiny, [p], position="mean") for p in prompts])
    torch.testing.assert_close(mean_t, mean_a, rtol=0, atol=1e-5)
    assert n_hooks(tiny) == 0


def test_batches_by_length_keep_the_prompts_order(tiny):
    # batched by length ("hi", "hello there", then the long one), returned in given order
    prompts = ["The capital of France is Paris and the weather is sunny", "hi", "hello there"]
    for position in ("last", "mean"):
        batched = resid_activations(tiny, prompts, batch_size=2, position=position)
        alone = torch.cat([resid_activations(tiny, [p], position=position) for p in prompts])
        torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)


def test_activations_equal_run_with_cache(tiny):
    ids = cl.chat_ids(tiny, "hello world")
    acts = resid_activations(tiny, ["hello world"], layers=[1])
    with torch.inference_mode():
        _, cache = tiny.run_with_cache(torch.tensor([ids]))
    torch.testing.assert_close(acts[0, 0], cache["blocks.1.hook_resid_post"][0, -1])


@pytest.fixture(scope="module")
def contrast():
    inputs = ["cats", "dogs", "the sun", "Paris", "rain", "a morning", "the world", "hello"]
    return cl.ContrastSet.from_templates(inputs, "Describe {prompt}.",
                                         "Describe {prompt} in a cheerful, wonderful way!")


def test_fit_directions_artifact_round_trip(tiny, contrast, tmp_path):
    d = cl.fit_directions(tiny, contrast, method="mean_diff", progress=False)
    assert d.vectors.shape == (tiny.cfg.n_layers, tiny.cfg.d_model)
    assert d.accuracy.shape == (tiny.cfg.n_layers,)
    torch.testing.assert_close(d.vectors.norm(dim=-1), torch.ones(tiny.cfg.n_layers))
    assert d.hook_names[0] == "blocks.0.hook_resid_post"
    d.save(tmp_path / "d")
    back = cl.load_directions(tmp_path / "d", model=tiny)
    assert torch.equal(back.vectors, d.vectors) and torch.equal(back.accuracy, d.accuracy)
    assert back.method == "mean_diff" and back.layers == d.layers
    # the fit settings are typed provenance, saved and read back
    assert d.fit.position == "last" and d.fit.seed == 0 and d.fit.holdout == 0.25
    assert d.fit.n_fit + d.fit.n_heldout == len(contrast) and d.fit.n_heldout > 0
    assert back.fit == d.fit and back.cfg == d.cfg and back.cfg.concept == contrast.name


def test_fit_directions_is_deterministic(tiny, contrast):
    a = cl.fit_directions(tiny, contrast, method="rfm", layers=[0, 2], progress=False)
    b = cl.fit_directions(tiny, contrast, method="rfm", layers=[0, 2], progress=False)
    assert torch.equal(a.vectors, b.vectors)


def test_fit_directions_bad_inputs(tiny, contrast):
    with pytest.raises(ValueError, match="unknown method"):
        cl.fit_directions(tiny, contrast, method="nope")
    with pytest.raises(ValueError, match="out of range"):
        cl.fit_directions(tiny, contrast, layers=[99])
    with pytest.raises(ValueError, match="position"):
        cl.fit_directions(tiny, contrast, position="first")


def test_directions_reject_nan():
    with pytest.raises(ValueError, match="NaN"):
        cl.Directions(torch.full((1, 4), float("nan")), torch.ones(1), [0], "x", "m", 1, 4)


def test_directions_accept_fit_settings_as_a_dict_and_refuse_unknown_ones():
    fit = {"position": "mean", "seed": 3, "holdout": 0.5, "n_fit": 4, "n_heldout": 4}
    d = cl.Directions(torch.ones(1, 4), torch.ones(1), [0], "x", "m", 1, 4, "c", fit)
    assert d.fit.position == "mean" and d.fit.truncate is False
    assert cl.Directions(torch.ones(1, 4), torch.ones(1), [0], "x", "m", 1, 4, "c", {}).fit is None
    with pytest.raises(cl.ArtifactError, match=r"probe fit settings: unknown key\(s\) \['colour'\]"):
        cl.Directions(torch.ones(1, 4), torch.ones(1), [0], "x", "m", 1, 4, "c", {**fit, "colour": 1})
