"""Alpaca: responding to a bare instruction rather than continuing it."""

from __future__ import annotations

import re

from clas_lens.bench.metrics.text import ngrams, words_of

_MIN_RESPONSE_WORDS = 2
_MAX_PROMPT_OVERLAP = 0.75
_TEMPLATE_START = re.compile(r"^\W*(?:instruction|input|question|prompt)\s*:", re.IGNORECASE)


def prompt_overlap(generation: str, prompt: str) -> float:
    """Fraction of the generation's word trigrams that also occur in the prompt.

    Texts shorter than three words are compared word by word instead.

    Args:
        generation: The model output.
        prompt: The instruction.

    Returns:
        A value in ``[0, 1]``; 0 for an empty generation.
    """
    gen, src = words_of(generation), words_of(prompt)
    n = 3 if len(gen) >= 3 else 1
    grams = ngrams(gen, n)
    if not grams:
        return 0.0
    source = set(ngrams(src, n))
    return sum(g in source for g in grams) / len(grams)


def _continues_prompt(generation: str, prompt: str) -> bool:
    """Whether the text reads as a continuation of the instruction, not an answer.

    True when it opens with the prompt's first two words, with a template
    field ("Instruction:", "Input:" ...), or, for a prompt without final
    punctuation, with a lower-case letter or a comma/semicolon.
    """
    gen, src = words_of(generation), words_of(prompt)
    if len(src) >= 2 and gen[:2] == src[:2]:
        return True
    if _TEMPLATE_START.match(generation):
        return True
    unfinished = prompt.rstrip()[-1:] not in {".", "?", "!", ":", '"', "'", ")", ""}
    return unfinished and bool(re.match(r"\s*(?:[a-z]|[,;])", generation))


def alpaca_metrics(generation: str, row: dict) -> dict[str, float]:
    """Responding to a bare instruction rather than continuing it (Alpaca).

    Rules:
        * ``length_words``: number of words.
        * ``prompt_overlap``: fraction of word trigrams copied from the
          instruction (``base_input``, else ``x``).
        * ``responsive``: 1 when the text has at least 2 words, copies at most
          75% of its trigrams from the instruction (rewrite tasks copy some)
          and does not read as a continuation of it (see ``_continues_prompt``).

    Accuracy and completeness, which the judge also scores, are not checked;
    pair this with ``embedding_similarity`` against a reference answer.

    Args:
        generation: The model output.
        row: The CSV row (``base_input`` or ``x`` is used).

    Returns:
        The three metrics.
    """
    prompt = row.get("base_input") or row.get("x") or ""
    length = len(words_of(generation))
    overlap = prompt_overlap(generation, prompt)
    responsive = (
        length >= _MIN_RESPONSE_WORDS
        and overlap <= _MAX_PROMPT_OVERLAP
        and not _continues_prompt(generation, prompt)
    )
    return {
        "responsive": float(responsive),
        "length_words": float(length),
        "prompt_overlap": overlap,
    }


__all__ = ["alpaca_metrics", "prompt_overlap"]
