"""Benchmark cells on Ray workers (``clas-lens bench --workers N [--ray-address ADDR]``).

Each worker is a :class:`~clas_lens.parallel.WorkerPool` actor that loads the model once;
each (benchmark, method) cell is one job, :func:`bench_cell`, which reads the CSV, fits the
benchmark's probe directions (once per worker and benchmark, with the run's contrast choice
and seed: the directions the serial run fits) and runs :func:`clas_lens.bench.harness.run_cell`.
Results come back to the driver, which alone writes ``benchmarks.csv`` and
``generations.jsonl``, atomically, after every cell, with the serial run's resume keys.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clas_lens.parallel import Job, WorkerPool

#: directions fitted in this worker process: (csv, direction method, seed, model) -> (dirs, seconds)
_DIRECTIONS: dict[tuple, tuple] = {}

#: errors a cell records as an ``error`` row instead of stopping the run (as the serial loop)
CELL_ERRORS = (FloatingPointError, RuntimeError, ValueError)


@dataclass
class Cell:
    """A pending cell: where its data is, how to run it, and the row fields the driver adds."""

    csv: Path
    method: str
    settings: dict
    proto: dict
    key: tuple


def cell_directions(model, steer, csv: str | os.PathLike, settings: dict, direction_method: str,
                    seed: int):
    """The benchmark's probe directions, fitted once per worker process as the serial run
    fits them (the contrast of :func:`clas_lens.contrast.choose_contrast`); ``(dirs, seconds)``."""
    import clas_lens as cl
    from clas_lens.contrast import choose_contrast

    n_new = max(1, int(settings["max_new_tokens"]))
    key = (str(Path(csv).resolve()), direction_method, seed, n_new, str(model.cfg.model_name))
    if key not in _DIRECTIONS:
        t = time.perf_counter()
        contrast = choose_contrast(model, steer, max_new_tokens=n_new, progress=False)
        dirs = cl.fit_directions(model, contrast, method=direction_method, seed=seed,
                                 progress=False)
        _DIRECTIONS[key] = (dirs, time.perf_counter() - t)
    return _DIRECTIONS[key]


def bench_cell(model, csv: str | os.PathLike, method: str, settings: dict, direction_method: str,
               seed: int) -> tuple[dict, list[dict], float | None]:
    """One cell on a worker: ``(row, generations, direction_seconds)``; ``cell_seconds`` is in row."""
    import clas_lens as cl
    from clas_lens.bench.harness import DIRECTION_METHODS, run_cell

    steer = cl.SteerSet.from_reference_csv(csv)
    dirs, dir_seconds = (cell_directions(model, steer, csv, settings, direction_method, seed)
                         if method in DIRECTION_METHODS else (None, None))
    t = time.perf_counter()
    try:
        row, gens = run_cell(model, steer, method, settings, dirs=dirs, seed=seed, progress=False)
    except (cl.TrainingError, *CELL_ERRORS) as err:
        row, gens = {"status": "error", "error": f"{type(err).__name__}: {err}",
                     "test_nll": float("nan")}, []
    row["cell_seconds"] = time.perf_counter() - t
    return row, gens, dir_seconds


def default_loader(model_name: str) -> Callable[[], Any]:
    """A picklable loader of a model by name (the embedded models are known by theirs)."""
    from clas_lens.model import load_model

    return functools.partial(load_model, model_name)


def run_cells(cells: Sequence[Cell], record: Callable[[Cell, dict, list[dict], float | None], None],
              *, load: Callable[[], Any], workers: int, direction_method: str, seed: int,
              address: str | None = None, threads: int = 1, progress: bool = True,
              pool: WorkerPool | None = None) -> list:
    """Run ``cells`` on ``workers`` Ray actors; ``record(cell, row, gens, dir_seconds)`` on the
    driver as each finishes (in completion order).

    Args:
        cells: the cells left to run.
        record: the driver's writer (called once per finished cell).
        load: picklable model loader run once per actor.
        workers: number of actors.
        direction_method, seed: as in :func:`~clas_lens.bench.harness.run_benchmarks`.
        address: an existing Ray cluster to join (default: a local instance).
        threads: torch threads per actor.
        progress: progress bar over the cells.
        pool: an already started pool to use instead of starting one.

    Returns:
        The indices (in ``cells``) of the cells that were rerun because their worker died.
    """
    jobs = [Job(i, bench_cell, (str(c.csv), c.method, c.settings, direction_method, seed))
            for i, c in enumerate(cells)]
    if pool is not None:
        start = len(pool.replaced)
        for i, (row, gens, dsec) in pool.imap_unordered(jobs):
            record(cells[i], row, gens, dsec)
        return list(pool.replaced[start:])
    with WorkerPool(load, workers, address=address, threads=threads, progress=progress) as own:
        for i, (row, gens, dsec) in own.imap_unordered(jobs):
            record(cells[i], row, gens, dsec)
        return list(own.replaced)


__all__ = ["Cell", "bench_cell", "cell_directions", "default_loader", "run_cells"]
