"""Tests of clas_lens.analysis: exact checks on the tiny model, a few on the embedded one."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import n_hooks, random_directions, randomize

from clas_lens import analysis as an
from clas_lens.losses import completion_nll
from clas_lens.steerers import CLASSteerer, LASSteerer, ReFTSteerer
from clas_lens.tracing import GenerationResult, trace
from clas_lens.training import train

PAIRS = [
    ("Tell me about cats.", "I love cats, they are wonderful!"),
    ("How was your day?", "Great, thank you."),
    ("Describe Paris.", "The capital of France is sunny and warm today."),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a small shared machine, oversubscribed threads are far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def clas(tiny):
    return randomize(CLASSteerer(random_directions(tiny)), seed=1, scale=0.05)


# ---- 1. strengths --------------------------------------------------------------------

def _fake_result():
    s = torch.zeros(2, 4, 2)
    s[0, :3] = torch.tensor([[1.0, -2.0], [3.0, 0.5], [-1.0, 1.0]])
    s[1, :2] = torch.tensor([[0.0, 2.0], [4.0, -6.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    return GenerationResult(["p0", "p1"], ["", ""], [[1, 2, 3], [1, 2]], [2, 1],
                            [["a", "b", "c"], ["d", "e"]], s, None, mask, [4, 7], "clas")


def test_strength_summary_exact():
    close = lambda a, b: math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)  # noqa: E731
    rows = an.strength_summary(_fake_result())
    r0, r1 = rows
    assert r0["n_tokens"] == 3 and close(r0["mean"], 2.5 / 6)
    assert r0["max_abs"] == 3.0 and r0["argmax_token"] == 1 and r0["argmax_layer"] == 4
    assert r0["argmax_str"] == "b"
    assert close(r0["mean_prompt"], 2.5 / 4) and close(r0["mean_generated"], 0.0)
    assert r1["max_abs"] == 6.0 and r1["argmax_layer"] == 7 and r1["argmax_token"] == 1
    assert close(r1["mean_generated"], -1.0) and close(r1["mean_abs_generated"], 5.0)


def test_layer_profile_and_errors():
    res = _fake_result()
    prof = an.layer_profile(res)
    assert torch.allclose(prof, torch.tensor([9 / 5, 11.5 / 5]))
    gen = an.layer_profile(res, generated_only=True)
    assert torch.allclose(gen, torch.tensor([5 / 2, 7 / 2]))
    assert torch.allclose(an.layer_profile(res, skip_first=True), torch.tensor([8 / 3, 7.5 / 3]))
    res.strengths = None
    with pytest.raises(ValueError, match="no strengths"):
        an.layer_profile(res)


def test_compare_strengths_clas_vs_las(tiny, clas):
    las = LASSteerer(random_directions(tiny)).set(0.3)
    other = randomize(CLASSteerer(random_directions(tiny, seed=7)), seed=8, scale=0.05)
    prompts = [p for p, _ in PAIRS]
    ra, rb, rc = trace(tiny, clas, prompts), trace(tiny, las, prompts), trace(tiny, other, prompts)
    cmp_ = an.compare_strengths(ra, rc)
    xa, xc = ra.strengths[ra.mask], rc.strengths[rc.mask]  # [tokens, layer], by hand
    by_hand = torch.stack([torch.corrcoef(torch.stack([xa[:, l], xc[:, l]]))[0, 1] for l in range(3)])
    assert torch.allclose(cmp_.corr, by_hand.float(), atol=1e-5) and cmp_.n_tokens == len(xa)
    assert torch.allclose(cmp_.mean_a, xa.mean(0)) and torch.allclose(cmp_.mean_abs_b, xc.abs().mean(0))
    cmp_ = an.compare_strengths(ra, rb)
    assert torch.allclose(cmp_.mean_b, torch.full((3,), 0.3))
    assert torch.isnan(cmp_.corr).all()  # a constant LAS coefficient has no correlation
    with pytest.raises(ValueError, match="different prompts"):
        an.compare_strengths(ra, trace(tiny, las, prompts[:2]))
    assert n_hooks(tiny) == 0


# ---- 2. similarity -------------------------------------------------------------------

@pytest.mark.parametrize("d", [32, 576])
def test_null_band_matches_theory(d):
    theory = math.sqrt(2 / (math.pi * d))
    a = an.null_band(d, "analytic")
    r = an.null_band(d, "random", n_null=4000)
    assert abs(a.mean_abs - theory) / theory < 0.05
    assert abs(r.mean_abs - a.mean_abs) / a.mean_abs < 0.06
    assert abs(r.hi - a.hi) / a.hi < 0.1 and r.lo < 0 < r.hi
    with pytest.raises(ValueError, match="unknown null"):
        an.null_band(d, "shuffle")


def test_cosine_per_layer_and_readout(tiny, clas):
    dirs = random_directions(tiny)
    flipped = an.cosine_per_layer(dirs.vectors, -3 * dirs.vectors)  # scale-free, sign kept
    assert torch.allclose(flipped.cos, -torch.ones(3)) and flipped.outside_null().all()
    other = random_directions(tiny, seed=5)
    res = an.cosine_per_layer(dirs, other)
    manual = (dirs.vectors * other.vectors).sum(1)
    assert torch.allclose(res.cos, manual, atol=1e-6) and res.layers == [0, 1, 2]
    with torch.no_grad():
        clas.W[:, 0] = -2 * clas.V[:, 0]
    al = an.readout_alignment(clas)
    assert torch.allclose(al.cos, -torch.ones(3), atol=1e-6) and al.summary()["n_outside"] == 3
    reft = ReFTSteerer(tiny)
    assert an.cosine_per_layer(reft.U[:, 0], dirs.vectors).cos.shape == (3,)
    with pytest.raises(ValueError, match="zero"):
        an.readout_alignment(CLASSteerer(dirs))
    with pytest.raises(ValueError, match="shapes differ"):
        an.cosine_per_layer(torch.ones(3, 4), torch.ones(2, 4))


def test_layer_and_method_similarity(tiny):
    dirs = random_directions(tiny)
    m = an.layer_similarity_matrix(dirs)
    assert torch.allclose(m.matrix, dirs.vectors @ dirs.vectors.T, atol=1e-6)
    off = [float(m.matrix[i, j]) for i in range(3) for j in range(3) if i != j]
    assert sorted(m.off_diagonal().tolist()) == pytest.approx(sorted(off), abs=1e-6)
    b = random_directions(tiny, seed=3)
    ms = an.method_similarity({"a": dirs, "b": b, "c": random_directions(tiny, seed=4)})
    assert ms.cos.shape == (3, 3, 3) and len(ms.table()) == 3
    assert torch.allclose(ms.cos[0, 1], (dirs.vectors * b.vectors).sum(1), atol=1e-6)
    dirs.accuracy = torch.tensor([0.6, 0.9, 0.7])
    prof = an.probe_profile(dirs)
    assert prof["layers"] == [0, 1, 2] and prof["best_layer"] == 1
    assert prof["best_accuracy"] == pytest.approx(0.9)


# ---- 3. sweeps -----------------------------------------------------------------------

def test_las_sweep_cached_equals_naive(tiny):
    dirs = random_directions(tiny)
    cs = [0.0, 1.5, -3.0]
    fast = an.layer_sweep_las(tiny, dirs, PAIRS, cs, cached=True, batch_size=2, coef_batch=2)
    slow = an.layer_sweep_las(tiny, dirs, PAIRS, cs, cached=False, batch_size=3)
    assert fast.nll.shape == (3, 3)
    assert torch.allclose(fast.nll, slow.nll, atol=1e-5), (fast.nll, slow.nll)
    base = completion_nll(tiny, None, PAIRS)
    assert abs(fast.baseline - base) < 1e-5 and torch.allclose(fast.nll[:, 0], torch.tensor(base))
    # one layer, one coefficient agrees with a LAS steerer on that layer alone
    one = completion_nll(tiny, LASSteerer(dirs, layers=[1]).set(-3.0), PAIRS)
    assert abs(float(fast.nll[1, 2]) - one) < 1e-5
    assert fast.best()["nll"] == float(fast.nll.min())
    assert n_hooks(tiny) == 0


def test_right_padding_does_not_change_nll(tiny):
    alone = [completion_nll(tiny, None, [p]) for p in PAIRS]
    batched = completion_nll(tiny, None, PAIRS, per_example=True)
    assert torch.allclose(batched, torch.tensor(alone), atol=1e-5)


def test_clas_sweeps(tiny):
    """Each entry of the per-layer and cumulative sweeps is the best valid NLL of a CLAS steerer
    trained directly on those layers with the same settings and seed, and training helps."""
    dirs = random_directions(tiny)
    kw = dict(epochs=2, lr={"W": 1e-2, "b": 0.3}, seed=5)
    valid = PAIRS[:2]
    sw = an.layer_sweep_clas(tiny, dirs, PAIRS, valid, layers=[0, 2], **kw)
    cu = an.cumulative_sweep_clas(tiny, dirs, PAIRS, valid, ks=[1, 3], **kw)

    def direct(layers):
        st = CLASSteerer(dirs, layers=layers)
        train(tiny, st, PAIRS, valid, progress=False, **kw)
        return completion_nll(tiny, st, valid)

    assert sw.layers == [0, 2] and cu.layers == [1, 3]
    assert sw.nll.tolist() == pytest.approx([direct([0]), direct([2])], abs=1e-5)
    assert cu.nll.tolist() == pytest.approx([direct([0]), direct([0, 1, 2])], abs=1e-5)
    assert sw.baseline == pytest.approx(completion_nll(tiny, None, valid), abs=1e-6)
    assert (sw.nll < sw.baseline - 1e-3).all() and min(sw.meta["best_epoch"]) >= 1
    with pytest.raises(ValueError, match="ks must"):
        an.cumulative_sweep_clas(tiny, dirs, PAIRS, PAIRS, ks=[4])
    assert n_hooks(tiny) == 0


def test_sweep_input_errors(tiny):
    dirs = random_directions(tiny, layers=[0, 1])
    with pytest.raises(ValueError, match="coefficients"):
        an.layer_sweep_las(tiny, dirs, PAIRS, [])
    with pytest.raises(ValueError, match="no layer"):
        an.layer_sweep_las(tiny, dirs, PAIRS, [1.0], layers=[2])


# ---- 4. attribution ------------------------------------------------------------------

def test_attribution_is_exact_every_layer(tiny, clas):
    attrs = an.attribute_layers(tiny, clas, "Tell me about cats.", completion="Great!")
    res = trace(tiny, clas, ["Tell me about cats."], ["Great!"])
    for a in attrs:
        assert abs(a.total - a.alpha) < 1e-5, (a.layer, a.total, a.alpha)
        assert a.residual_error < 1e-5
        # alpha agrees with the strength the steerer recorded in a traced pass
        assert abs(a.alpha - float(res.strengths[0, a.position, a.layer])) < 1e-5
        assert sum(n.endswith(".steer") for n in a.contributions) == a.layer
        assert sum(".H" in n for n in a.contributions) == 4 * (a.layer + 1)
    one = an.attribute_strength(tiny, clas, "Tell me about cats.", layer=1, position=2)
    assert abs(one.total - one.alpha) < 1e-5 and one.position == 2
    g = one.grouped()
    assert abs(sum(g.values()) + one.bias - one.alpha) < 1e-5
    top = an.top_components(one, 3)
    assert len(top) == 3 and abs(top[0][1]) >= abs(top[-1][1])
    assert n_hooks(tiny) == 0


def test_attribution_errors(tiny, clas):
    with pytest.raises(ValueError, match="not steered"):
        an.attribute_strength(tiny, CLASSteerer(random_directions(tiny), layers=[0]), "hi", layer=2)
    with pytest.raises(ValueError, match="CLAS-form"):
        an.attribute_strength(tiny, LASSteerer(random_directions(tiny)), "hi", layer=0)
    with pytest.raises(ValueError, match="position"):
        an.attribute_strength(tiny, clas, [1, 2, 3], layer=0, position=5)
    assert n_hooks(tiny) == 0


def test_head_attention_sources(tiny, clas):
    src = an.head_attention_sources(tiny, [1, 5, 7, 9], layer=1, head=2, position=-1)
    assert len(src) == 4 and abs(sum(s["weight"] for s in src) - 1) < 1e-5
    assert src[0]["weight"] >= src[-1]["weight"]
    first = an.head_attention_sources(tiny, [1, 5, 7, 9], layer=0, head=0, position=0, steerer=clas)
    assert first[0]["position"] == 0 and abs(first[0]["weight"] - 1) < 1e-6  # causal
    with pytest.raises(ValueError, match="out of range"):
        an.head_attention_sources(tiny, [1, 2], layer=0, head=9)
    assert n_hooks(tiny) == 0


# ---- 5. dose-response ----------------------------------------------------------------

def test_dose_response(tiny, clas):
    out = an.dose_response(tiny, clas, PAIRS, scales=(0, 1, 2),
                           behaviour=lambda texts: float(sum(len(t) for t in texts)),
                           max_new_tokens=3)
    assert abs(out["nll"][0] - completion_nll(tiny, None, PAIRS)) < 1e-5
    assert abs(out["nll"][1] - completion_nll(tiny, clas, PAIRS)) < 1e-5
    assert len(out["behaviour"]) == 3 and len(out["texts"][0]) == len(PAIRS)
    assert "behaviour" not in an.dose_response(tiny, clas, PAIRS, scales=(1,))
    assert n_hooks(tiny) == 0


# ---- embedded model ------------------------------------------------------------------

@pytest.mark.embedded
def test_smol_attribution_exact_every_layer(smol):
    dirs = random_directions(smol, seed=2)
    steer = randomize(CLASSteerer(dirs), seed=3, scale=0.02)
    attrs = an.attribute_layers(smol, steer, "Tell me about your weekend plans.")
    assert len(attrs) == 30
    for a in attrs:
        assert abs(a.total - a.alpha) < 1e-4, (a.layer, a.total, a.alpha)
        assert sum(".H" in n for n in a.contributions) == 9 * (a.layer + 1)
    assert n_hooks(smol) == 0


@pytest.mark.embedded
def test_smol_cached_sweep_equals_naive(smol):
    dirs = random_directions(smol, seed=4)
    pairs = PAIRS[1:2]
    kw = dict(coefficients=[0.0, 8.0], layers=[5, 28])
    fast = an.layer_sweep_las(smol, dirs, pairs, cached=True, **kw)
    slow = an.layer_sweep_las(smol, dirs, pairs, cached=False, **kw)
    assert torch.allclose(fast.nll, slow.nll, atol=2e-4), (fast.nll, slow.nll)
    assert n_hooks(smol) == 0
