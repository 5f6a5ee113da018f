"""Ray grids on a local Ray instance with the tiny model: a worker pool that loads the model
once per actor, replaces dead actors and reruns their job; benchmark cells and sweeps on
two workers give the serial run's numbers."""

import functools
import os
import signal
import sys

import pytest
import torch
from test_harness import write_reference_csv

import clas_lens as cl
from clas_lens.analysis.sweeps import cumulative_sweep_clas, layer_sweep_clas
from clas_lens.bench import harness
from clas_lens.bench.parallel import Cell, run_cells
from clas_lens.parallel import Job, WorkerPool, start_ray
from clas_lens.testing import make_tiny_model, random_directions

ray = pytest.importorskip("ray")
# the job functions below live in this test module, which Ray workers cannot import: ship them
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def prompt_logits(model, prompt: str, marker: str | None = None):
    """Last-token logits of ``prompt``; with ``marker``, the first attempt kills its worker."""
    if marker is not None and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    ids = torch.tensor([cl.chat_ids(model, prompt)])
    with torch.inference_mode():
        return model(ids)[0, -1], os.getpid()


def failing_job(model):
    raise KeyError("no such thing in the model")


@pytest.fixture(scope="module")
def loader(tmp_path_factory):
    return functools.partial(make_tiny_model, str(tmp_path_factory.mktemp("raytok")))


def start_ray_promptly(cpus: int, scratch) -> None:
    """Start a local Ray instance even when every CPU is busy.

    The raylet gives its helper agents 15 s to come up. Each agent imports ``ray``, which
    imports ``jsonschema``, which imports ``rfc3987_syntax`` when it is installed (the
    notebook extra brings it): that module builds a parser at import, about 2 s of CPU,
    enough to miss the deadline on a machine whose cores are shared with other jobs.
    Ray's processes never check IRI formats, so they get a stand-in that declines to load
    (jsonschema then skips that one format checker); this process is unaffected.
    """
    stub = scratch / "rfc3987_syntax"
    stub.mkdir(exist_ok=True)
    (stub / "__init__.py").write_text('raise ImportError("not loaded in Ray processes")\n')
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(scratch)] + ([old] if old else []))
    try:
        start_ray(cpus)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    """One local Ray instance for the module: room for the shared pool and one more."""
    start_ray_promptly(4, tmp_path_factory.mktemp("raystub"))
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(ray_instance, loader):
    with WorkerPool(loader, 2, progress=False) as p:
        yield p


def test_pool_results_equal_the_local_model(pool, loader):
    local = loader()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the same arithmetic, the same numbers
    prompts = ["hello", "I love cats", "The capital of France is Paris", "rain"]
    got = pool.map(prompt_logits, [(p,) for p in prompts])
    pids = {pid for _, pid in got}
    assert len(pids) == 2 and os.getpid() not in pids  # two actors did the work, not the driver
    try:
        for p, (logits, _) in zip(prompts, got):
            assert torch.equal(logits, prompt_logits(local, p)[0])
    finally:
        torch.set_num_threads(threads)


def test_a_worker_killed_during_a_job_is_replaced_and_the_job_rerun(pool, tmp_path):
    before = pool.pids()
    marker = str(tmp_path / "killed-once")
    jobs = [Job("a", prompt_logits, ("hello",)), Job("b", prompt_logits, ("I love cats", marker)),
            Job("c", prompt_logits, ("rain",))]
    got = dict(pool.imap_unordered(jobs))
    assert sorted(got) == ["a", "b", "c"] and os.path.exists(marker)
    assert pool.replaced == ["b"]
    after = pool.pids()
    dead = set(before) - set(after)
    assert len(dead) == 1 and len(after) == 2  # one actor replaced, the other kept
    assert got["b"][1] in after  # "b" ran again, to the end, on a live actor


def test_an_error_inside_a_job_reaches_the_driver(pool):
    with pytest.raises(KeyError, match="no such thing"):
        list(pool.imap_unordered([Job("x", failing_job)]))


def broken_loader():
    raise FileNotFoundError("no weights here")


def test_a_model_that_cannot_load_is_reported_not_retried(ray_instance):
    with WorkerPool(broken_loader, 1, progress=False) as p:
        with pytest.raises(RuntimeError, match="could not load its model(.|\n)*no weights here"):
            p.map(prompt_logits, [("hello",)])
        assert p.replaced == []


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        WorkerPool(lambda: None, 0)


# ---- benchmark cells --------------------------------------------------------------------

METHODS = ["base_prompt", "las", "clas", "lora"]
#: columns that differ between runs by nature (timings)
TIMING = {"train_seconds", "eval_seconds", "cell_seconds", "direction_seconds"}


def same_rows(a, b):
    """The same cells with the same values (timings aside), in any order."""
    a, b = (sorted(rows, key=lambda r: (r["benchmark"], r["method"])) for rows in (a, b))
    assert [(r["benchmark"], r["method"]) for r in a] == [(r["benchmark"], r["method"]) for r in b]
    for x, y in zip(a, b):
        assert x["status"] == "ok", x.get("error")
        diff = {k for k in set(x) | set(y) if k not in TIMING and x.get(k) != y.get(k)}
        assert not diff, {k: (x.get(k), y.get(k)) for k in diff}


@pytest.fixture(scope="module")
def serial_run(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("raybench")
    csv_path = write_reference_csv(tmp / "JailbreakBench_SteerDataset.csv")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: the same arithmetic, the same numbers
    try:
        rows = harness.run_benchmarks([csv_path], out=tmp / "serial", quick=True, model=tiny,
                                      methods=METHODS, progress=False, figure="")
    finally:
        torch.set_num_threads(threads)
    return csv_path, rows


def test_two_workers_write_the_serial_rows(serial_run, ray_instance, tiny, loader, tmp_path):
    csv_path, serial = serial_run
    rows = harness.run_benchmarks([csv_path], out=tmp_path, quick=True, model=tiny, methods=METHODS,
                                  progress=False, figure="", workers=2, load=loader)
    same_rows(serial, rows)
    same_rows(serial, harness.read_results(tmp_path / "benchmarks.csv"))
    again = harness.run_benchmarks([csv_path], out=tmp_path, quick=True, model=tiny,
                                   methods=METHODS, progress=False, figure="", workers=2,
                                   load=lambda: pytest.fail("resumed run started workers"))
    same_rows(rows, again)


def test_cell_of_a_killed_worker_is_rerun_and_finished_cells_kept(serial_run, pool):
    csv_path, serial = serial_run
    settings = {**harness.resolve_settings(True), "repetition_penalty": harness.REPETITION_PENALTY,
                "n_test": 4}
    cells = [Cell(csv_path, m, settings, {"method": m}, (m,)) for m in METHODS]
    pids = pool.pids()
    got, killed = {}, []

    def record(cell, row, gens, dir_seconds):
        assert cell.method not in got  # a finished cell is never run again
        got[cell.method] = row
        running = pool.running()
        if not killed and running:
            i, key = next(iter(running.items()))
            killed.append(key)
            os.kill(pids[i], signal.SIGKILL)

    replaced = run_cells(cells, record, load=None, workers=2, direction_method="rfm", seed=0,
                         pool=pool)
    assert killed and replaced == [killed[0]]
    assert sorted(got) == sorted(METHODS)
    by = {r["method"]: r for r in serial}
    for m in METHODS:
        assert got[m]["test_nll"] == by[m]["test_nll"], m


# ---- sweeps -------------------------------------------------------------------------------

def test_sweeps_on_two_workers_equal_the_serial_sweeps(ray_instance, tiny, loader):
    _, pairs = cl.load_concept("data/positive")
    train, valid = pairs.train.pairs[:3], pairs.valid.pairs[:2]
    dirs = random_directions(tiny, seed=5)
    kw = dict(epochs=2, max_completion_tokens=16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = layer_sweep_clas(tiny, dirs, train, valid, **kw)
        cumulative = cumulative_sweep_clas(tiny, dirs, train, valid, ks=[1, 3], **kw)
    finally:
        torch.set_num_threads(threads)
    assert float((serial.nll - serial.baseline).abs().max()) > 0  # training moved something
    par = layer_sweep_clas(tiny, dirs, train, valid, workers=2, load=loader, **kw)
    assert torch.equal(par.nll, serial.nll) and par.meta["best_epoch"] == serial.meta["best_epoch"]
    cum = cumulative_sweep_clas(tiny, dirs, train, valid, ks=[1, 3], workers=2, load=loader, **kw)
    assert torch.equal(cum.nll, cumulative.nll)
