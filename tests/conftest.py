"""Shared fixtures: a tiny random-initialised Llama booted into a TransformerBridge
(fast, exact checks) and the embedded SmolLM2-135M-Instruct (loaded once)."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", category=UserWarning)

from chat_server import ChatServer  # noqa: E402

from clas_lens.bench.judge import API_KEY_ENVS  # noqa: E402

# the builders live in the package, so the doctests (root conftest.py) share them
from clas_lens.testing import (  # noqa: E402,F401
    make_tiny_model,
    make_tiny_tokenizer,
    random_directions,
    randomize,
)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Tiny random model (3 layers, d_model 32). Do not leave hooks on it."""
    return make_tiny_model(tmp_path_factory.mktemp("tinytok"))


@pytest.fixture(scope="session")
def tiny_other(tmp_path_factory):
    """A second tiny model of another shape (4 layers, d_model 48)."""
    return make_tiny_model(tmp_path_factory.mktemp("tinytok2"), n_layers=4, d_model=48,
                           name="tiny-llama-other")


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct (loaded once per session)."""
    import clas_lens as cl

    return cl.load_model()


@pytest.fixture(scope="session")
def gemma():
    """The embedded Gemma 3 270M base model (the first load ever dequantises for ~90 s)."""
    import clas_lens as cl

    return cl.load_model("gemma-3-270m")


@pytest.fixture(scope="session", params=["smollm2-135m", "gemma-3-270m"])
def embedded(request):
    """Each embedded model in turn (SmolLM2 = the ``smol`` fixture, then Gemma)."""
    return request.getfixturevalue("smol" if request.param == "smollm2-135m" else "gemma")


def bridge_keeps(fn) -> bool:
    """Whether a hook function is one the model keeps for good: TransformerLens's block capture
    pre-hooks (wired on the first forward pass) and the output-capturing forward hooks that
    transformers installs once, the first time attentions or hidden states are asked for."""
    fn = getattr(fn, "__func__", fn)
    qualname, module = getattr(fn, "__qualname__", ""), getattr(fn, "__module__", "") or ""
    return "_maybe_wire_capture_hooks" in qualname or module == "transformers.utils.output_capturing"


def all_hooks(model) -> list:
    """Every forward hook and forward pre-hook (with or without kwargs) on every module."""
    return [fn for mod in model.modules()
            for hooks in (mod._forward_hooks, mod._forward_pre_hooks) for fn in hooks.values()]


def n_hooks(model) -> int:
    """Number of forward hooks and pre-hooks on any module of the model, beyond the ones
    TransformerLens and transformers keep there for good (see ``bridge_keeps``)."""
    return sum(not bridge_keeps(fn) for fn in all_hooks(model))


@pytest.fixture
def serve(monkeypatch):
    """Start ChatServers (stopped at teardown); no proxy and no API key from the environment."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                *API_KEY_ENVS):
        monkeypatch.delenv(var, raising=False)
    servers = []

    def start(respond):
        servers.append(ChatServer(respond).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()
