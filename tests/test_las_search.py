"""LAS coefficient search: the bracketing search picks the full grid's coefficient."""

import math

import pytest
from conftest import random_directions

import clas_lens as cl
import clas_lens.training as training
from clas_lens.training import bracket_argmin, unimodal_around

PROMPTS = ["hello", "I love cats", "The weather is sunny", "Tell me about Paris", "cats and dogs"]
GRID = [0.25 * k for k in range(20)]


def teacher_pairs(model, las):
    """Greedy completions of the steered (or, with ``None``, unsteered) model."""
    res = cl.generate(model, las, PROMPTS, max_new_tokens=6, stop_at_eos=False)
    return [(p, model.tokenizer.decode(ids[n:])) for p, ids, n in
            zip(PROMPTS, res.token_ids, res.prompt_lengths)]


@pytest.mark.parametrize("planted", [None, 7])
def test_bracket_equals_full_grid(tiny, planted):
    """Completions of the unsteered model (optimum at c = 0), or of the model steered at
    c = grid[7] on a fine grid (an interior optimum; on the tiny model's flat logits it lands
    near index 2): the bracketing search picks the full grid's coefficient after at most 6
    evaluations, and the values it computed equal the full grid's."""
    dirs = random_directions(tiny, seed=31)
    grid = GRID if planted is None else [0.004 * k for k in range(20)]
    teacher = None if planted is None else cl.LASSteerer(dirs).set(grid[planted])
    pairs = teacher_pairs(tiny, teacher)
    full = cl.grid_search_las(tiny, cl.LASSteerer(dirs), pairs, grid, search="full", progress=False)
    las = cl.LASSteerer(dirs)
    fast = cl.grid_search_las(tiny, las, pairs, grid, progress=False)
    best_full = min(range(len(grid)), key=lambda i: full["nll"][i])
    if planted is None:
        assert best_full == 0
    else:
        assert 0 < best_full < len(grid) - 1  # an interior optimum: the search has to find it
    assert fast["search"] == "bracket" and full["search"] == "full"
    assert fast["best"] == full["best"] == grid[best_full]
    assert float(las.c.detach()) == pytest.approx(fast["best"], rel=1e-6)
    assert len(fast["evaluated"]) <= 6
    for i in fast["evaluated"]:
        assert fast["nll"][i] == pytest.approx(full["nll"][i], rel=1e-6)
    assert sum(math.isnan(x) for x in fast["nll"]) == len(grid) - len(fast["evaluated"])


@pytest.mark.parametrize("m", range(20))
def test_bracket_argmin_unimodal(m):
    """Every position of the minimum of a unimodal function over 20 indices, found in at
    most 6 calls (a wrong bracket update misses some positions)."""
    calls = []

    def f(i):
        calls.append(i)
        return abs(i - m) ** 1.5 + (0.3 if i > m else 0.0)

    best, seen = bracket_argmin(f, 20)
    assert best == m
    assert len(calls) == len(set(calls)) == len(seen) <= 6
    assert unimodal_around(seen, best)


def test_unimodal_around_detects_two_basins():
    assert not unimodal_around({0: 1.0, 3: 0.5, 6: 0.8, 9: 0.2}, 3)
    assert not unimodal_around({0: 1.0, 3: 0.5, 6: float("inf")}, 3)
    assert unimodal_around({0: 1.0, 3: 0.5, 6: 0.8, 9: 0.9}, 3)


def test_two_basins_fall_back_to_full_grid(tiny, monkeypatch):
    """A loss with a bump at index 6 and its global minimum at index 15: the bracket settles
    near index 7, but the values it computed are not unimodal (the bump), so every grid value
    is evaluated and the global minimum kept (without the check it would return GRID[7])."""
    table = [3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 2.0, 0.9, 1.2, 1.4, 1.6, 1.8, 2.0, 1.0, 0.5, 0.0, 0.6,
             1.0, 1.5, 2.0]

    def loss(model, steerer, pairs, **kw):
        return table[round(float(steerer.c.detach()) / 0.25)]

    monkeypatch.setattr(training, "completion_nll", loss)
    assert bracket_argmin(lambda i: table[i], 20)[0] == 7
    dirs = random_directions(tiny, seed=32)
    out = cl.grid_search_las(tiny, cl.LASSteerer(dirs), [("a", "b")], GRID, progress=False)
    assert out["search"] == "bracket+full"
    assert out["best"] == GRID[15]
    assert out["evaluated"] == list(range(len(GRID)))

def test_unsorted_grid_is_searched_fully(tiny, monkeypatch):
    monkeypatch.setattr(training, "completion_nll", lambda m, s, p, **kw: (float(s.c.detach()) - 1.0) ** 2)
    dirs = random_directions(tiny, seed=33)
    out = cl.grid_search_las(tiny, cl.LASSteerer(dirs), [("a", "b")], [2.0, 0.0, 1.0, 3.0],
                             progress=False)
    assert out["search"] == "full" and out["best"] == 1.0


def test_unknown_search_refused(tiny):
    with pytest.raises(ValueError, match="search must be one of"):
        cl.grid_search_las(tiny, cl.LASSteerer(random_directions(tiny)), [("a", "b")], [0.0],
                           search="golden", progress=False)

