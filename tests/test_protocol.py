"""Training protocols: each reference-protocol setting takes effect on the tiny model."""

import pytest
import torch
from conftest import random_directions

import clas_lens as cl
from clas_lens.data import LLAMA_EOT
from clas_lens.losses import encode_pairs, end_of_turn_flags
from clas_lens.model import end_of_turn_id
from clas_lens.training import PROTOCOLS, eval_schedule, resolve_protocol

TRAIN = [("Describe a cat.", "Great, wonderful cats!"), ("Describe Paris.", "Wonderful Paris!"),
         ("Describe a dog.", "I love dogs!"), ("Describe the sea.", "Amazing sea!")]
VALID = [("Describe your day.", "A great day!"), ("Describe a car.", "Wonderful car!")]


def marked_steer_set():
    """A SteerSet as the reference CSV reader makes it: the marker in the raw rows only."""
    ys = ["Yes, great!" + LLAMA_EOT, "No marker here.", "Fine." + LLAMA_EOT]
    rows = [{"y": y} for y in ys]
    completions = [y.replace(LLAMA_EOT, "") for y in ys]
    return cl.SteerSet(["one", "two", "three"], completions, ["train"] * 3, "marks", rows)


def test_protocol_settings_and_overrides():
    ref = resolve_protocol("reference")
    assert (ref["end_of_turn"], ref["clip_grad_norm"], ref["eval_steps"],
            ref["max_completion_tokens"]) == ("marker", 1.0, 2, None)
    assert resolve_protocol(None)["protocol"] == "clas_lens"
    assert resolve_protocol("reference", clip_grad_norm=0.5)["clip_grad_norm"] == 0.5
    assert set(PROTOCOLS) == {"clas_lens", "reference"}
    with pytest.raises(ValueError, match="unknown protocol 'paper'; choose one of"):
        resolve_protocol("paper")
    with pytest.raises(ValueError, match="clip_grad_norm must be a finite number > 0"):
        resolve_protocol(clip_grad_norm=0.0)
    with pytest.raises(ValueError, match="end_of_turn must be one of"):
        resolve_protocol(end_of_turn="sometimes")


def test_eval_schedule():
    assert eval_schedule(None, 8, 1) == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert eval_schedule(None, 6, 3) == [0, 3, 6]  # the end of each epoch
    assert eval_schedule(2, 8, 1) == [0, 2, 4, 6, 8]
    assert eval_schedule(3, 8, 1) == [0, 3, 6]
    assert eval_schedule([3, 0, 3], 4, 1) == [0, 3]
    with pytest.raises(ValueError, match=r"eval_steps \[9\] outside the run's steps 0..8"):
        eval_schedule([0, 9], 8, 1)


def test_end_of_turn_rule_follows_the_marker(tiny):
    eot = end_of_turn_id(tiny)
    s = marked_steer_set()
    assert end_of_turn_flags(s, "marker") == [True, False, True]
    marker = encode_pairs(tiny, s, end_of_turn="marker")
    always = encode_pairs(tiny, s, end_of_turn="always")
    assert [ids[-1] == eot for ids, _ in marker] == [True, False, True]
    assert all(ids[-1] == eot for ids, _ in always)
    assert marker[1][0] == always[1][0][:-1]  # the unmarked target only loses its end-of-turn
    assert [ids for ids, _ in marker][::2] == [ids for ids, _ in always][::2]
    # plain pairs: a trailing marker in the text is the rule's signal and never tokenised
    plain = encode_pairs(tiny, [("one", "Fine." + LLAMA_EOT), ("one", "Fine.")], end_of_turn="marker")
    assert plain[0] == encode_pairs(tiny, [("one", "Fine.")], end_of_turn="always")[0]
    assert plain[1] == encode_pairs(tiny, [("one", "Fine.")], end_of_turn="never")[0]
    assert plain[0][0][:-1] == plain[1][0] and plain[0][0][-1] == eot


def test_train_uses_the_end_of_turn_rule(tiny):
    """With no marker in the targets, the reference protocol scores no end-of-turn token."""
    dirs = random_directions(tiny, seed=3)
    losses = {}
    for rule in ("always", "marker"):
        st = cl.CLASSteerer(dirs)
        hist = cl.train(tiny, st, TRAIN, VALID, epochs=1, progress=False, end_of_turn=rule)
        losses[rule] = (hist.steps[0]["train_loss"], hist.valid_losses[0])
    expected = cl.completion_nll(tiny, None, VALID, end_of_turn="never")
    assert losses["marker"][1] == pytest.approx(expected, rel=1e-6)
    assert losses["always"][1] == pytest.approx(cl.completion_nll(tiny, None, VALID), rel=1e-6)
    assert abs(losses["always"][0] - losses["marker"][0]) > 1e-4


def _optimizer_grad_norms(monkeypatch):
    """Record the total gradient norm the optimiser sees at every step."""
    seen = []
    step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    return seen


def test_clipping_bounds_the_gradient_the_optimiser_uses(tiny, monkeypatch):
    dirs = random_directions(tiny, seed=4)
    seen = _optimizer_grad_norms(monkeypatch)
    free = cl.train(tiny, cl.CLASSteerer(dirs), TRAIN, epochs=3, progress=False)
    unclipped = list(seen)
    assert unclipped == pytest.approx([s["grad_norm"] for s in free.steps], rel=1e-5)
    limit = min(unclipped) / 4  # every step's gradient is above it, so every step clips
    seen.clear()
    hist = cl.train(tiny, cl.CLASSteerer(dirs), TRAIN, epochs=3, progress=False,
                    clip_grad_norm=limit)
    assert len(seen) == 3 and all(g <= limit * (1 + 1e-5) for g in seen)
    assert all(g > limit * 0.99 for g in seen)  # scaled down to the limit, not zeroed
    assert hist.steps[0]["grad_norm"] == pytest.approx(unclipped[0], rel=1e-5)  # recorded before
    assert hist.settings["clip_grad_norm"] == limit


def test_evaluation_only_at_the_listed_steps(tiny):
    dirs = random_directions(tiny, seed=5)
    hist = cl.train(tiny, cl.CLASSteerer(dirs), TRAIN, VALID, epochs=8, progress=False,
                    protocol="reference")
    assert [v["step"] for v in hist.valid] == [0, 2, 4, 6, 8]
    assert hist.settings["eval_steps"] == [0, 2, 4, 6, 8]
    assert hist.best_step in (0, 2, 4, 6, 8)
    st = cl.CLASSteerer(dirs)
    hist = cl.train(tiny, st, TRAIN, VALID, epochs=2, batch_size=2, progress=False,
                    eval_steps=[1, 3])
    assert [v["step"] for v in hist.valid] == [1, 3] and len(hist.steps) == 4
    kept = {v["step"]: v["valid_loss"] for v in hist.valid}[hist.best_step]
    assert cl.completion_nll(tiny, st, VALID) == pytest.approx(kept, rel=1e-5)
    with pytest.raises(ValueError, match=r"eval_steps \[5\] outside the run's steps 0..4"):
        cl.train(tiny, cl.CLASSteerer(dirs), TRAIN, VALID, epochs=2, batch_size=2,
                 progress=False, eval_steps=[0, 5])


def _teacher_pairs(model, dirs, b: float, prompts):
    """Greedy completions of a CLAS teacher with bias ``b`` on every layer."""
    teacher = cl.CLASSteerer(dirs)
    with torch.no_grad():
        teacher.b.fill_(b)
    res = cl.generate(model, teacher, prompts, max_new_tokens=6, stop_at_eos=False, progress=False)
    return [(p, model.tokenizer.decode(ids[n:])) for p, ids, n in
            zip(prompts, res.token_ids, res.prompt_lengths)]


def test_step_zero_can_win_under_the_reference_protocol(tiny):
    """Training toward one teacher while validating on its opposite: only step 0 is good."""
    dirs = random_directions(tiny, seed=21)
    train = _teacher_pairs(tiny, dirs, 3.0, [p for p, _ in TRAIN])
    valid = _teacher_pairs(tiny, dirs, -3.0, [p for p, _ in VALID])
    st = cl.CLASSteerer(dirs)
    hist = cl.train(tiny, st, train, valid, epochs=4, progress=False, protocol="reference")
    first, *later = hist.valid_losses
    assert [v["step"] for v in hist.valid] == [0, 2, 4] and all(v > first for v in later)
    assert hist.steps[-1]["train_loss"] < hist.steps[0]["train_loss"]  # training did move
    assert hist.best_step == 0 and torch.count_nonzero(st.b) == 0
