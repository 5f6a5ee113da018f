"""Reliability (issue 7), hooks: after any public call, successful or failed, the model
carries no clas_lens hooks, and hooks the user attached are left alone.

Nesting rules of ``Steerer.apply`` (documented in :mod:`clas_lens.steerers`):

* applying one steerer repeatedly (one block after another) gives identical results;
* nesting two *different* steerers stacks their edits, the outer steerer's hook running
  first at a shared hook point (so the inner one reads the outer's edit);
* nesting the *same* steerer on the same model raises ``RuntimeError`` (the outer
  block keeps working); on two different models it is allowed;
* calling ``apply`` without entering the ``with`` block attaches nothing;
* inside ``with st.apply(model)``, pass ``steerer=None`` to generate/trace (the model is
  already steered); passing ``st`` again is the nested case and raises.
"""

import pytest
import torch
from conftest import all_hooks, n_hooks, random_directions, randomize

import clas_lens as cl

PROMPTS = ["hello", "I love cats"]
PAIRS = [("hello", "world"), ("I love cats", "and dogs")]
USER_POINT = "blocks.0.hook_resid_pre"  # not a point clas_lens hooks


class Boom(Exception):
    pass


@pytest.fixture(scope="module")
def dirs(tiny):
    return random_directions(tiny, seed=51)


def _calls(tiny, dirs):
    st = randomize(cl.CLASSteerer(dirs), seed=52, scale=0.1)
    las = cl.LASSteerer(dirs).set(0.1)
    contrast = cl.ContrastSet.from_templates(["a", "b", "c", "d"], "Say {prompt}.",
                                             "Shout {prompt}!")
    return {
        "generate": lambda: cl.generate(tiny, st, PROMPTS, max_new_tokens=2, progress=False),
        "generate_uncached": lambda: cl.generate(tiny, st, PROMPTS, max_new_tokens=2,
                                                 use_cache=False, progress=False),
        "generate_lora": lambda: cl.generate(tiny, randomize(cl.LoRASteerer(tiny)), PROMPTS,
                                             max_new_tokens=2, progress=False),
        "trace": lambda: cl.trace(tiny, st, PROMPTS, ["x", "y"]),
        "completion_nll": lambda: cl.completion_nll(tiny, st, PAIRS),
        "train": lambda: cl.train(tiny, cl.CLASSteerer(dirs), PAIRS, PAIRS, epochs=1,
                                  progress=False),
        "grid_search_las": lambda: cl.grid_search_las(tiny, las, PAIRS, grid=[0.0, 0.1],
                                                      progress=False),
        "resid_activations": lambda: cl.resid_activations(tiny, PROMPTS, [0, 2]),
        "fit_directions": lambda: cl.fit_directions(tiny, contrast, method="mean_diff",
                                                    progress=False),
    }


NAMES = ["generate", "generate_uncached", "generate_lora", "trace", "completion_nll", "train",
         "grid_search_las", "resid_activations", "fit_directions"]


@pytest.mark.parametrize("name", NAMES)
def test_no_hooks_after_success(tiny, dirs, name):
    _calls(tiny, dirs)[name]()
    assert n_hooks(tiny) == 0


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
@pytest.mark.parametrize("name", NAMES)
def test_no_hooks_after_failure_mid_forward(tiny, dirs, name, exc):
    """A user hook that raises in the middle of the forward pass: the call fails,
    clas_lens removes its own hooks and leaves the user's hook in place."""
    call = _calls(tiny, dirs)[name]

    def explode(h, hook=None):
        raise exc("injected")

    with tiny.hooks(fwd_hooks=[(USER_POINT, explode)]):
        with pytest.raises(exc, match="injected"):  # train: raised by its epoch-0 evaluation
            call()
        assert n_hooks(tiny) == 1  # only the user's
    assert n_hooks(tiny) == 0


def test_no_hooks_after_validation_failures(tiny, tiny_other, dirs):
    st = cl.CLASSteerer(dirs)
    for call, match in (
            (lambda: cl.generate(tiny_other, st, PROMPTS, progress=False), "made for a model with"),
            (lambda: cl.generate(tiny, st, PROMPTS, max_new_tokens=10**6, progress=False),
             "prompt 0 plus max_new_tokens"),
            (lambda: cl.trace(tiny, st, PROMPTS, ["only one"]), "2 prompts but 1 completions"),
            (lambda: cl.train(tiny, st, PAIRS, epochs=-1, progress=False), "epochs must be >= 0"),
            (lambda: st.apply(tiny, scale=float("inf")).__enter__(), "scale must be finite")):
        with pytest.raises((ValueError, cl.ArtifactError), match=match):
            call()
        assert n_hooks(tiny) == 0 and n_hooks(tiny_other) == 0


def test_user_hooks_survive_and_still_fire(tiny, dirs):
    seen = []

    def spy(h, hook=None):
        seen.append(h.shape[1])
        return h

    st = cl.CLASSteerer(dirs)
    with tiny.hooks(fwd_hooks=[(USER_POINT, spy)]):
        cl.generate(tiny, st, ["hello"], max_new_tokens=2, progress=False, stop_at_eos=False)
        assert n_hooks(tiny) == 1
        n = len(seen)
        with torch.inference_mode():
            tiny(torch.tensor([cl.chat_ids(tiny, "hi")]))
        assert len(seen) == n + 1
    assert n >= 3 and n_hooks(tiny) == 0


def test_n_hooks_sees_block_pre_hooks_and_skips_the_bridges_own(tiny):
    """n_hooks counts forward hooks and pre-hooks (with or without kwargs) on any module, as a
    leaked ``ResidualCache`` block pre-hook would be, but not the hooks the bridge keeps."""
    ids = _ids(tiny)
    with torch.inference_mode():
        tiny(ids)
        tiny.run_with_cache(ids)  # wires the bridge's persistent capture hooks
    assert len(all_hooks(tiny)) >= 2 * tiny.cfg.n_layers and n_hooks(tiny) == 0
    block = tiny.blocks[1]
    for register in (lambda: block.register_forward_pre_hook(lambda mod, args: None),
                     lambda: block.register_forward_pre_hook(lambda mod, args, kw: None,
                                                             with_kwargs=True),
                     lambda: block.mlp.register_forward_hook(lambda mod, args, out: None)):
        handle = register()
        try:
            assert n_hooks(tiny) == 1
        finally:
            handle.remove()
        assert n_hooks(tiny) == 0


# ---- nesting and repetition ---------------------------------------------------------

def _ids(tiny):
    return torch.tensor([cl.chat_ids(tiny, "The weather is sunny")])


def test_repeated_apply_is_identical_and_does_not_accumulate(tiny, dirs):
    st = randomize(cl.CLASSteerer(dirs), seed=53, scale=0.1)
    outs = []
    for _ in range(3):
        with torch.inference_mode(), st.apply(tiny):
            assert n_hooks(tiny) == tiny.cfg.n_layers
            outs.append(tiny(_ids(tiny)))
        assert n_hooks(tiny) == 0
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])


def test_nested_different_steerers_run_outer_first(tiny, dirs):
    a = cl.LASSteerer(dirs).set(0.5)
    b = randomize(cl.CLASSteerer(random_directions(tiny, seed=54)), seed=55, scale=0.2)
    ids = _ids(tiny)
    with torch.inference_mode():
        with a.apply(tiny), b.apply(tiny):
            assert n_hooks(tiny) == 2 * tiny.cfg.n_layers
            nested = tiny(ids)
        with tiny.hooks(fwd_hooks=a.fwd_hooks() + b.fwd_hooks()):
            a_then_b = tiny(ids)
        with tiny.hooks(fwd_hooks=b.fwd_hooks() + a.fwd_hooks()):
            b_then_a = tiny(ids)
    assert torch.equal(nested, a_then_b)
    assert not torch.allclose(nested, b_then_a)  # the order matters, and is the documented one
    assert n_hooks(tiny) == 0


def test_same_steerer_nested_raises_and_outer_keeps_working(tiny, dirs):
    st = randomize(cl.CLASSteerer(dirs), seed=56, scale=0.1)
    ids = _ids(tiny)
    with torch.inference_mode():
        with st.apply(tiny):
            ref = tiny(ids)
        with st.apply(tiny):
            with pytest.raises(RuntimeError, match="this CLASSteerer is already applied to this model"):
                with st.apply(tiny):
                    pass
            assert n_hooks(tiny) == tiny.cfg.n_layers
            assert torch.equal(tiny(ids), ref)
        assert n_hooks(tiny) == 0
        with st.apply(tiny):  # the registry was cleaned: applying again works
            assert torch.equal(tiny(ids), ref)
    assert n_hooks(tiny) == 0


def test_same_steerer_on_two_models_at_once(tiny, tiny_other):
    d1 = random_directions(tiny)
    st = cl.CLASSteerer(d1)
    with st.apply(tiny):
        with pytest.raises(cl.ArtifactError, match="made for a model with"):  # refused, not nested
            with st.apply(tiny_other):
                pass
        assert n_hooks(tiny_other) == 0
    assert n_hooks(tiny) == 0


def test_apply_without_with_attaches_nothing(tiny, dirs):
    st = cl.CLASSteerer(dirs)
    cm = st.apply(tiny)
    assert n_hooks(tiny) == 0
    del cm
    with st.apply(tiny):  # and does not count as applied
        assert n_hooks(tiny) == tiny.cfg.n_layers
    assert n_hooks(tiny) == 0


def test_exception_inside_apply_cleans_registry(tiny, dirs):
    st = cl.CLASSteerer(dirs)
    with pytest.raises(Boom, match="inside apply"):
        with st.apply(tiny):
            raise Boom("inside apply")
    with st.apply(tiny):
        pass
    assert n_hooks(tiny) == 0


def test_generate_inside_apply(tiny, dirs):
    st = randomize(cl.CLASSteerer(dirs), seed=57, scale=0.1)
    outside = cl.generate(tiny, st, PROMPTS, max_new_tokens=4, stop_at_eos=False, progress=False)
    with st.apply(tiny):
        inside = cl.generate(tiny, None, PROMPTS, max_new_tokens=4, stop_at_eos=False,
                             progress=False)
        with pytest.raises(RuntimeError, match="already applied"):
            cl.generate(tiny, st, PROMPTS, max_new_tokens=1, progress=False)
        assert n_hooks(tiny) == tiny.cfg.n_layers
    assert inside.token_ids == outside.token_ids
    assert n_hooks(tiny) == 0
