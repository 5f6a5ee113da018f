"""Reliability (issue 7), training: no silent failure.

* a NaN or infinite loss stops training with a ``TrainingError`` naming the step and
  epoch; the steerer holds the best parameters found before it (never the NaN ones);
* ``KeyboardInterrupt`` during training returns a history marked ``interrupted``
  with the best parameters so far (during the epoch-0 evaluation, before anything was
  learned, it propagates and leaves the steerer untouched);
* no hooks stay on the model, its weights get no gradient, and a steerer holding
  NaN cannot be saved over a good file.
"""

import math

import pytest
import torch
from conftest import n_hooks, random_directions

import clas_lens as cl

TRAIN = [("hello", "world"), ("I love cats", "and dogs"), ("The weather is", "sunny"),
         ("Tell me about", "Paris"), ("world user", "hello")]
VALID = [("cats and dogs", "are great"), ("France is", "wonderful")]


class Poisoned(cl.CLASSteerer):
    """A CLAS steerer whose training forward passes turn non-finite from the ``at``-th on
    (or raise ``KeyboardInterrupt`` there); evaluation passes stay clean."""

    def __init__(self, directions, at: int, value=float("nan"), interrupt: bool = False,
                 in_eval: bool = False):
        super().__init__(directions)
        self.at, self.value, self.interrupt, self.in_eval = at, value, interrupt, in_eval
        self.calls = 0

    def edit(self, j, h, scale):
        new, alpha, proj = super().edit(j, h, scale)
        counting = torch.is_inference_mode_enabled() if self.in_eval else torch.is_grad_enabled()
        if counting and j == 0:
            self.calls += 1
            if self.calls >= self.at:
                if self.interrupt:
                    raise KeyboardInterrupt("poisoned forward")
                new = new * self.value
        return new, alpha, proj


def _train(model, steerer, valid=VALID, epochs=4, **kw):
    kw.setdefault("lr", {"W": 1e-2, "b": 0.3})
    return cl.train(model, steerer, TRAIN, valid, epochs=epochs, micro_batch_size=8,
                    progress=False, **kw)


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def dirs(tiny):
    return random_directions(tiny, seed=31)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("with_valid", [True, False])
def test_non_finite_loss_names_step_and_keeps_best(tiny, dirs, value, with_valid):
    valid = VALID if with_valid else None
    clean = cl.CLASSteerer(dirs)
    _train(tiny, clean, valid=valid, epochs=2)  # what the first 2 epochs give, cleanly
    grads = [p.requires_grad for p in tiny.parameters()]
    st = Poisoned(dirs, at=3, value=value)  # full batch, one forward per step: step 3
    with pytest.raises(cl.TrainingError, match=r"non-finite training loss \((nan|inf)\) at step 3 "
                                               r"\(epoch 3\); the best parameters found so far "
                                               r"were kept"):
        _train(tiny, st, valid=valid)
    assert _same_state(st, clean)
    assert all(torch.isfinite(p).all() for p in st.parameters())
    assert n_hooks(tiny) == 0
    assert [p.requires_grad for p in tiny.parameters()] == grads
    assert all(p.grad is None for p in tiny.parameters())


def test_nan_at_first_step_keeps_untrained_state(tiny, dirs):
    st = Poisoned(dirs, at=1)
    with pytest.raises(cl.TrainingError, match="at step 1 \\(epoch 1\\)"):
        _train(tiny, st)
    assert torch.count_nonzero(st.W) == 0 and torch.count_nonzero(st.b) == 0
    assert n_hooks(tiny) == 0


def test_diverging_learning_rate_is_caught(tiny, dirs):
    st = cl.CLASSteerer(dirs)
    with pytest.raises(cl.TrainingError, match=r"at step 2 \(epoch 2\)"):
        _train(tiny, st, lr=1e30)  # finite, but diverges after one step
    assert all(torch.isfinite(p).all() for p in st.parameters())
    assert n_hooks(tiny) == 0


def test_nothing_corrupt_is_written_after_a_failure(tiny, dirs, tmp_path):
    st = Poisoned(dirs, at=3)
    with pytest.raises(cl.TrainingError, match="non-finite training loss"):
        _train(tiny, st)
    st.save(tmp_path / "st")  # the kept (best) parameters are finite and save fine
    good = (tmp_path / "st" / "cfg.json").read_bytes()
    with torch.no_grad():
        st.W[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"saving .*st: tensor 'W' contains NaN or infinite"):
        st.save(tmp_path / "st")
    assert (tmp_path / "st" / "cfg.json").read_bytes() == good
    back = cl.load_steerer(tmp_path / "st", model=tiny)
    assert all(torch.isfinite(p).all() for p in back.parameters())
    assert [p.name for p in (tmp_path / "st").iterdir() if p.name.endswith(".tmp")] == []


def test_interrupt_in_a_training_forward_returns_best(tiny, dirs):
    clean = cl.CLASSteerer(dirs)
    _train(tiny, clean, epochs=2)
    st = Poisoned(dirs, at=3, interrupt=True)
    with pytest.warns(UserWarning, match="training interrupted at step 2; keeping the best"):
        hist = _train(tiny, st)
    assert hist.interrupted and len(hist.steps) == 2
    assert _same_state(st, clean)
    assert n_hooks(tiny) == 0


def test_interrupt_during_a_valid_evaluation_returns_best(tiny, dirs):
    # evaluation calls: epoch 0 -> 1, epoch 1 -> 2; interrupt the epoch-2 evaluation
    clean = cl.CLASSteerer(dirs)
    _train(tiny, clean, epochs=1)
    st = Poisoned(dirs, at=3, interrupt=True, in_eval=True)
    with pytest.warns(UserWarning, match="interrupted"):
        hist = _train(tiny, st)
    assert hist.interrupted and [v["epoch"] for v in hist.valid] == [0, 1]
    assert _same_state(st, clean)
    assert n_hooks(tiny) == 0


def test_interrupt_before_any_step_leaves_steerer_untouched(tiny, dirs):
    st = Poisoned(dirs, at=1, interrupt=True, in_eval=True)
    with pytest.raises(KeyboardInterrupt, match="poisoned forward"):
        _train(tiny, st)
    assert torch.count_nonzero(st.W) == 0 and torch.count_nonzero(st.b) == 0
    assert n_hooks(tiny) == 0


def test_bad_training_arguments(tiny, dirs):
    st = cl.CLASSteerer(dirs)
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        cl.train(tiny, st, TRAIN, epochs=-1, progress=False)
    with pytest.raises(ValueError, match="batch sizes and micro_batch_tokens must be >= 1"):
        cl.train(tiny, st, TRAIN, micro_batch_size=0, progress=False)
    with pytest.raises(TypeError, match="pair 1 is not a \\(prompt, completion\\) pair"):
        cl.train(tiny, st, [("a", "b"), ("only one",)], progress=False)
    with pytest.raises(TypeError, match="pair 0 is not"):
        cl.train(tiny, st, [("a", 3)], progress=False)
    assert n_hooks(tiny) == 0


# ---- settings and states that training refuses ------------------------------------

@pytest.mark.parametrize("lr", [-1.0, float("nan"), {"W": float("inf")}])
def test_learning_rates_validated(tiny, dirs, lr):
    """A negative or non-finite learning rate is refused."""
    with pytest.raises(ValueError, match="lr"):
        cl.train(tiny, cl.CLASSteerer(dirs), TRAIN, epochs=1, lr=lr, progress=False)


def test_non_finite_parameters_after_a_step(tiny, dirs, monkeypatch):
    """Non-finite parameters after an optimiser step (with a finite loss) stop training with
    a TrainingError naming the step; the best parameters before it are kept."""
    clean = cl.CLASSteerer(dirs)
    _train(tiny, clean, epochs=1)
    real, steps = torch.optim.AdamW.step, []

    def step(self, *a, **k):
        out = real(self, *a, **k)
        steps.append(1)
        if len(steps) == 2:  # the second step writes a NaN into the bias
            self.param_groups[-1]["params"][0].data[0, 0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    st = cl.CLASSteerer(dirs)
    with pytest.raises(cl.TrainingError, match=r"non-finite parameters after step 2 \(epoch 2\)"):
        _train(tiny, st)
    assert _same_state(st, clean)
    assert all(torch.isfinite(p).all() for p in st.parameters())
    assert n_hooks(tiny) == 0


def test_non_finite_valid_loss_is_reported(tiny, dirs):
    """A non-finite valid loss warns for each evaluation and is never selected: with every
    evaluation NaN, the steerer ends in its starting state and the best loss is NaN."""
    st = Poisoned(dirs, at=1, in_eval=True)
    with pytest.warns(UserWarning, match=r"valid loss is nan after step \d") as caught:
        hist = _train(tiny, st, epochs=2)
    assert [str(w.message) for w in caught if "valid loss" in str(w.message)] == [
        f"valid loss is nan after step {k}; that state is never kept" for k in range(3)]
    assert len(hist.steps) == 2 and hist.best_epoch == 0 and math.isnan(hist.best_valid_loss)
    assert torch.count_nonzero(st.W) == 0 and torch.count_nonzero(st.b) == 0
    assert n_hooks(tiny) == 0


def test_las_grid_non_finite(tiny, dirs):
    """grid_search_las refuses non-finite grid values."""
    with pytest.raises(ValueError, match=r"the LAS grid holds non-finite values \[nan\]"):
        cl.grid_search_las(tiny, cl.LASSteerer(dirs), TRAIN[:2], grid=[float("nan")],
                           progress=False)
