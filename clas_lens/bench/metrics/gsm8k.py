"""GSM8K: step-by-step reasoning followed by ``Final Answer: X``."""

from __future__ import annotations

import re

from clas_lens.bench.metrics.text import sentences_of

_FINAL_LINE = re.compile(
    r"^[\s>*#_`-]*final\s+answer\s*[*_]*\s*[:：]\s*[*_]*\s*(?P<rest>.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def parse_number(text: str) -> float | None:
    """Return the first number in text, tolerating ``$``, commas and minus signs.

    ``"$1,250.50"`` gives 1250.5, ``"−3"`` gives -3.0 and ``"3/4"`` gives 0.75.

    Args:
        text: Any string.

    Returns:
        The number, or None when the text holds none.
    """
    text = text.replace("−", "-").replace("–", "-").replace("$", "")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)
    match = _NUMBER.search(text)
    if match is None:
        return None
    num, _, den = match.group().partition("/")
    if den:
        return float(num) / float(den) if float(den) else None
    return float(num)


def parse_gsm8k_label(label: str) -> float | None:
    """Parse a GSM8K answer: the number after the last ``####``, else the first.

    Args:
        label: ``base_label`` of a GSM8K row (full solution or bare number).

    Returns:
        The numeric answer, or None.
    """
    _, sep, tail = label.rpartition("####")
    return parse_number(tail if sep else label)


def _numbers_equal(a: float | None, b: float | None) -> bool:
    """Numeric equality with a small relative tolerance."""
    return a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(b))


def gsm8k_metrics(generation: str, row: dict) -> dict[str, float]:
    """Step-by-step reasoning followed by ``Final Answer: X`` (GSM8K).

    Rules:
        * ``final_answer_ok``: 1 when a line reads ``Final Answer: X`` (case and
          markdown emphasis tolerated) and X contains a number.
        * ``reasoning_steps``: number of sentences (see ``sentences_of``: lines,
          then sentence ends) before the last final-answer line, or in the
          whole text when there is none.
        * ``correct``: 1 when the first number after the last ``Final Answer:``
          equals the answer in ``base_label`` (after ``####`` when present;
          ``$``, commas and unicode minus signs tolerated).

    Args:
        generation: The model output.
        row: The CSV row (``base_label`` is used).

    Returns:
        The three metrics.
    """
    finals = list(_FINAL_LINE.finditer(generation))
    last = finals[-1] if finals else None
    answer = parse_number(last.group("rest")) if last else None
    before = generation[: last.start()] if last else generation
    gold = parse_gsm8k_label(row.get("base_label", "") or "")
    return {
        "final_answer_ok": float(answer is not None),
        "reasoning_steps": float(len(sentences_of(before))),
        "correct": float(_numbers_equal(answer, gold)),
    }


__all__ = ["gsm8k_metrics", "parse_gsm8k_label", "parse_number"]
