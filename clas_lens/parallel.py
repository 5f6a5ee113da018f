"""Grids on Ray: a pool of actors that each load the model once and run tasks on it.

Benchmark cells and sweep layers are independent jobs. :class:`WorkerPool` starts ``n``
Ray actors (a local Ray instance, or an existing cluster given its address); each actor
builds its model once with ``load()`` and then runs jobs ``fn(model, *args)``. The driver
hands a job to an idle actor, collects results as they finish and is the only process
that writes files. An actor that dies during a job (killed, out of memory, a lost node)
is replaced by a fresh one, which loads its model again, and the job is run again from
the start; finished jobs are kept.

Ray is an optional dependency: ``pip install 'clas-lens[ray]'``.

Example:
    >>> from functools import partial                                  # doctest: +SKIP
    >>> with WorkerPool(partial(load_model, "gemma-3-270m"), 2) as pool:  # doctest: +SKIP
    ...     for key, result in pool.imap_unordered(jobs):
    ...         print(key, result)
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

RAY_INSTALL = "pip install 'clas-lens[ray]'"


def require_ray():
    """Import Ray, or explain how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ImportError(f"running on several workers needs Ray: {RAY_INSTALL}") from err
    return ray


def check_workers(workers) -> int:
    """Refuse a worker count that is not a positive integer (``bool`` included)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    return workers


def start_ray(workers: int, address: str | None = None, *, attempts: int = 3) -> None:
    """Join the cluster at ``address``, or start a local Ray instance with ``workers`` CPUs.

    A local start is tried ``attempts`` times: on a machine whose CPUs are all busy, Ray's
    own agents can miss the raylet's start-up deadline, and a second try usually succeeds.
    """
    ray = require_ray()
    if address is not None:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        return
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            return
        except Exception as err:  # Ray raises a bare Exception when the node misses its deadline
            if "timed out during startup" not in str(err) or attempt == attempts:
                raise
            ray.shutdown()
            tqdm.write(f"[parallel] local Ray instance did not start (try {attempt} of {attempts}): "
                       "retrying", file=sys.stderr)


class ModelWorker:
    """The body of a Ray actor: one model, loaded once, many jobs.

    Args:
        load: a picklable callable that returns the model (e.g.
            ``functools.partial(clas_lens.load_model, "gemma-3-270m")``).
        threads: torch threads inside this worker.
    """

    def __init__(self, load: Callable[[], Any], threads: int = 1):
        import torch

        torch.set_num_threads(int(threads))
        self.model = load()

    def pid(self) -> int:
        """The worker's process id."""
        return os.getpid()

    def run(self, fn: Callable, args: tuple, kwargs: dict):
        """``fn(model, *args, **kwargs)``."""
        return fn(self.model, *args, **kwargs)


@dataclass
class Job:
    """One unit of work: ``fn(model, *args, **kwargs)``, named by ``key``."""

    key: Any
    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


class WorkerPool:
    """``n`` Ray actors holding a model each; jobs go to whichever is free.

    Args:
        load: a picklable callable returning the model (run once per actor).
        workers: number of actors.
        address: an existing Ray cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``);
            ``None`` starts a local instance with ``workers`` CPUs (or joins the one this
            process already started).
        threads: torch threads per actor.
        max_replacements: actors replaced after dying before the pool gives up.
        progress: a tqdm bar over the jobs.

    Use it as a context manager: leaving the block kills the actors and stops a local
    Ray instance the pool started.
    """

    def __init__(self, load: Callable[[], Any], workers: int, *, address: str | None = None,
                 threads: int = 1, max_replacements: int = 8, progress: bool = True):
        self.load, self.n = load, check_workers(workers)
        self.address, self.threads = address, int(threads)
        self.max_replacements, self.progress = int(max_replacements), progress
        self.actors: list = []
        self.replaced: list[Any] = []  # keys of the jobs that were rerun after a worker died
        self.busy: dict[int, Any] = {}  # worker index -> key of the job it runs
        self._inflight: dict = {}
        self._started_ray = False

    # -- life cycle ------------------------------------------------------
    def __enter__(self) -> WorkerPool:
        ray = require_ray()
        if not ray.is_initialized():
            start_ray(self.n, self.address)
            self._started_ray = True
        self._actor_cls = ray.remote(num_cpus=1)(ModelWorker)
        self.actors = [self._new_actor() for _ in range(self.n)]
        return self

    def __exit__(self, *exc) -> None:
        ray = require_ray()
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # an actor that is already gone
                pass
        self.actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    def _new_actor(self):
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        return self._actor_cls.options(runtime_env={"env_vars": env}).remote(self.load, self.threads)

    def pids(self) -> list[int]:
        """Process ids of the current actors (waits until each has loaded its model)."""
        ray = require_ray()
        return ray.get([a.pid.remote() for a in self.actors])

    def running(self) -> dict[int, Any]:
        """Worker index -> key of the job it is running now (not yet finished)."""
        ray = require_ray()
        refs = list(self._inflight)
        if not refs:
            return {}
        _, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
        return {self._inflight[r][0]: self._inflight[r][1].key for r in pending}

    # -- running ---------------------------------------------------------
    def imap_unordered(self, jobs: Iterable[Job]) -> Iterator[tuple[Any, Any]]:
        """Run ``jobs``; yield ``(key, result)`` as each finishes.

        A job whose actor dies is rerun on a replacement actor. An exception raised by a
        job itself is raised here (the remaining jobs are abandoned).
        """
        ray = require_ray()
        queue = deque(jobs)
        total = len(queue)
        inflight: dict = {}  # ref -> (worker index, job)
        self._inflight = inflight
        idle = deque(range(len(self.actors)))
        bar = tqdm(total=total, desc="jobs", disable=not self.progress)
        try:
            while queue or inflight:
                while queue and idle:
                    i, job = idle.popleft(), queue.popleft()
                    ref = self.actors[i].run.remote(job.fn, tuple(job.args), dict(job.kwargs))
                    inflight[ref] = (i, job)
                    self.busy[i] = job.key
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                i, job = inflight.pop(ref)
                self.busy.pop(i, None)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    if getattr(err, "actor_init_failed", False):  # loading the model failed
                        raise RuntimeError(f"a worker could not load its model: {err}") from None
                    if len(self.replaced) >= self.max_replacements:
                        raise RuntimeError(f"{len(self.replaced)} workers died; giving up on "
                                           f"job {job.key!r}") from err
                    self.replaced.append(job.key)
                    tqdm.write(f"[parallel] worker {i} died during {job.key!r}: replaced, "
                               "job rerun", file=sys.stderr)
                    self.actors[i] = self._new_actor()
                    queue.appendleft(job)
                    idle.append(i)
                    continue
                except ray.exceptions.RayTaskError as err:
                    cause = err.as_instanceof_cause()
                    raise cause from None
                idle.append(i)
                bar.update(1)
                yield job.key, result
        finally:
            bar.close()
            for ref in inflight:
                ray.cancel(ref, force=True)

    def map(self, fn: Callable, arg_list: Sequence[tuple]) -> list:
        """``[fn(model, *args) for args in arg_list]``, run on the pool, in input order."""
        out: dict[int, Any] = {}
        for k, r in self.imap_unordered(Job(k, fn, tuple(a)) for k, a in enumerate(arg_list)):
            out[k] = r
        return [out[k] for k in range(len(arg_list))]


def run_map(load: Callable[[], Any], fn: Callable, arg_list: Sequence[tuple], *, workers: int,
            address: str | None = None, threads: int = 1, progress: bool = True) -> list:
    """Start a pool, :meth:`WorkerPool.map` ``fn`` over ``arg_list``, stop the pool."""
    t0 = time.perf_counter()
    with WorkerPool(load, workers, address=address, threads=threads, progress=progress) as pool:
        out = pool.map(fn, arg_list)
    if progress:
        tqdm.write(f"[parallel] {len(arg_list)} job(s) on {workers} worker(s) in "
                   f"{time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return out


__all__ = ["Job", "ModelWorker", "RAY_INSTALL", "WorkerPool", "check_workers", "require_ray",
           "run_map", "start_ray"]
