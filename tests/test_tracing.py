"""Traced generation: padding, KV cache and the unsteered path."""

import pytest
import torch
from conftest import n_hooks, random_directions, randomize

import clas_lens as cl
from clas_lens.losses import head_matches

PROMPTS = ["hello", "The capital of France is Paris and the weather", "I love cats"]


@pytest.fixture(scope="module")
def steerer(tiny):
    return randomize(cl.CLASSteerer(random_directions(tiny, seed=11)), seed=12, scale=0.1)


def test_batched_left_padding_equals_one_at_a_time(tiny, steerer):
    batch = cl.generate(tiny, steerer, PROMPTS, max_new_tokens=6, stop_at_eos=False)
    for i, p in enumerate(PROMPTS):
        one = cl.generate(tiny, steerer, [p], max_new_tokens=6, stop_at_eos=False)
        assert batch.token_ids[i] == one.token_ids[0]
        torch.testing.assert_close(batch.strengths_of(i), one.strengths_of(0), rtol=0, atol=1e-5)
    assert n_hooks(tiny) == 0


def test_kv_cache_equals_uncached(tiny, steerer):
    a = cl.generate(tiny, steerer, PROMPTS, max_new_tokens=6, stop_at_eos=False, use_cache=True)
    b = cl.generate(tiny, steerer, PROMPTS, max_new_tokens=6, stop_at_eos=False, use_cache=False)
    assert a.token_ids == b.token_ids
    torch.testing.assert_close(a.strengths, b.strengths, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.projections, b.projections, rtol=0, atol=1e-5)


def test_cached_prompt_pass_unembeds_only_the_last_position(tiny, steerer):
    head_matches(tiny)  # its one-off check runs the head on full rows: not counted here
    seen = []

    def spy(h, hook=None):
        seen.append(h.shape[0] * h.shape[1])  # rows unembedded
        return h

    with tiny.hooks(fwd_hooks=[("unembed.hook_in", spy)]):
        cl.generate(tiny, steerer, PROMPTS, max_new_tokens=3, stop_at_eos=False, use_cache=True)
    # one row per prompt in the prompt pass, then in the pass over each new token (the
    # last one's too: its strengths are traced)
    assert seen == [len(PROMPTS)] * 4


def test_result_shapes_and_mask(tiny, steerer):
    res = cl.generate(tiny, steerer, PROMPTS, max_new_tokens=5, stop_at_eos=False)
    L = tiny.cfg.n_layers
    assert res.strengths.shape == (len(PROMPTS), res.mask.shape[1], L)
    for i in range(len(PROMPTS)):
        n = len(res.token_ids[i])
        assert int(res.mask[i].sum()) == n == res.prompt_lengths[i] + 5
        assert len(res.str_tokens[i]) == n
        assert torch.all(res.strengths[i, n:] == 0)
    assert int(res.generated_mask().sum()) == 5 * len(PROMPTS)


def test_prompt_strengths_equal_teacher_forced_trace(tiny, steerer):
    res = cl.generate(tiny, steerer, PROMPTS, max_new_tokens=4, stop_at_eos=False)
    tf = cl.trace(tiny, steerer, PROMPTS)
    assert tf.prompt_lengths == res.prompt_lengths
    assert float(tf.strengths.abs().sum()) > 0  # the steerer acts: not zeros against zeros
    for i in range(len(PROMPTS)):
        p = res.prompt_lengths[i]
        assert tf.strengths_of(i).shape == (p, tiny.cfg.n_layers)
        torch.testing.assert_close(res.strengths_of(i)[:p], tf.strengths_of(i), rtol=0, atol=1e-5)


def test_unsteered_path_matches_plain_greedy(tiny):
    res = cl.generate(tiny, None, ["hello world"], max_new_tokens=5, stop_at_eos=False)
    ids = torch.tensor([cl.chat_ids(tiny, "hello world")])
    with torch.inference_mode():
        for _ in range(5):
            nxt = tiny(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    assert res.token_ids[0] == ids[0].tolist()
    assert res.strengths is None


def test_sampling_is_seeded(tiny, steerer):
    """The same seed gives the same samples, another seed other samples (greedy would give
    the same tokens for every seed)."""
    kw = dict(max_new_tokens=8, stop_at_eos=False)
    a = cl.generate(tiny, steerer, PROMPTS, do_sample=True, seed=3, **kw)
    b = cl.generate(tiny, steerer, PROMPTS, do_sample=True, seed=3, **kw)
    c = cl.generate(tiny, steerer, PROMPTS, do_sample=True, seed=4, **kw)
    greedy = cl.generate(tiny, steerer, PROMPTS, **kw)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids and a.token_ids != greedy.token_ids


def test_bad_arguments(tiny, steerer):
    with pytest.raises(ValueError, match="empty"):
        cl.generate(tiny, steerer, [])
    with pytest.raises(TypeError, match="prompt 0 is a int, not a str"):
        cl.generate(tiny, steerer, [3])
    with pytest.raises(ValueError, match="context"):
        cl.generate(tiny, steerer, ["hello"], max_new_tokens=10_000)
    assert n_hooks(tiny) == 0
