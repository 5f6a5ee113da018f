"""Repetition: answering without repeating itself (sentences and word n-grams)."""

from __future__ import annotations

from clas_lens.bench.metrics.text import ngrams, normalise, sentences_of, words_of


def repeat_rate(text: str) -> float:
    """Fraction of sentences equal to an earlier sentence after normalisation.

    Args:
        text: Any text.

    Returns:
        A value in ``[0, 1]``; 0 for empty text.
    """
    normalised = [s for s in map(normalise, sentences_of(text)) if s]
    if not normalised:
        return 0.0
    seen: set[str] = set()
    repeats = 0
    for sentence in normalised:
        repeats += sentence in seen
        seen.add(sentence)
    return repeats / len(normalised)


def ngram_repeat_rate(text: str, n: int = 4) -> float:
    """Fraction of word n-grams that already occurred earlier in the text.

    Catches loops that sentence splitting misses (no punctuation). Natural
    prose sits well below 0.2; a text repeating one phrase approaches 1.

    Args:
        text: Any text.
        n: The n-gram length.

    Returns:
        A value in ``[0, 1]``; 0 when the text has fewer than n words.
    """
    grams = ngrams(words_of(text), n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


_NGRAM_LOOP = 0.3  # ngram_repeat_rate above this counts as repetition


def repetition_metrics(generation: str, row: dict) -> dict[str, float]:
    """Answering without repeating itself (Repetition).

    Rules:
        * ``repeat_rate``: fraction of sentences that duplicate an earlier
          sentence after lower-casing and removing punctuation.
        * ``ngram_repeat``: fraction of word 4-grams seen earlier in the text.
        * ``no_repetition``: 1 when ``repeat_rate`` is 0 and ``ngram_repeat``
          is at most 0.3 (the judge's main criterion).
        * ``single_sentence``: 1 when the answer is exactly one sentence, with
          no code block and ``no_repetition`` (a plain one-sentence answer).

    On-topic-ness, which the judge also scores, is not checked.

    Args:
        generation: The model output.
        row: The CSV row (unused).

    Returns:
        The four metrics.
    """
    del row
    rate = repeat_rate(generation)
    ngram = ngram_repeat_rate(generation)
    clean = rate == 0.0 and ngram <= _NGRAM_LOOP
    one = len(sentences_of(generation)) == 1 and "```" not in generation
    return {
        "repeat_rate": rate,
        "ngram_repeat": ngram,
        "no_repetition": float(clean),
        "single_sentence": float(one and clean),
    }


__all__ = ["ngram_repeat_rate", "repeat_rate", "repetition_metrics"]
