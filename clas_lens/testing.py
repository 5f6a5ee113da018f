"""Tiny random models, directions and data: for examples, doctests and tests, no download.

``make_tiny_model`` trains a byte-level BPE tokenizer with a chat template on a few
sentences and boots a random-initialised Llama (3 layers, ``d_model`` 32 by default)
into a ``TransformerBridge``, in seconds on a CPU. Its outputs are meaningless; its
shapes, hooks and arithmetic are those of a real model, which is what exact checks need.

Example:
    >>> import tempfile
    >>> model = make_tiny_model(tempfile.mkdtemp())
    >>> model.cfg.n_layers, model.cfg.d_model
    (3, 32)
    >>> dirs = random_directions(model, seed=1)
    >>> dirs.vectors.shape
    torch.Size([3, 32])
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from clas_lens.data import ContrastSet, SteerSet
from clas_lens.directions import Directions
from clas_lens.model import boot, model_info

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


def make_tiny_tokenizer(folder: str | os.PathLike):
    """A byte-level BPE tokenizer with a chat template, saved to ``folder`` and reloaded.

    Args:
        folder: an existing folder to save the tokenizer files in.
    """
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


def make_tiny_model(folder: str | os.PathLike, *, n_layers: int = 3, d_model: int = 32,
                    seed: int = 0, name: str = "tiny-llama"):
    """A random-initialised tiny Llama as a ``TransformerBridge``.

    Args:
        folder: an existing folder for the tokenizer files.
        n_layers: number of blocks.
        d_model: residual width (a multiple of 4: the model has 4 heads).
        seed: torch seed of the random weights.
        name: the model name recorded in artifacts.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tiny_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=d_model, intermediate_size=2 * d_model,
        num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    hf = LlamaForCausalLM(cfg)
    return boot(hf, tok, name)


def random_directions(model, seed: int = 0, layers: Sequence[int] | None = None,
                      method: str = "random") -> Directions:
    """Random unit :class:`~clas_lens.directions.Directions` for a model (accuracy 1).

    Args:
        model: the model whose name and shape the directions record.
        seed: seed of the random vectors.
        layers: layers covered (default: all).
        method: the method name recorded.
    """
    info = model_info(model)
    layers = list(range(info["n_layers"])) if layers is None else list(layers)
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(len(layers), info["d_model"], generator=g)
    v = v / v.norm(dim=-1, keepdim=True)
    return Directions(v, torch.ones(len(layers)), layers, method, info["model_name"],
                      info["n_layers"], info["d_model"], "random")


def randomize(steerer: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Fill a steerer's parameters with small random normal values, in place; returns it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in steerer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return steerer


def tiny_contrast() -> ContrastSet:
    """A small paired contrast set (plain vs cheerful descriptions), 8 prompts."""
    return ContrastSet.from_templates(
        ["a cat", "the weather", "Paris", "a Monday morning"],
        "Describe {prompt}.", "Describe {prompt} in a cheerful way.", name="cheerful")


def tiny_pairs() -> SteerSet:
    """A small steering set: 4 train, 2 valid and 2 test (prompt, completion) pairs."""
    prompts = ["Describe a cat.", "Describe the weather.", "Describe Paris.", "Describe a dog.",
               "Describe your day.", "Describe the sea.", "Describe a car.", "Describe a tree."]
    completions = ["Great, wonderful cats!", "Sunny and warm, amazing!", "Wonderful Paris!",
                   "I love dogs!", "A great day!", "Wonderful!", "Amazing!", "Great!"]
    splits = ["train"] * 4 + ["valid"] * 2 + ["test"] * 2
    return SteerSet(prompts, completions, splits, name="cheerful")


__all__ = ["CHAT_TEMPLATE", "CORPUS", "make_tiny_model", "make_tiny_tokenizer", "random_directions",
           "randomize", "tiny_contrast", "tiny_pairs"]
