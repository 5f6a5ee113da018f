"""Training: completion-only loss, frozen model, selection, determinism, failures."""

import pytest
import torch
from conftest import n_hooks, random_directions, randomize

import clas_lens as cl
from clas_lens import training
from clas_lens.losses import collate, encode_pairs


@pytest.fixture(scope="module")
def task(tiny):
    """Pairs whose completions are a steered teacher's greedy text (b = 3). On the random
    byte-level tiny model that text decodes to the same run of replacement characters for
    every prompt: one target that steering can learn, and the opposite teacher never writes."""
    dirs = random_directions(tiny, seed=21)
    teacher = randomize(cl.CLASSteerer(dirs), seed=22, scale=0.0)
    with torch.no_grad():
        teacher.b.fill_(3.0)
    prompts = ["hello", "I love cats", "The weather is sunny", "Tell me about Paris",
               "world user", "Describe a rainy morning", "cats and dogs", "France is great"]
    res = cl.generate(tiny, teacher, prompts, max_new_tokens=6, stop_at_eos=False)
    pairs = [(p, tiny.tokenizer.decode(ids[n:])) for p, ids, n in
             zip(prompts, res.token_ids, res.prompt_lengths)]
    return dirs, pairs[:5], pairs[5:]


@pytest.fixture(scope="module")
def anti_valid(tiny, task):
    """Valid pairs from the opposite teacher (b = -3): training on ``task`` makes them worse."""
    dirs, _, va = task
    anti = cl.CLASSteerer(dirs)
    with torch.no_grad():
        anti.b.fill_(-3.0)
    prompts = [p for p, _ in va]
    res = cl.generate(tiny, anti, prompts, max_new_tokens=6, stop_at_eos=False)
    return [(p, tiny.tokenizer.decode(ids[n:])) for p, ids, n in
            zip(prompts, res.token_ids, res.prompt_lengths)]


def test_labels_cover_completion_only(tiny):
    enc = encode_pairs(tiny, [("hello", "world"), ("The capital of France", "Paris!")])
    ids, mask, labels = collate(enc, 1, "cpu")
    for i, (seq, n) in enumerate(enc):
        assert torch.all(labels[i, :n] == -100)
        assert labels[i, n:len(seq)].tolist() == seq[n:]
        assert torch.all(labels[i, len(seq):] == -100)
        assert seq[-1] == tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_training_lowers_valid_loss_and_freezes_model(tiny, task):
    dirs, tr, va = task
    weights = {k: v.clone() for k, v in tiny.state_dict().items()}
    st = cl.CLASSteerer(dirs)
    hist = cl.train(tiny, st, tr, va, epochs=8, lr={"W": 1e-2, "b": 0.3}, progress=False)
    assert hist.best_valid_loss < hist.valid_losses[0] - 0.05
    assert min(hist.valid_losses) == pytest.approx(hist.best_valid_loss)
    assert cl.completion_nll(tiny, st, va) == pytest.approx(hist.best_valid_loss, rel=1e-5)
    after = tiny.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert all(p.grad is None for p in tiny.parameters())
    assert n_hooks(tiny) == 0
    assert len(hist.steps) == 8 and "norm_W" in hist.steps[0]


def test_training_is_deterministic(tiny, task):
    dirs, tr, va = task
    a, b = cl.CLASSteerer(dirs), cl.CLASSteerer(dirs)
    cl.train(tiny, a, tr, va, epochs=3, batch_size=2, progress=False)
    cl.train(tiny, b, tr, va, epochs=3, batch_size=2, progress=False)
    assert torch.equal(a.W, b.W) and torch.equal(a.b, b.b)


def test_untrained_state_can_win(tiny, task, anti_valid):
    """When every epoch makes the valid loss worse, the untrained (zero) state is kept."""
    dirs, tr, _ = task
    st = cl.CLASSteerer(dirs)
    hist = cl.train(tiny, st, tr, anti_valid, epochs=3, progress=False)
    first, *later = hist.valid_losses
    assert len(later) == 3 and all(v > first + 1e-3 for v in later)  # the steerer did move
    assert hist.steps[-1]["train_loss"] < hist.steps[0]["train_loss"] - 0.05
    assert hist.best_epoch == 0 and hist.best_valid_loss == first
    assert torch.count_nonzero(st.W) == 0 and torch.count_nonzero(st.b) == 0
    assert cl.completion_nll(tiny, st, anti_valid) == pytest.approx(
        cl.completion_nll(tiny, None, anti_valid), abs=1e-6)


@pytest.mark.parametrize("kind", ["clas", "las_layerwise", "reft", "lora"])
def test_identity_start_reuses_the_unsteered_valid_loss(tiny, task, kind, monkeypatch):
    """A steerer that starts as the identity records the unsteered valid loss at step 0
    instead of evaluating again; that loss is bit for bit what the evaluation gives."""
    dirs, tr, va = task
    make = {"clas": lambda: cl.CLASSteerer(dirs), "las_layerwise": lambda: cl.LayerwiseLASSteerer(dirs),
            "reft": lambda: cl.ReFTSteerer(tiny, seed=1), "lora": lambda: cl.LoRASteerer(tiny, seed=1)}
    unsteered = cl.completion_nll(tiny, None, va)
    evaluated = cl.train(tiny, make[kind](), tr, va, epochs=1, progress=False)
    assert evaluated.valid_losses[0] == unsteered
    calls = []
    real = training.completion_nll
    monkeypatch.setattr(training, "completion_nll", lambda *a, **k: calls.append(1) or real(*a, **k))
    shared = cl.train(tiny, make[kind](), tr, va, epochs=1, progress=False,
                      unsteered_valid_loss=unsteered)
    assert len(calls) == 1  # the step-1 evaluation only
    assert shared.valid_losses == evaluated.valid_losses


def test_known_unsteered_loss_is_ignored_for_a_steerer_that_is_not_the_identity(tiny, task):
    dirs, tr, va = task
    st = cl.CLASSteerer(dirs)
    with torch.no_grad():
        st.b.fill_(0.5)
    hist = cl.train(tiny, st, tr, va, epochs=0, progress=False, unsteered_valid_loss=123.0)
    assert hist.valid_losses == [cl.completion_nll(tiny, st, va)]


@pytest.mark.parametrize("kind,lr", [("las", None), ("las_layerwise", None), ("reft", None),
                                     ("lora", 3e-2)])
def test_baselines_train(tiny, task, kind, lr):
    """Every trainable baseline lowers the valid loss on the teacher task (a baseline whose
    gradients never reach its parameters keeps the epoch-0 loss and fails here)."""
    dirs, tr, va = task
    st = {"las": lambda: cl.LASSteerer(dirs), "las_layerwise": lambda: cl.LayerwiseLASSteerer(dirs),
          "reft": lambda: cl.ReFTSteerer(tiny), "lora": lambda: cl.LoRASteerer(tiny)}[kind]()
    hist = cl.train(tiny, st, tr, va, epochs=3, lr=lr, progress=False)
    assert hist.best_valid_loss < hist.valid_losses[0] - 0.02, hist.valid_losses
    assert hist.best_epoch >= 1
    assert cl.completion_nll(tiny, st, va) == pytest.approx(hist.best_valid_loss, rel=1e-5)
    assert n_hooks(tiny) == 0


def test_las_grid_search_picks_lowest(tiny, task):
    dirs, tr, _ = task
    grid = [-1.0, 0.5, 1.0, 2.0]  # no 0: the chosen value differs from the starting c = 0
    las = cl.LASSteerer(dirs)
    # the full search scores every grid value (the bracketing search is in test_las_search.py)
    out = cl.grid_search_las(tiny, las, tr, grid=grid, progress=False, search="full")
    by_hand = [cl.completion_nll(tiny, cl.LASSteerer(dirs).set(c), tr) for c in grid]
    assert out["grid"] == grid and out["nll"] == pytest.approx(by_hand, abs=1e-6)
    assert out["search"] == "full"
    best = grid[by_hand.index(min(by_hand))]
    assert out["best"] == best and float(las.c.detach()) == best


def test_nan_loss_stops_with_step_and_keeps_best(tiny, task):
    dirs, tr, va = task
    st = cl.CLASSteerer(dirs)
    with torch.no_grad():
        st.b.fill_(0.01)
    good = {k: v.clone() for k, v in st.state_dict().items()}
    poison = ("blocks.1.hook_resid_post", lambda h, hook=None: h * float("nan"))
    with pytest.raises(cl.TrainingError, match="step 1"), tiny.hooks(fwd_hooks=[poison]):
        cl.train(tiny, st, tr, epochs=2, progress=False)
    assert torch.equal(st.W, good["W"]) and torch.equal(st.b, good["b"])
    assert n_hooks(tiny) == 0


def test_keyboard_interrupt_keeps_best(tiny, task, monkeypatch):
    dirs, tr, va = task
    st = cl.CLASSteerer(dirs)
    calls = {"n": 0}
    orig = torch.optim.AdamW.step

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return orig(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.warns(UserWarning, match="interrupted"):
        hist = cl.train(tiny, st, tr, va, epochs=4, progress=False)
    assert hist.interrupted
    assert cl.completion_nll(tiny, st, va) == pytest.approx(hist.best_valid_loss, rel=1e-5)
    assert n_hooks(tiny) == 0
