"""Shared fixtures: a tiny random-initialised Llama booted into a TransformerBridge
(fast, exact checks) and the embedded SmolLM2-135M-Instruct (loaded once)."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore", category=UserWarning)

CHAT_TEMPLATE = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\n'}}{% endif %}"
)
CORPUS = [
    "The capital of France is Paris. The weather is sunny and warm today.",
    "I love cats and dogs. Tell me about your weekend plans, please!",
    "user assistant system hello world 0123456789 ,.;:!?'\"()[]{}",
    "Describe a rainy Monday morning in a cheerful way. Great, wonderful, amazing.",
]


def make_tiny_tokenizer(folder):
    """A byte-level BPE tokenizer with a chat template, saved to ``folder`` and reloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|im_end|>")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


def make_tiny_model(folder, *, n_layers=3, d_model=32, seed=0, name="tiny-llama"):
    """A random-initialised tiny Llama as a TransformerBridge."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from clas_lens.model import boot

    tok = make_tiny_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=d_model, intermediate_size=2 * d_model,
        num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    hf = LlamaForCausalLM(cfg)
    return boot(hf, tok, name)


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


def random_directions(model, seed=0, layers=None, method="random"):
    """Random unit Directions for a model (for algebraic tests)."""
    from clas_lens.directions import Directions
    from clas_lens.model import model_info

    info = model_info(model)
    layers = list(range(info["n_layers"])) if layers is None else layers
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(len(layers), info["d_model"], generator=g)
    v = v / v.norm(dim=-1, keepdim=True)
    return Directions(v, torch.ones(len(layers)), layers, method, info["model_name"],
                      info["n_layers"], info["d_model"], "random")


def randomize(steerer, seed=0, scale=0.05):
    """Fill a steerer's parameters with small random values (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in steerer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return steerer
