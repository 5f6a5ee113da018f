"""Benchmark cells on Ray workers (``clas-lens bench --workers N [--ray-address ADDR]``).

Each worker is a :class:`~clas_lens.parallel.WorkerPool` actor that loads the model once;
each (benchmark, method) cell is one job, :func:`bench_cell`, which reads the CSV and runs
:func:`clas_lens.bench.cell.run_cell` with the benchmark's shared work
(:class:`~clas_lens.bench.shared.BenchmarkWork`: probe directions and unsteered results,
computed once and kept in the run's ``cache/`` folder, so workers on one machine share them;
each worker process also keeps them in memory). Results come back to the driver, which alone
writes ``benchmarks.csv`` and ``records.jsonl``, atomically, after every cell, with the serial
run's resume keys.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clas_lens.parallel import Job, WorkerPool

#: shared work of the benchmarks seen in this worker process, by (csv, cache, settings)
_WORK: dict[tuple, object] = {}


@dataclass
class Cell:
    """A pending cell: where its data is, how to run it, and the row fields the driver adds."""

    csv: Path
    method: str
    settings: dict
    proto: dict
    key: tuple
    cache: str | None = None


def cell_work(steer, csv: str | os.PathLike, settings: dict, direction_method: str, seed: int,
              cache: str | os.PathLike | None):
    """The benchmark's :class:`~clas_lens.bench.shared.BenchmarkWork`, one per worker process
    and benchmark, kept on disk under ``cache`` (the run's ``cache/`` folder) when given."""
    from clas_lens.bench.shared import BenchmarkWork, settings_hash

    path = Path(csv)
    key = (str(path.resolve()), str(cache), direction_method, seed, settings_hash(settings))
    if key not in _WORK:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        folder = None if cache is None else Path(cache) / steer.name
        _WORK[key] = BenchmarkWork(steer, settings, data_sha256=sha, folder=folder,
                                   direction_method=direction_method, seed=seed)
    return _WORK[key]


def bench_cell(model, csv: str | os.PathLike, method: str, settings: dict, direction_method: str,
               seed: int, cache: str | None = None) -> tuple[dict, list[dict], float | None]:
    """One cell on a worker: ``(row, records, direction_seconds)``; ``cell_seconds`` is in row."""
    import clas_lens as cl
    from clas_lens.bench.cell import guarded_cell

    steer = cl.SteerSet.from_reference_csv(csv)
    work = cell_work(steer, csv, settings, direction_method, seed, cache)
    return guarded_cell(model, steer, method, settings, work, seed=seed, progress=False)


def default_loader(model_name: str) -> Callable[[], Any]:
    """A picklable loader of a model by name (the embedded models are known by theirs)."""
    from clas_lens.model import load_model

    return functools.partial(load_model, model_name)


def run_cells(cells: Sequence[Cell], record: Callable[[Cell, dict, list[dict], float | None], None],
              *, load: Callable[[], Any], workers: int, direction_method: str, seed: int,
              address: str | None = None, threads: int = 1, progress: bool = True,
              pool: WorkerPool | None = None) -> list:
    """Run ``cells`` on ``workers`` Ray actors; ``record(cell, row, records, dir_seconds)`` on the
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
    jobs = [Job(i, bench_cell, (str(c.csv), c.method, c.settings, direction_method, seed, c.cache))
            for i, c in enumerate(cells)]
    if pool is not None:
        start = len(pool.replaced)
        for i, (row, records, dsec) in pool.imap_unordered(jobs):
            record(cells[i], row, records, dsec)
        return list(pool.replaced[start:])
    with WorkerPool(load, workers, address=address, threads=threads, progress=progress) as own:
        for i, (row, records, dsec) in own.imap_unordered(jobs):
            record(cells[i], row, records, dsec)
        return list(own.replaced)


__all__ = ["Cell", "bench_cell", "cell_work", "default_loader", "run_cells"]
