"""Text helpers shared by the benchmark metrics: end markers, words, sentences, n-grams."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_END_MARKERS = ("<|eot_id|>", "<|im_end|>", "<|endoftext|>", "<|end|>", "</s>")
_LIST_MARKER = re.compile(r"^\s*(?:[-*•+]|\d+[.)]|#+)\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+")
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


def clean_generation(text: str) -> str:
    """Strip end-of-turn markers (e.g. ``<|eot_id|>``) and outer whitespace.

    Args:
        text: A generation or a target completion.

    Returns:
        The text without chat end markers.
    """
    for marker in _END_MARKERS:
        text = text.replace(marker, "")
    return text.strip()


def words_of(text: str) -> list[str]:
    """Lower-cased word tokens (letters and digits, inner apostrophes kept)."""
    return [w.lower() for w in _WORD.findall(text)]


def sentences_of(text: str) -> list[str]:
    """Split text into sentences: by line, then after ``.``, ``!`` or ``?``.

    Leading list markers (``1.``, ``-``, ``#``) are dropped and fragments with
    no letter or digit are discarded.
    """
    out = []
    for line in text.splitlines():
        line = _LIST_MARKER.sub("", line).strip()
        out.extend(s.strip() for s in _SENTENCE_END.split(line))
    return [s for s in out if any(c.isalnum() for c in s)]


def normalise(sentence: str) -> str:
    """Lower-case, drop punctuation and collapse whitespace."""
    return " ".join(words_of(sentence))


def any_match(patterns: Iterable[re.Pattern[str]], text: str) -> bool:
    """Whether any of the compiled patterns is found in text."""
    return any(p.search(text) for p in patterns)


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams of a token list, in order (empty when it has fewer than n tokens).

    Args:
        tokens: Words, e.g. from ``words_of``.
        n: The n-gram length (at least 1).

    Returns:
        ``len(tokens) - n + 1`` tuples of ``n`` consecutive tokens.
    """
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


__all__ = ["any_match", "clean_generation", "ngrams", "normalise", "sentences_of", "words_of"]
