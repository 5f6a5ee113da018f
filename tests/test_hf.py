"""Steerers on plain transformers models (``apply_hf``) and the exported affine map."""

import copy

import pytest
import torch
from conftest import make_tiny_tokenizer, random_directions, randomize

import clas_lens as cl
from clas_lens import hf as H
from clas_lens.io import ArtifactError
from clas_lens.model import boot, load_hf


def all_module_hooks(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny Llama twice: booted into TransformerLens, and a plain copy taken before booting."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tiny_tokenizer(tmp_path_factory.mktemp("hftok"))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True, attn_implementation="eager")
    hf = LlamaForCausalLM(cfg).eval()
    plain = copy.deepcopy(hf)
    return boot(hf, tok, "tiny-hf"), plain


def make(kind, model):
    dirs = random_directions(model, seed=1)
    st = {"clas": lambda: cl.CLASSteerer(dirs), "reft": lambda: cl.ReFTSteerer(model, seed=2),
          "las": lambda: cl.LASSteerer(dirs), "las_layerwise": lambda: cl.LayerwiseLASSteerer(dirs),
          "lora": lambda: cl.LoRASteerer(model, seed=2)}[kind]()
    return randomize(st, seed=3, scale=0.3)


@pytest.mark.parametrize("kind", ["clas", "reft", "las", "las_layerwise", "lora"])
def test_apply_hf_logits_equal_transformerlens(pair, kind):
    bridge, plain = pair
    st = make(kind, bridge)
    ids = torch.tensor([cl.chat_ids(bridge, "The capital of France is Paris")])
    with torch.inference_mode():
        with st.apply(bridge):
            ours = bridge(ids)
        with st.apply_hf(plain, model_name="tiny-hf"):
            theirs = plain(ids).logits
        unsteered = plain(ids).logits
    assert (ours - unsteered).abs().max() > 1e-3  # the steerer acts
    assert (ours - theirs).abs().max() <= 1e-5
    assert all_module_hooks(plain) == 0


def test_apply_hf_records_the_same_strengths(pair):
    bridge, plain = pair
    st = make("clas", bridge)
    ids = torch.tensor([cl.chat_ids(bridge, "hello world")])
    a, b = cl.Recorder(), cl.Recorder()
    with torch.inference_mode():
        with st.apply(bridge, recorder=a):
            bridge(ids)
        with st.apply_hf(plain, recorder=b, model_name="tiny-hf"):
            plain(ids)
    torch.testing.assert_close(a.stacked(), b.stacked(), rtol=0, atol=1e-5)


def test_hooks_removed_on_error_and_no_double_apply(pair):
    _, plain = pair
    st = make("clas", pair[0])
    with pytest.raises(KeyError, match="boom"):
        with st.apply_hf(plain, model_name="tiny-hf"):
            assert all_module_hooks(plain) == 3
            raise KeyError("boom")
    assert all_module_hooks(plain) == 0
    with st.apply_hf(plain, model_name="tiny-hf"):
        with pytest.raises(RuntimeError, match="already applied"):
            with st.apply_hf(plain, model_name="tiny-hf"):
                pass
        assert all_module_hooks(plain) == 3  # the refused second entry added nothing
    assert all_module_hooks(plain) == 0


def test_apply_hf_refuses_a_mismatched_model(pair, tiny_other):
    _, plain = pair
    st = make("clas", pair[0])
    with pytest.raises(ArtifactError, match="model_name='tiny-hf'.*pass model_name="):
        with st.apply_hf(plain):  # the config does not carry the name the steerer was made for
            pass
    other = cl.CLASSteerer(random_directions(tiny_other, seed=1))
    with pytest.raises(ArtifactError, match="n_layers=4, but this model has n_layers=3"):
        with other.apply_hf(plain, model_name="tiny-llama-other"):
            pass
    assert all_module_hooks(plain) == 0


@pytest.mark.parametrize("kind", ["clas", "las", "reft"])
def test_export_is_the_same_edit(pair, kind, tmp_path):
    bridge, plain = pair
    st = make(kind, bridge)
    folder = st.export(tmp_path / "exp", hf_model=plain, scale=1.5)
    tensors, cfg = H.load_export(folder)
    assert cfg["module_paths"] == ["model.layers.0", "model.layers.1", "model.layers.2"]
    assert tensors["W"].shape == (3, 1, 32) and tensors["b"].shape == (3, 1)
    if kind == "las":
        assert torch.equal(tensors["W"], torch.zeros(3, 1, 32))
        assert torch.equal(tensors["b"], (st.c * 1.5).detach().expand(3, 1))
    ids = torch.tensor([cl.chat_ids(bridge, "I love cats")])
    with torch.inference_mode():
        with st.apply_hf(plain, scale=1.5, model_name="tiny-hf"):
            ref = plain(ids).logits
        with H.apply_export(folder, plain):
            got = plain(ids).logits
    assert (ref - got).abs().max() <= 1e-5
    assert all_module_hooks(plain) == 0


def test_lora_has_no_affine_export(pair, tmp_path):
    with pytest.raises(ValueError, match="does not edit the residual stream"):
        make("lora", pair[0]).export(tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.embedded
def test_apply_hf_equals_transformerlens_on_embedded(embedded):
    key = "gemma-3-270m" if "gemma" in embedded.cfg.model_name else None
    plain, _, name = load_hf(key, attn_implementation="eager")  # a second, unbooted copy
    assert name == embedded.cfg.model_name
    st = randomize(cl.CLASSteerer(random_directions(embedded, seed=9)), seed=10, scale=0.002)
    ids = torch.tensor([cl.chat_ids(embedded, "Tell me about your weekend plans.")])
    with torch.inference_mode():
        with st.apply(embedded):
            ours = embedded(ids)
        with st.apply_hf(plain):
            theirs = plain(ids).logits
        unsteered = plain(ids).logits
    assert (ours - unsteered).abs().max() > 0.1
    assert (ours - theirs).abs().max() <= 1e-4
    assert all_module_hooks(plain) == 0
