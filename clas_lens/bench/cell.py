"""One benchmark cell: fit a steering method on the train/valid rows, score the test rows.

Methods (:data:`STEERING_METHODS`):

* ``base_prompt``   - the unsteered model on the prompt ``x``;
* ``steer_prompt``  - the unsteered model on the steer-template prompt (the behaviour
  asked for in words); its NLL is that of the target ``y`` given that prompt;
* ``las``           - :class:`~clas_lens.steerers.LASSteerer`, one coefficient for all
  layers, chosen by completion NLL on the TRAIN pairs over the scale-aware grid of
  :func:`clas_lens.training.las_grid` (searched with :func:`clas_lens.training.grid_search_las`);
* ``las_layerwise``, ``clas``, ``reft``, ``lora`` - trained with
  :func:`clas_lens.training.train` on the train pairs, checkpoint chosen on the valid pairs.

Scoring (:mod:`clas_lens.bench.scoring`): the completion NLL of every scored test row, and
greedy generations for the first ``gen_rows`` of them with their metrics. The unsteered
results are computed once per benchmark (:class:`~clas_lens.bench.shared.BenchmarkWork`)
and reused by ``base_prompt`` and by any method whose fitted steerer is the identity.

Example:
    >>> settings = {"n_test": 2, "gen_rows": 1, "max_new_tokens": 2,
    ...             "max_completion_tokens": 8, "epochs": 1, "las_grid_size": 3,
    ...             "protocol": "clas_lens", "repetition_penalty": 1.0}
    >>> row, records = run_cell(model, pairs, "base_prompt", settings, progress=False)
    >>> row["n_test"], len(records), records[0]["text"] is not None, records[1]["text"]
    (2, 2, True, None)
"""

from __future__ import annotations

import time

import torch

from clas_lens.bench import scoring

STEERING_METHODS = ("base_prompt", "steer_prompt", "las", "las_layerwise", "clas", "reft", "lora")
DIRECTION_METHODS = ("las", "las_layerwise", "clas")
TRAINED = ("las_layerwise", "clas", "reft", "lora")

#: errors a cell records as an ``error`` row instead of stopping the run (training errors
#: are ``RuntimeError``)
CELL_ERRORS = (FloatingPointError, RuntimeError, ValueError)


def by_length(model, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Pairs sorted by token length: fewer pad tokens per batch (the mean is unchanged)."""
    from clas_lens.model import chat_ids, completion_ids

    return sorted(pairs, key=lambda p: len(chat_ids(model, p[0])) + len(completion_ids(model, p[1])))


def target_pairs(prompts, steer, end_of_turn: str) -> list[tuple[str, str]]:
    """``(prompt, target)`` pairs; under the ``"marker"`` rule a target ends with
    ``<|eot_id|>`` where the CSV's did, so that the rule can follow the marker."""
    from clas_lens.data import LLAMA_EOT

    if end_of_turn != "marker":
        return list(zip(prompts, steer.completions))
    return [(p, c + LLAMA_EOT if m else c)
            for p, c, m in zip(prompts, steer.completions, steer.end_of_turn_marks())]


def test_rows(steer, settings: dict):
    """The scored test rows (a SteerSet) and their row indices in the CSV."""
    test = steer.test
    idx = [i for i, s in enumerate(steer.splits) if s == "test"]
    if settings.get("n_test") is not None:
        test = test.subset(range(min(int(settings["n_test"]), len(test))))
        idx = idx[: len(test)]
    return test, idx


def _fit_las(model, dirs, train_pairs, valid_pairs, settings: dict, nll_kw: dict, progress: bool,
             before: float):
    """LAS: one coefficient chosen on the train pairs' NLL over the scale-aware grid
    (``before``: the unsteered valid loss, also the loss after when ``c = 0`` is chosen)."""
    import clas_lens as cl
    from clas_lens.training import las_grid

    steerer = cl.LASSteerer(dirs)
    grid = las_grid(model, steerer, train_pairs, n=int(settings["las_grid_size"]))
    res = cl.grid_search_las(model, steerer, train_pairs, grid, progress=progress, **nll_kw)
    after = (before if steerer.is_identity()
             else cl.completion_nll(model, steerer, valid_pairs, **nll_kw))
    return steerer, {"las_c": res["best"], "valid_loss_before": before, "valid_loss_after": after,
                     "las_grid": f"linspace(0, {grid[-1]:.4g}, {len(grid)}) on train NLL",
                     "las_search": res.get("search")}


def _fit_trained(model, method: str, dirs, train_pairs, valid_pairs, settings: dict, seed: int,
                 progress: bool, before: float):
    """``las_layerwise``, ``clas``, ``reft``, ``lora``: trained, checkpoint chosen on valid
    (``before``: the unsteered valid loss, the step-0 loss of a steerer that starts as the
    identity)."""
    import clas_lens as cl

    steerer = {"las_layerwise": lambda: cl.LayerwiseLASSteerer(dirs),
               "clas": lambda: cl.CLASSteerer(dirs),
               "reft": lambda: cl.ReFTSteerer(model, seed=seed),
               "lora": lambda: cl.LoRASteerer(model, seed=seed)}[method]()
    hist = cl.train(model, steerer, train_pairs, valid_pairs, seed=seed,
                    epochs=int(settings["epochs"]), protocol=settings["protocol"],
                    max_completion_tokens=settings["max_completion_tokens"], progress=progress,
                    unsteered_valid_loss=before)
    if hist.interrupted:
        raise KeyboardInterrupt
    return steerer, {"best_epoch": hist.best_epoch, "valid_loss_before": hist.valid_losses[0],
                     "valid_loss_after": hist.best_valid_loss}


def score_rows(model, steerer, steer, method: str, prompts, test, idx, settings: dict) -> list[dict]:
    """Per-row records of one steerer (``None``: unsteered) on the scored test rows."""
    from clas_lens.training import resolve_protocol

    rule = resolve_protocol(settings.get("protocol"))["end_of_turn"]
    nlls = scoring.row_nlls(model, steerer, target_pairs(prompts, test, rule),
                            max_completion_tokens=settings["max_completion_tokens"],
                            end_of_turn=rule)
    n_gen = len(prompts) if settings.get("gen_rows") is None else min(int(settings["gen_rows"]),
                                                                      len(prompts))
    csv_rows = [steer.rows[i] if steer.rows else {} for i in idx]
    gens = scoring.generate_rows(model, steerer, steer.name, prompts[:n_gen],
                                 list(test.completions)[:n_gen], csv_rows[:n_gen],
                                 max_new_tokens=int(settings["max_new_tokens"]),
                                 repetition_penalty=settings.get("repetition_penalty"))
    return scoring.row_records(steer.name, method, idx, [r.get("id", i) for r, i in zip(csv_rows, idx)],
                               nlls, gens)


def run_cell(model, steer, method: str, settings: dict, *, dirs=None, seed: int = 0,
             progress: bool = True, work=None) -> tuple[dict, list[dict]]:
    """Run one (benchmark, method) cell; returns its summary row and its per-row records.

    Args:
        model: the model.
        steer: the benchmark's :class:`~clas_lens.data.SteerSet`.
        method: one of :data:`STEERING_METHODS`.
        settings: as from :func:`clas_lens.bench.harness.resolve_settings`, with the
            benchmark's ``max_new_tokens`` resolved.
        dirs: the benchmark's probe directions (``las``, ``las_layerwise``, ``clas``).
        seed: seed of the steerer and of training.
        progress: progress bars.
        work: the benchmark's :class:`~clas_lens.bench.shared.BenchmarkWork`, whose
            unsteered results are reused (default: computed here when needed).
    """
    from clas_lens.training import resolve_protocol

    if method not in STEERING_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(STEERING_METHODS)}")
    if method in DIRECTION_METHODS and dirs is None:
        raise ValueError(f"method {method!r} needs the benchmark's probe directions (dirs=)")
    rule = resolve_protocol(settings.get("protocol"))["end_of_turn"]
    nll_kw = {"max_completion_tokens": settings["max_completion_tokens"], "end_of_turn": rule}
    test, idx = test_rows(steer, settings)
    prompts = ([steer.steer_prompts()[i] for i in idx] if method == "steer_prompt"
               else list(test.prompts))
    row: dict = {"benchmark": steer.name, "method": method}
    torch.manual_seed(seed)
    steerer = None
    t0 = time.perf_counter()
    if method == "las" or method in TRAINED:
        train_pairs = by_length(model, target_pairs(steer.train.prompts, steer.train, rule))
        valid_pairs = by_length(model, target_pairs(steer.valid.prompts, steer.valid, rule))

        def valid_loss():
            from clas_lens.losses import completion_nll

            return {"valid_loss": completion_nll(model, None, valid_pairs, **nll_kw)}

        before = (work.unsteered_valid(model, valid_loss) if work is not None
                  else valid_loss())["valid_loss"]
        steerer, fitted = (
            _fit_las(model, dirs, train_pairs, valid_pairs, settings, nll_kw, progress, before)
            if method == "las" else
            _fit_trained(model, method, dirs, train_pairs, valid_pairs, settings, seed, progress,
                         before))
        row.update(fitted)
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    identity = method != "steer_prompt" and (steerer is None or steerer.is_identity())
    if identity:
        def compute():
            return {"records": score_rows(model, None, steer, "base_prompt", prompts, test, idx,
                                          settings)}

        base = work.unsteered(model, compute)["records"] if work is not None else compute()["records"]
        records = [{**r, "method": method, "strength_mean_abs": None, "strength_max_abs": None}
                   if steerer is None or not steerer.records_strength
                   else {**r, "method": method,
                         "strength_mean_abs": 0.0 if r.get("text") is not None else None,
                         "strength_max_abs": 0.0 if r.get("text") is not None else None}
                   for r in base]
    else:
        records = score_rows(model, steerer, steer, method, prompts, test, idx, settings)
    row.update(scoring.summarize(records, steer.name))
    row.update(
        status="ok", n_test=len(prompts), reused_unsteered=int(identity and steerer is not None),
        train_seconds=train_seconds if steerer is not None else 0.0,
        eval_seconds=time.perf_counter() - t1,
        n_params=int(sum(p.numel() for p in steerer.parameters() if p.requires_grad))
        if steerer is not None else 0,
    )
    if method in DIRECTION_METHODS:
        row["direction_acc_mean"] = float(dirs.accuracy.mean())
        row["contrast"] = dirs.fit.contrast if dirs.fit is not None else None
    return row, records


def guarded_cell(model, steer, method: str, settings: dict, work, *, seed: int = 0,
                 progress: bool = True) -> tuple[dict, list[dict], float | None]:
    """:func:`run_cell` with the benchmark's directions, timed; an error becomes a row.

    Used by the serial loop and by the Ray workers alike.

    Args:
        model, steer, method, settings, seed, progress: as in :func:`run_cell`.
        work: the benchmark's :class:`~clas_lens.bench.shared.BenchmarkWork` (directions and
            unsteered results, computed once).

    Returns:
        ``(row, records, direction_seconds)``: ``row`` has ``cell_seconds``; a cell that
        raised one of :data:`CELL_ERRORS` (a :class:`~clas_lens.training.TrainingError` is a
        ``RuntimeError``) has ``status="error"``, the error's text, a NaN ``test_nll`` and
        no records; ``direction_seconds`` is ``None`` for a method without directions.
    """
    dirs, dir_seconds = (work.directions(model, progress=progress)
                         if method in DIRECTION_METHODS else (None, None))
    t = time.perf_counter()
    try:
        row, records = run_cell(model, steer, method, settings, dirs=dirs, seed=seed,
                                progress=progress, work=work)
    except CELL_ERRORS as err:
        row, records = {"status": "error", "error": f"{type(err).__name__}: {err}",
                        "test_nll": float("nan")}, []
    row["cell_seconds"] = time.perf_counter() - t
    return row, records, dir_seconds


__all__ = ["CELL_ERRORS", "DIRECTION_METHODS", "STEERING_METHODS", "TRAINED", "by_length",
           "guarded_cell", "run_cell", "score_rows", "target_pairs", "test_rows"]
