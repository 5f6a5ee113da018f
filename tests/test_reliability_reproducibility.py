"""Reliability (issue 7), reproducibility: same seed, same data, same machine =>
identical directions, steerer parameters, greedy generations and saved files, also
across processes with different hash seeds; the seed and library versions are
recorded in the saved artifacts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_directions

import clas_lens as cl

CONTRAST = cl.ContrastSet.from_templates(
    ["cats", "dogs", "rain", "Paris", "the sun", "hello", "a cake", "music"],
    "Describe {prompt}.", "Describe {prompt} in a cheerful, wonderful way!")
PAIRS = [("hello", "world"), ("I love cats", "and dogs"), ("The weather is", "sunny"),
         ("Tell me about", "Paris")]


def _state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("method", ["mean_diff", "logistic", "pca", "rfm"])
def test_directions_are_identical_for_the_same_seed(tiny, method):
    a = cl.fit_directions(tiny, CONTRAST, method=method, seed=4, progress=False)
    b = cl.fit_directions(tiny, CONTRAST, method=method, seed=4, progress=False)
    assert torch.equal(a.vectors, b.vectors) and torch.equal(a.accuracy, b.accuracy)
    assert a.fit.seed == 4 and a.fit == b.fit


@pytest.mark.parametrize("kind", ["reft", "lora"])
def test_seeded_initialisation(tiny, kind, tmp_path):
    make = {"reft": cl.ReFTSteerer, "lora": cl.LoRASteerer}[kind]
    a, b, c = make(tiny, seed=3), make(tiny, seed=3), make(tiny, seed=4)
    assert _state_equal(a, b) and not _state_equal(a, c)
    a.save(tmp_path / kind)
    assert json.loads((tmp_path / kind / "cfg.json").read_text())["seed"] == 3


@pytest.mark.parametrize("kind", ["clas", "reft"])
def test_training_is_identical_with_shuffling(tiny, kind):
    dirs = random_directions(tiny, seed=61)
    make = {"clas": lambda: cl.CLASSteerer(dirs), "reft": lambda: cl.ReFTSteerer(tiny, seed=1)}[kind]
    runs = []
    for _ in range(2):
        st = make()
        hist = cl.train(tiny, st, PAIRS, PAIRS[:2], epochs=2, batch_size=2, seed=7, progress=False)
        runs.append((st, hist))
    (a, ha), (b, hb) = runs
    assert _state_equal(a, b)
    assert ha.train_losses == hb.train_losses and ha.valid_losses == hb.valid_losses
    assert ha.settings["seed"] == 7


def test_greedy_generation_identical_across_runs_and_save_load(tiny, tmp_path):
    st = cl.CLASSteerer(random_directions(tiny, seed=62))
    cl.train(tiny, st, PAIRS, epochs=2, seed=2, progress=False)
    prompts = [p for p, _ in PAIRS]
    a = cl.generate(tiny, st, prompts, max_new_tokens=6, stop_at_eos=False, progress=False)
    b = cl.generate(tiny, st, prompts, max_new_tokens=6, stop_at_eos=False, progress=False)
    st.save(tmp_path / "st")
    c = cl.generate(tiny, cl.load_steerer(tmp_path / "st", model=tiny), prompts,
                    max_new_tokens=6, stop_at_eos=False, progress=False)
    assert a.token_ids == b.token_ids == c.token_ids
    assert torch.equal(a.strengths, b.strengths) and torch.equal(a.strengths, c.strengths)


def test_saving_the_same_state_gives_identical_files(tiny, tmp_path):
    d = random_directions(tiny, seed=63)
    st = cl.CLASSteerer(d)
    for name in ("one", "two"):
        st.save(tmp_path / name / "st")
        d.save(tmp_path / name / "d")
    for sub in ("st", "d"):
        one = {p.name: p.read_bytes() for p in (tmp_path / "one" / sub).iterdir()}
        two = {p.name: p.read_bytes() for p in (tmp_path / "two" / sub).iterdir()}
        assert one == two


def test_directions_artifact_records_seed_and_versions(tiny, tmp_path):
    d = cl.fit_directions(tiny, CONTRAST, method="mean_diff", seed=11, progress=False)
    d.save(tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "cfg.json").read_text())
    assert cfg["fit"]["seed"] == 11
    assert {"clas_lens", "torch", "transformer_lens", "python"} <= set(cfg["versions"])
    assert cl.load_directions(tmp_path / "d").fit.seed == 11


def test_trained_steerer_artifact_records_training_seed(tiny, tmp_path):
    st = cl.CLASSteerer(random_directions(tiny, seed=64))
    cl.train(tiny, st, PAIRS, epochs=1, seed=13, progress=False)
    st.save(tmp_path / "st")
    cfg = json.loads((tmp_path / "st" / "cfg.json").read_text())
    assert cfg["training"]["settings"]["seed"] == 13


# ---- across processes ----------------------------------------------------------

PIPELINE = r"""
import json, sys
import clas_lens as cl

def run(model_dir, out):
    model = cl.load_model(model_dir)
    contrast = cl.ContrastSet.from_templates(
        ["cats", "dogs", "rain", "Paris", "the sun", "hello"], "Describe {prompt}.",
        "Describe {prompt} in a cheerful way!")
    pairs = [("hello", "world"), ("I love cats", "and dogs"), ("The weather is", "sunny")]
    dirs = cl.fit_directions(model, contrast, method="pca", seed=5, progress=False)
    st = cl.CLASSteerer(dirs)
    cl.train(model, st, pairs, pairs[:1], epochs=2, batch_size=2, seed=5, progress=False)
    res = cl.generate(model, st, [p for p, _ in pairs], max_new_tokens=5, stop_at_eos=False,
                      progress=False)
    dirs.save(out + "/d")
    st.save(out + "/st")
    with open(out + "/tokens.json", "w") as fh:
        json.dump({"tokens": res.token_ids}, fh)

if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama saved as a Hugging Face folder (loadable by ``load_model``)."""
    from conftest import make_tiny_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_hf")
    tok = make_tiny_tokenizer(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def test_another_process_with_another_hash_seed_agrees(model_dir, tmp_path):
    """The same pipeline in a fresh process (PYTHONHASHSEED differs: set iteration order
    changes) and in this one: byte-identical directions, steerer, cfg files and tokens."""
    sub, here = tmp_path / "sub", tmp_path / "here"
    sub.mkdir()
    here.mkdir()
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    env = dict(os.environ, PYTHONHASHSEED=seed, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.Popen([sys.executable, "-c", PIPELINE, str(model_dir), str(sub)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    namespace = {"__name__": "pipeline"}
    exec(compile(PIPELINE, "pipeline", "exec"), namespace)
    namespace["run"](str(model_dir), str(here))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]

    def files(root: Path):
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    a, b = files(sub), files(here)
    assert a.keys() == b.keys() and "tokens.json" in a
    assert a == b
