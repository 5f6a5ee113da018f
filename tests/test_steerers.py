"""Exact algebra of the steerers on a tiny random model."""

import pytest
import torch
from conftest import n_hooks, random_directions, randomize

import clas_lens as cl
from clas_lens.steerers import Recorder


def ids_of(model, text="hello world user"):
    return torch.tensor([cl.chat_ids(model, text)])


def test_zero_initialised_steerers_are_the_unsteered_model(tiny):
    ids = ids_of(tiny)
    dirs = random_directions(tiny)
    with torch.inference_mode():
        base = tiny(ids)
        for st in (cl.CLASSteerer(dirs), cl.LASSteerer(dirs), cl.LayerwiseLASSteerer(dirs),
                   cl.ReFTSteerer(tiny), cl.LoRASteerer(tiny)):
            with st.apply(tiny):
                assert torch.equal(tiny(ids), base), st.kind
    assert n_hooks(tiny) == 0


def test_clas_alpha_and_residual_match_hand_computation(tiny):
    ids = ids_of(tiny, "The capital of France")
    dirs = random_directions(tiny, seed=1)
    st = randomize(cl.CLASSteerer(dirs), seed=2, scale=0.2)
    names = [f"blocks.{l}.hook_resid_post" for l in range(tiny.cfg.n_layers)]
    pre, post = {}, {}

    def before(l):
        def f(h, hook=None):
            pre[l] = h.detach().clone()
            return h
        return f

    def after(l):
        def f(h, hook=None):
            post[l] = h.detach().clone()
            return h
        return f

    rec = Recorder()
    hooks = []
    for l, (name, fn) in enumerate(st.fwd_hooks(recorder=rec)):
        hooks += [(name, before(l)), (name, fn), (name, after(l))]
    with torch.inference_mode(), tiny.hooks(fwd_hooks=hooks):
        tiny(ids)
    W, b, V = st.W.detach(), st.b.detach(), st.V
    for l in range(tiny.cfg.n_layers):
        alpha = pre[l] @ W[l, 0] + b[l, 0]
        torch.testing.assert_close(rec.strengths[l][0][..., 0], alpha, rtol=0, atol=1e-6)
        torch.testing.assert_close(post[l], pre[l] + alpha.unsqueeze(-1) * V[l, 0],
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(rec.projections[l][0][..., 0], pre[l] @ V[l, 0],
                                   rtol=0, atol=1e-6)
    # edits compose: layer 1 reads a residual already steered at layer 0
    with torch.inference_mode():
        _, cache = tiny.run_with_cache(ids, names_filter=lambda n: n == names[1])
    assert not torch.allclose(cache[names[1]], pre[1])
    assert n_hooks(tiny) == 0


def test_scale_multiplies_strength(tiny):
    ids = ids_of(tiny)
    st = randomize(cl.CLASSteerer(random_directions(tiny)), seed=3, scale=0.2)
    r1, r0 = Recorder(), Recorder()
    with torch.inference_mode():
        with st.apply(tiny, scale=0.0, recorder=r0):
            out0 = tiny(ids)
        with st.apply(tiny, scale=2.0, recorder=r1):
            tiny(ids)
        base = tiny(ids)
    assert torch.equal(out0, base)
    # layer 0 reads the unsteered residual in both runs: strength doubles exactly
    raw = Recorder()
    with torch.inference_mode(), st.apply(tiny, recorder=raw):
        tiny(ids)
    torch.testing.assert_close(r1.strengths[0][0], 2 * raw.strengths[0][0])


def test_las_and_layerwise_add_constant_vectors(tiny):
    ids = ids_of(tiny)
    dirs = random_directions(tiny, seed=4)
    las = cl.LASSteerer(dirs).set(0.7)
    lw = cl.LayerwiseLASSteerer(dirs)
    with torch.no_grad():
        lw.c.fill_(0.7)
    rec = Recorder()
    with torch.inference_mode():
        with las.apply(tiny, recorder=rec):
            a = tiny(ids)
        with lw.apply(tiny):
            b = tiny(ids)
    assert torch.equal(a, b)
    assert torch.all(rec.strengths[0][0] == 0.7)


def test_lora_matches_hand_update(tiny):
    ids = ids_of(tiny)
    lora = randomize(cl.LoRASteerer(tiny, layers=[1]), seed=5, scale=0.3)
    x_in, out_plain = {}, {}

    def grab_in(x, hook=None):
        x_in["x"] = x.detach().clone()
        return x

    def grab_out(x, hook=None):
        out_plain["o"] = x.detach().clone()
        return x

    with torch.inference_mode():
        with tiny.hooks(fwd_hooks=[("blocks.1.mlp.out.hook_in", grab_in),
                                   ("blocks.1.mlp.out.hook_out", grab_out)]):
            tiny(ids)
        steered = {}
        hooks = lora.fwd_hooks() + [("blocks.1.mlp.out.hook_out",
                                     lambda x, hook=None: steered.setdefault("o", x.clone()))]
        with tiny.hooks(fwd_hooks=hooks):
            tiny(ids)
    k = lora.cfg.lora_alpha / lora.rank
    A, B = lora.A.detach(), lora.B.detach()
    expected = out_plain["o"] + (x_in["x"] @ A[0].T) @ B[0].T * k
    torch.testing.assert_close(steered["o"], expected, rtol=0, atol=1e-6)


def test_hooks_removed_after_exception_and_same_steerer_not_reapplied(tiny):
    st = cl.CLASSteerer(random_directions(tiny))
    with pytest.raises(ZeroDivisionError, match="inside apply"):
        with st.apply(tiny):
            assert n_hooks(tiny) == tiny.cfg.n_layers
            raise ZeroDivisionError("inside apply")
    assert n_hooks(tiny) == 0
    with st.apply(tiny):
        with pytest.raises(RuntimeError, match="already applied"):
            with st.apply(tiny):
                pass
        assert n_hooks(tiny) == tiny.cfg.n_layers
    assert n_hooks(tiny) == 0


def test_nested_different_steerers_stack(tiny):
    ids = ids_of(tiny)
    dirs = random_directions(tiny, seed=6)
    a, b = cl.LASSteerer(dirs).set(0.3), cl.LASSteerer(dirs).set(0.4)
    both = cl.LASSteerer(dirs).set(0.7)
    with torch.inference_mode():
        with a.apply(tiny), b.apply(tiny):
            nested = tiny(ids)
        with both.apply(tiny):
            single = tiny(ids)
    torch.testing.assert_close(nested, single, rtol=1e-5, atol=1e-5)
    assert n_hooks(tiny) == 0


@pytest.mark.parametrize("kind", ["clas", "las", "las_layerwise", "reft", "lora"])
def test_save_load_round_trip_is_exact(tiny, tmp_path, kind):
    dirs = random_directions(tiny, seed=7)
    make = {"clas": lambda: cl.CLASSteerer(dirs), "las": lambda: cl.LASSteerer(dirs),
            "las_layerwise": lambda: cl.LayerwiseLASSteerer(dirs),
            "reft": lambda: cl.ReFTSteerer(tiny, seed=3), "lora": lambda: cl.LoRASteerer(tiny)}
    st = randomize(make[kind](), seed=8)
    st.save(tmp_path / kind)
    back = cl.load_steerer(tmp_path / kind, model=tiny)
    assert type(back) is type(st)
    sd1, sd2 = st.state_dict(), back.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    ids = ids_of(tiny)
    with torch.inference_mode():
        with st.apply(tiny):
            a = tiny(ids)
        with back.apply(tiny):
            b = tiny(ids)
    assert torch.equal(a, b)


def test_load_onto_mismatched_model_refused(tiny, tiny_other, tmp_path):
    st = cl.CLASSteerer(random_directions(tiny))
    st.save(tmp_path / "s")
    with pytest.raises(cl.ArtifactError, match="n_layers|model_name|d_model"):
        cl.load_steerer(tmp_path / "s", model=tiny_other)
    with pytest.raises(cl.ArtifactError, match="made for a model with"):
        with st.apply(tiny_other):
            pass
    assert n_hooks(tiny_other) == 0


def test_rank_two_from_two_concepts(tiny):
    d1, d2 = random_directions(tiny, seed=1), random_directions(tiny, seed=2)
    st = cl.CLASSteerer([d1, d2])
    assert st.W.shape == (tiny.cfg.n_layers, 2, tiny.cfg.d_model)
    with pytest.raises(ValueError, match="rank"):
        cl.CLASSteerer(d1, rank=2)
    randomize(st, seed=9)
    res = cl.trace(tiny, st, ["hello"])
    assert res.strengths.shape[-2:] == (tiny.cfg.n_layers, 2)


def test_lora_goes_through_the_base_hook_path(tiny):
    """LoRA's hooks come from the base class: the finite-scale check, the recorder call."""
    lora = randomize(cl.LoRASteerer(tiny, layers=[0, 2]), seed=10, scale=0.3)
    with pytest.raises(ValueError, match="scale must be finite, got nan"):
        lora.fwd_hooks(scale=float("nan"))
    with pytest.raises(ValueError, match="scale must be finite, got inf"):
        with lora.apply(tiny, scale=float("inf")):
            pass
    assert n_hooks(tiny) == 0
    calls = []

    class Counting(Recorder):
        def add(self, j, strength, projection):
            calls.append((j, strength, projection))

    ids = ids_of(tiny)
    with torch.inference_mode():
        with lora.apply(tiny, scale=0.0):
            zero = tiny(ids)
        with lora.apply(tiny, recorder=Counting()):
            tiny(ids)
        base = tiny(ids)
    assert torch.equal(zero, base)  # the scale reaches the LoRA update
    assert calls == [(0, None, None), (1, None, None)]  # one call per layer, nothing recorded


def test_steerers_declare_shapes_and_share_one_loader(tiny):
    """Every kind is rebuilt from its config alone by the base class, with the shapes it
    declares; a config of another kind is refused."""
    dirs = random_directions(tiny, seed=11)
    for st in (cl.CLASSteerer([dirs, dirs]), cl.ReFTSteerer(tiny, rank=3), cl.LASSteerer(dirs),
               cl.LayerwiseLASSteerer(dirs, layers=[0, 2]), cl.LoRASteerer(tiny, rank=2)):
        empty = type(st)._from_cfg(st.cfg)
        assert {k: tuple(v.shape) for k, v in empty.state_dict().items()} == {
            k: tuple(v.shape) for k, v in st.state_dict().items()}, st.kind
        assert all(not v.any() for v in empty.state_dict().values()), st.kind
        assert [g["name"] for g in empty.param_groups()] == list(type(st).default_lr), st.kind
    with pytest.raises(ValueError, match="a ReFTSteerer needs a config of kind 'reft', got 'clas'"):
        cl.ReFTSteerer._from_cfg(cl.CLASSteerer(dirs).cfg)
