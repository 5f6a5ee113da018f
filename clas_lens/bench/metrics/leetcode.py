"""LeetCode: answering in C++ in a fenced code block."""

from __future__ import annotations

import re

from clas_lens.bench.metrics.text import any_match

_FENCE = re.compile(r"```[ \t]*([^\s`]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CPP_TAGS = {"cpp", "c++", "cc", "cxx", "hpp", "cplusplus"}
_OTHER_TAGS = {
    "python", "py", "python3", "java", "javascript", "js", "typescript", "ts",
    "go", "golang", "rust", "rs", "c#", "csharp", "cs", "kotlin", "kt",
    "swift", "ruby", "rb", "php", "scala", "haskell", "perl", "r", "julia",
}  # fmt: skip
_CPP_STRONG = [
    re.compile(p)
    for p in (
        r"#include\s*[<\"]",
        r"\bstd::",
        r"using\s+namespace\s+std\b",
        r"\b(?:vector|unordered_map|unordered_set|map|set|pair|priority_queue)\s*<",
        r"\bpublic\s*:",
        r"\bnullptr\b",
        r"\bcout\s*<<",
    )
]
_C_SIGNATURE = re.compile(
    r"^\s*(?:static\s+|inline\s+|const\s+)*"
    r"(?:int|long(?:\s+long)?|bool|void|double|float|char|string|auto|size_t|"
    r"[A-Z]\w*\s*\*)\s*[&*]?\s*\w+\s*\([^)]*\)\s*(?:const\s*)?\{",
    re.MULTILINE,
)
_NOT_CPP = [
    re.compile(p, re.MULTILINE)
    for p in (
        r"^\s*def\s+\w+\s*\(",
        r"^\s*(?:import|from)\s+[\w.]+",
        r"\bpublic\s+(?:static\s+)?(?:class|int|void|boolean|String|long)\b",
        r"\bSystem\.out\b",
        r"^\s*(?:fn|func|function)\s+\w+",
        r"\bconsole\.log\b",
        r"\b(?:let|const|var)\s+\w+\s*=",
    )
]


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """Fenced code blocks as ``(lower-case tag, body)``; an unclosed last one counts."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def _looks_like_cpp(code: str) -> bool:
    """A strong C++ marker, or a C-style typed function with no other-language marker."""
    if any_match(_CPP_STRONG, code):
        return True
    return bool(_C_SIGNATURE.search(code)) and not any_match(_NOT_CPP, code)


def leetcode_metrics(generation: str, row: dict) -> dict[str, float]:
    """Answering in C++ in a fenced code block (LeetCode).

    Rules:
        * ``cpp_block``: 1 when a fenced block is tagged ``cpp``/``c++``
          (also ``cc``, ``cxx``, ``hpp``).
        * ``cpp_like``: 1 when the code (all fenced blocks, or the whole text
          when there is none) has a C++ marker (``#include``, ``std::``,
          ``using namespace std``, ``vector<``, ``public:``, ``nullptr``,
          ``cout <<``) or a C-style typed function definition and no marker of
          Python, Java, JavaScript, Go or Rust.
        * ``other_language``: 1 when a fenced block is tagged with another
          language (python, java, javascript, go, rust, c#, ...). A ``c`` tag
          counts as neither.

    Compilation and test correctness, which the judge also scores, are not
    checked.

    Args:
        generation: The model output.
        row: The CSV row (unused).

    Returns:
        The three metrics.
    """
    del row
    blocks = _code_blocks(generation)
    tags = {tag for tag, _ in blocks}
    code = "\n".join(body for _, body in blocks) if blocks else generation
    return {
        "cpp_block": float(bool(tags & _CPP_TAGS)),
        "cpp_like": float(_looks_like_cpp(code)),
        "other_language": float(bool(tags & _OTHER_TAGS)),
    }


__all__ = ["leetcode_metrics"]
