"""Contrasts that can carry a signal: the checks in fit_directions and response contrasts."""

import warnings

import numpy as np
import pytest
import torch

import clas_lens as cl
from clas_lens.contrast import response_contrast
from clas_lens.directions import chance_accuracy, resid_activations, resid_hook
from clas_lens.model import chat_ids, completion_ids

WORDS = ["cats", "dogs", "rain", "Paris", "hello", "weekend", "morning", "the sea", "a car", "trees"]
PLANTED = "wonderful wonderful wonderful"


def steer_set(base="Tell me about {prompt}.", steer="Tell me about {prompt}, cheerfully!",
              completion=lambda w: f"Here is {w}."):
    rows = [{"x": base.replace("{prompt}", w), "base_template": base, "steer_template": steer,
             "base_input": w, "y": completion(w)} for w in WORDS]
    return cl.SteerSet([r["x"] for r in rows], [r["y"] for r in rows],
                       ["train"] * 6 + ["valid"] * 2 + ["test"] * 2, "toy", rows)


def test_identical_template_contrast_raises(tiny):
    same = steer_set(base="{prompt}", steer="{prompt}")
    assert not same.templates_differ() and steer_set().templates_differ()
    with pytest.raises(ValueError, match=r"identical pair by pair \(8 pairs\).*response contrast"):
        cl.fit_directions(tiny, same.contrast_set(), method="mean_diff", progress=False)


def test_one_label_equal_to_the_other_raises(tiny):
    """Unpaired, shuffled: each label-0 prompt appears among the label-1 prompts and back."""
    prompts = ["a", "b", "c", "c", "a", "b"]
    contrast = cl.ContrastSet(prompts, [0, 0, 0, 1, 1, 1], name="shuffled")
    with pytest.raises(ValueError, match="label-0 prompts are exactly the label-1 prompts"):
        cl.fit_directions(tiny, contrast, method="mean_diff", progress=False)


def _pairs_without_signal(model, n_pairs=20, seed=0):
    """Distinct prompts whose activations depend on the pair only (plus tiny label-free noise)."""
    prompts = [f"{k} {w}" for w in range(n_pairs) for k in ("plain", "bright")]
    contrast = cl.ContrastSet(prompts, [0, 1] * n_pairs, [i // 2 for i in range(2 * n_pairs)],
                              "no-signal")
    g = torch.Generator().manual_seed(seed)
    d, layers = int(model.cfg.d_model), int(model.cfg.n_layers)
    base = torch.randn(n_pairs, layers, d, generator=g).repeat_interleave(2, dim=0)
    return contrast, base + 1e-3 * torch.randn(2 * n_pairs, layers, d, generator=g)


def test_at_chance_contrast_warns_and_records_it(tiny):
    contrast, acts = _pairs_without_signal(tiny)
    with pytest.warns(UserWarning, match="held-out probe accuracy is at chance at every layer"):
        dirs = cl.fit_directions(tiny, contrast, method="mean_diff", progress=False,
                                 activations=acts)
    assert dirs.fit.at_chance is True
    assert float(dirs.accuracy.max()) <= dirs.fit.chance_accuracy
    # the same prompts with a planted label signal: no warning, nothing recorded
    planted = acts.clone()
    planted[1::2] += 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok = cl.fit_directions(tiny, contrast, method="mean_diff", progress=False,
                               activations=planted)
    assert ok.fit.at_chance is False and float(ok.accuracy.max()) > ok.fit.chance_accuracy


def test_chance_accuracy():
    assert chance_accuracy([0, 1] * 50) == pytest.approx(0.5 + 2 * 0.05)
    assert chance_accuracy([0, 0, 0, 1]) == pytest.approx(0.75)  # capped at 1 - 1/n
    assert chance_accuracy([0, 1] * 5) == pytest.approx(0.5 + 2 * np.sqrt(0.025))


def test_response_contrast_labels_prompts_and_completions(tiny):
    s = steer_set()
    contrast = response_contrast(tiny, s, max_new_tokens=5, progress=False)
    first8 = s.prompts[:8]
    greedy = cl.generate(tiny, None, first8, max_new_tokens=5, progress=False).texts
    assert contrast.source == "response" and contrast.name == "toy"
    assert contrast.labels == [0, 1] * 8 and contrast.pair_ids == [i // 2 for i in range(16)]
    assert contrast.prompts == [p for p in first8 for _ in (0, 1)]
    assert contrast.completions[0::2] == greedy
    assert contrast.completions[1::2] == s.completions[:8]
    only_valid = s.response_contrast(["x", "y"], splits=("valid",))
    assert only_valid.prompts == [s.prompts[6]] * 2 + [s.prompts[7]] * 2
    assert only_valid.completions == ["x", s.completions[6], "y", s.completions[7]]
    with pytest.raises(cl.DataError, match="1 answers for the 2 pairs"):
        s.response_contrast(["x"], splits=("valid",))


def test_completion_activations_are_read_over_the_completion(tiny):
    """Exact check against one unpadded forward pass: last completion token, and the mean."""
    prompts, completions = ["Tell me about cats.", "Hi"], ["Cats are great", "Hello there, friend"]
    last = resid_activations(tiny, prompts, [1, 2], completions=completions)
    mean = resid_activations(tiny, prompts, [1, 2], completions=completions, position="mean")
    for i, (p, c) in enumerate(zip(prompts, completions)):
        tail = completion_ids(tiny, c, end_of_turn=False)
        ids = torch.tensor([chat_ids(tiny, p) + tail])
        _, cache = tiny.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
        for j, layer in enumerate([1, 2]):
            h = cache[resid_hook(layer)][0]
            assert torch.allclose(last[i, j], h[-1], atol=1e-5)
            assert torch.allclose(mean[i, j], h[-len(tail):].mean(0), atol=1e-5)


def test_response_direction_separates_a_planted_behaviour(tiny):
    s = steer_set(completion=lambda w: f"{w}: {PLANTED}")
    contrast = response_contrast(tiny, s, max_new_tokens=5, progress=False)
    dirs = cl.fit_directions(tiny, contrast, method="mean_diff", progress=False)
    assert dirs.fit.contrast == "response" and not dirs.fit.at_chance
    # test prompts the direction never saw: the planted behaviour projects higher
    test = s.test
    own = cl.generate(tiny, None, test.prompts, max_new_tokens=5, progress=False).texts
    with_b = resid_activations(tiny, test.prompts, completions=test.completions)
    without = resid_activations(tiny, test.prompts, completions=own)
    proj = lambda a: torch.einsum("nld,ld->nl", a, dirs.vectors)  # noqa: E731
    assert bool((proj(with_b) > proj(without)).all())
