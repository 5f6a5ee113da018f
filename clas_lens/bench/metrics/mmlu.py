"""MMLU: correct and cautious multiple-choice answers."""

from __future__ import annotations

import re

from clas_lens.bench.metrics.text import any_match, normalise

_LETTERS = "ABCDEFGHIJ"
_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[.):]\s*(.+?)\s*$", re.MULTILINE)
_EXPLICIT = re.compile(
    r"\b(?i:answer|option|choice)\b(?:\s+(?i:is|would be|should be))?\s*[:\-]?\s*"
    r"[*_(\[]*([A-J])(?![\w'’])"
)
_LEADING = re.compile(r"^[\s*_#>]*[(\[]?([A-J])(?:[.):\]]|\s*$)")
_STANDALONE = re.compile(r"(?<![\w.])[(\[]?([A-J])(?:[.,:)\]](?=\s|$)|$)")
_HEDGES = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\bi (?:think|believe|guess|suspect|assume)\b",
        r"\b(?:likely|probably|possibly|perhaps|maybe|presumably)\b",
        r"\bnot (?:entirely |completely |totally |100% |fully |quite )?(?:sure|certain)\b",
        r"\b(?:i'm|i am) (?:not sure|unsure|uncertain)\b",
        r"\buncertain\b",
        r"\b(?:it|this) (?:seems|appears)\b",
        r"\bif i recall\b",
        r"\bto the best of my knowledge\b",
        r"\b(?:might|could) be\b",
        r"\bi (?:don't|do not) know\b",
        r"\bi'm not confident\b",
    )
]


def parse_options(question: str) -> dict[str, str]:
    """Answer options of an MMLU question (lines such as ``A. text``).

    Args:
        question: ``base_input`` of an MMLU row.

    Returns:
        Map from option letter to option text.
    """
    return {m.group(1): m.group(2) for m in _OPTION_LINE.finditer(question)}


def _gold_letter(label: str) -> str | None:
    """Gold option letter: an index ("0" is A) or the letter itself."""
    label = label.strip()
    if label.isdigit() and int(label) < len(_LETTERS):
        return _LETTERS[int(label)]
    return label.upper() if len(label) == 1 and label.upper() in _LETTERS else None


def _letter_by_text(text: str, options: dict[str, str]) -> str | None:
    """The single option whose text appears as whole words in the answer."""
    padded = f" {normalise(text)} "
    hits = {}
    for letter, option in options.items():
        norm = normalise(option)
        if norm and f" {norm} " in padded:
            hits[letter] = norm
    kept = [k for k, v in hits.items() if not any(v != w and v in w for w in hits.values())]
    return kept[0] if len(kept) == 1 else None


def chosen_option(generation: str, options: dict[str, str]) -> str | None:
    """The option letter a generation commits to, or None.

    Order of rules: an explicit "answer is X" / "Answer: X" (first one); a
    letter opening the text ("B.", "(B)"); a single distinct standalone
    letter followed by ".", ",", ":", ")" or the end of the text; a single
    option whose text appears in the answer. Only letters present in
    ``options`` count (A-D when none were parsed).

    Args:
        generation: The model output.
        options: Map from letter to option text, as from ``parse_options``.

    Returns:
        The chosen letter, or None when no unambiguous choice is found.
    """
    valid = set(options) or set("ABCD")
    for pattern in (_EXPLICIT, _LEADING):
        for match in pattern.finditer(generation):
            if match.group(1) in valid:
                return match.group(1)
    standalone = {m.group(1) for m in _STANDALONE.finditer(generation)} & valid
    if len(standalone) == 1:
        return standalone.pop()
    return _letter_by_text(generation, options)


def mmlu_metrics(generation: str, row: dict) -> dict[str, float]:
    """Correct and cautious multiple-choice answers (MMLU).

    Rules:
        * ``answered``: 1 when ``chosen_option`` finds a committed option.
        * ``correct``: 1 when that option is the gold one; ``base_label`` is
          the 0-based option index (a letter is also accepted); options are
          read from ``base_input`` lines ``A. ...``.
        * ``hedged``: 1 when the text uses cautious language ("I think",
          "likely", "probably", "not entirely sure", "might be", "it seems",
          "I don't know", ...). "likely" in a factual sense is a false positive.

    Args:
        generation: The model output.
        row: The CSV row (``base_input`` and ``base_label`` are used).

    Returns:
        The three metrics.
    """
    options = parse_options(row.get("base_input", "") or "")
    choice = chosen_option(generation, options)
    gold = _gold_letter(row.get("base_label", "") or "")
    return {
        "answered": float(choice is not None),
        "correct": float(choice is not None and choice == gold),
        "hedged": float(any_match(_HEDGES, generation.replace("’", "'"))),
    }


__all__ = ["chosen_option", "mmlu_metrics", "parse_options"]
