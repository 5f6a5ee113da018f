"""Shared helpers of the benchmarks: model and steerer set-up, interleaved timing, memory.

Every figure is a ratio against a baseline measured in the same process and run:
the variants are timed in interleaved rounds (A, B, A, B, ... with the order
alternating), the ratio is taken within each round, and the median over rounds
is reported. Two clocks are recorded per call: wall time (``perf_counter``) and
process CPU time (``process_time``, all threads). On a machine shared with other
jobs the CPU-time ratio is the steadier one; ``--clock`` chooses the headline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin at barriers burn the CPU other jobs (and our own second
# thread) need; with PASSIVE they sleep. Set before torch is imported, except in a run
# with the library's default threads (``--threads 0``), which runs as a user's process
# does: PASSIVE made a two-thread training step about as slow as a one-thread one.
USER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
LIBRARY_THREADS = os.environ.get("BENCH_THREADS") == "0" or "--threads=0" in sys.argv or any(
    a == "--threads" and b == "0" for a, b in zip(sys.argv, sys.argv[1:]))
if not LIBRARY_THREADS:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import clas_lens as cl  # noqa: E402
from clas_lens.directions import Directions  # noqa: E402
from clas_lens.model import model_info  # noqa: E402

try:
    import psutil
except ImportError:  # pragma: no cover
    psutil = None

CLOCK = os.environ.get("BENCH_CLOCK", "cpu")  # headline clock: "cpu" or "wall"
THREADS = int(os.environ.get("BENCH_THREADS", "1"))  # 0 = library defaults


def set_threads(n: int) -> None:
    """Intra-op threads of torch and of numpy's BLAS (``0`` leaves the defaults).

    The default is 1: on a machine shared with other jobs, a second OpenMP thread
    that is descheduled makes every small op wait a scheduler tick (a one-token
    decoding step took 2.5 s with 2 threads under load, 0.1 s with 1).
    """
    global THREADS, _POOL
    THREADS = int(n)
    if THREADS > 0:
        torch.set_num_threads(THREADS)
        try:
            from threadpoolctl import threadpool_limits
            _POOL = threadpool_limits(limits=THREADS)
        except ImportError:  # pragma: no cover
            pass


_POOL = None


# ---------------------------------------------------------------- set-up

_MODEL = {}


def get_model(dtype: str = "float32"):
    """The embedded SmolLM2-135M-Instruct, loaded once per process."""
    if dtype not in _MODEL:
        _MODEL[dtype] = cl.load_model(dtype=getattr(torch, dtype))
    return _MODEL[dtype]


def random_directions(model, seed: int = 0) -> Directions:
    """Random unit directions at every layer (timing does not depend on what they are)."""
    info = model_info(model)
    L, d = info["n_layers"], info["d_model"]
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(L, d, generator=g)
    v = v / v.norm(dim=-1, keepdim=True)
    return Directions(v, torch.ones(L), list(range(L)), "random", info["model_name"], L, d, "bench")


def clas_steerer(model, seed: int = 0) -> cl.CLASSteerer:
    """A CLAS steerer on all layers with small non-zero W and b (real arithmetic, sane outputs)."""
    st = cl.CLASSteerer(random_directions(model, seed))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        st.W.copy_(torch.randn(st.W.shape, generator=g) * 1e-3)
        st.b.fill_(0.05)
    return st


def random_ids(model, batch: int, pos: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, int(model.cfg.d_vocab) - 100, (batch, pos), generator=g)


def long_pairs(n: int, target_tokens: int, model, concept: str = "positive"):
    """``n`` (prompt, completion) pairs of about ``target_tokens`` tokens each, from the repo data."""
    _, steer = cl.load_concept(ROOT / "data" / concept)
    base = steer.train.pairs + steer.valid.pairs + steer.test.pairs
    tok = model.tokenizer
    out = []
    for i in range(n):
        prompt, comp = base[i % len(base)]
        pieces, k = [comp], 1
        while len(tok.encode(prompt + " " + " ".join(pieces))) + 30 < target_tokens:
            pieces.append(base[(i + k) % len(base)][1])
            k += 1
        text = " ".join(pieces)
        ids = tok.encode(text, add_special_tokens=False)
        n_prompt = len(cl.chat_ids(model, prompt))
        keep = max(1, target_tokens - n_prompt - 1)
        out.append((prompt, tok.decode(ids[:keep])))
    return out


def shaped_pairs(n: int, prompt_tokens: int, completion_tokens: int, model, concept: str = "positive"):
    """``n`` pairs whose chat-formatted prompt has about ``prompt_tokens`` tokens and whose
    completion has about ``completion_tokens`` (end-of-turn included), from the repo data.

    GSM8K's training rows average 136 prompt and 192 completion tokens on SmolLM2
    (the shape of the reference run)."""
    _, steer = cl.load_concept(ROOT / "data" / concept)
    base = steer.train.pairs + steer.valid.pairs + steer.test.pairs
    text = " ".join(p + " " + c for p, c in base)
    tok = model.tokenizer
    words = tok.encode(text, add_special_tokens=False)
    n_chat = len(cl.chat_ids(model, "x")) - 1
    out = []
    for i in range(n):
        start = (i * 37) % max(1, len(words) - prompt_tokens - completion_tokens)
        p_ids = words[start:start + max(1, prompt_tokens - n_chat)]
        c_ids = words[start + len(p_ids):start + len(p_ids) + max(1, completion_tokens - 1)]
        out.append((tok.decode(p_ids), tok.decode(c_ids)))
    return out


# ---------------------------------------------------------------- timing


def timed(fn):
    """Run ``fn()`` once; return ``(wall_s, cpu_s)``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def interleave(variants: dict, reps: int, warmup: int = 1) -> dict:
    """Time each variant ``reps`` times, interleaved (order alternates each round).

    Returns ``{name: {"wall": [...], "cpu": [...]}}``.
    """
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    out = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(reps):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            w, c = timed(variants[n])
            out[n]["wall"].append(w)
            out[n]["cpu"].append(c)
    return out


def ratio(times: dict, num: str, den: str, clock: str | None = None, scale=1.0) -> dict:
    """Median over rounds of ``num / den`` (``scale`` multiplies the denominator)."""
    res = {}
    for ck in ("wall", "cpu"):
        rs = [a / (b * scale) for a, b in zip(times[num][ck], times[den][ck]) if b > 0]
        res[ck] = statistics.median(rs) if rs else float("nan")
        res[ck + "_all"] = [round(x, 4) for x in rs]
    res["value"] = res[clock or CLOCK]
    return res


def med(xs):
    return statistics.median(xs) if xs else float("nan")


# ---------------------------------------------------------------- memory


def rss_mb() -> float:
    if psutil is not None:
        return psutil.Process().memory_info().rss / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def maxrss_mb() -> float:
    """``ru_maxrss``. Caution: Linux carries it over fork+exec, so a child started by a
    big parent reports at least the parent's RSS at the fork; see :func:`hwm_mb`."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def hwm_mb() -> float:
    """Peak resident set of this process image (``VmHWM``; reset by exec), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return maxrss_mb()


class PeakRSS:
    """Samples this process' RSS in a thread; ``peak`` is the highest seen in the block."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.peak, self._stop = interval, rss_mb(), threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def __enter__(self):
        self.start = rss_mb()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())


def param_bytes_fp32(model) -> int:
    seen, n = set(), 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        n += p.numel() * 4
    return n


# ---------------------------------------------------------------- output


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "torch": torch.__version__, "python": platform.python_version(),
            "loadavg_1m": round(load[0], 2)}


def parser(desc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=desc)
    p.add_argument("--reps", type=int, default=None, help="interleaved rounds")
    p.add_argument("--json", default=None, help="append one JSON line per run to this file")
    p.add_argument("--quick", action="store_true", help="small shapes (smoke test)")
    p.add_argument("--clock", choices=["cpu", "wall"], default=None, help="headline clock")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=THREADS,
                   help="torch/BLAS threads (default 1, or $BENCH_THREADS; 0 = library default)")
    return p


def setup_clock(args) -> None:
    global CLOCK
    if args.clock:
        CLOCK = args.clock
    set_threads(getattr(args, "threads", THREADS))


def emit(name: str, record: dict, json_path: str | None = None) -> dict:
    """Print a bench's figures and append them as one JSON line."""
    record = {"bench": name, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "clock": CLOCK, **record, "machine": machine()}
    short = {k: v for k, v in record.items() if not isinstance(v, (dict, list))}
    print(json.dumps(short))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        with open(json_path, "a") as f:
            f.write(json.dumps(record) + "\n")
    return record


def main(name: str, run, doc: str, argv=None, p: argparse.ArgumentParser | None = None) -> dict:
    """Parse the shared options (or ``p``), set clock and threads, run and emit one record."""
    args = (p or parser(doc.splitlines()[0])).parse_args(argv)
    setup_clock(args)
    return emit(name, run(args), args.json)
