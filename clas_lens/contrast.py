"""Response contrasts: a target completion against the model's own answer.

A template contrast (``SteerSet.contrast_set``) asks for the behaviour in the prompt;
when the base and steer templates are the same (JailbreakBench's are both
``{prompt}``) it has no signal. A response contrast keeps the prompt and contrasts the
answers instead: label 1 is the prompt with its target completion, label 0 the same
prompt with the unsteered model's greedy answer, and the probe reads the residual
stream over the completion (its last token, or the mean with
``fit_directions(..., position="mean")``).

This module sits with tracing (it generates), above ``data.py``; the data half is
:meth:`clas_lens.data.SteerSet.response_contrast`, which takes the answers.

Example:
    >>> answers = response_contrast(model, pairs, max_new_tokens=4, progress=False)
    >>> answers.source, answers.labels[:2], answers.completions[1] == pairs.train.completions[0]
    ('response', [0, 1], True)
    >>> cl.fit_directions(model, answers, method="mean_diff", progress=False).fit.contrast
    'response'
"""

from __future__ import annotations

from collections.abc import Sequence

from clas_lens.data import ContrastSet, SteerSet
from clas_lens.tracing import generate


def response_contrast(model, steer: SteerSet, splits: Sequence[str] = ("train", "valid"), *,
                      max_new_tokens: int = 64, batch_size: int = 8,
                      progress: bool = True) -> ContrastSet:
    """Contrast each target completion with the unsteered model's greedy answer.

    Args:
        model: a ``TransformerBridge`` (used unsteered).
        steer: (prompt, completion) pairs.
        splits: the splits whose pairs are used (never test by default).
        max_new_tokens: length of the model's answers.
        batch_size: prompts per generation batch.
        progress: show a progress bar.

    Returns:
        A :class:`ContrastSet` with ``source="response"``: per pair, label 0 is
        ``(prompt, the model's answer)`` and label 1 ``(prompt, target)``, with one pair id.

    Raises:
        DataError: no pairs in ``splits``.
    """
    idx = [i for i, s in enumerate(steer.splits) if s in splits]
    prompts = [steer.prompts[i] for i in idx]
    answers = generate(model, None, prompts, max_new_tokens=max_new_tokens,
                       batch_size=batch_size, progress=progress).texts if prompts else []
    return steer.response_contrast(answers, splits)


def choose_contrast(model, steer: SteerSet, splits: Sequence[str] = ("train", "valid"), *,
                    max_new_tokens: int = 64, progress: bool = True) -> ContrastSet:
    """The template contrast where the base and steer templates differ, else a response contrast.

    Args:
        model: a ``TransformerBridge`` (used only for a response contrast).
        steer: pairs read from a reference CSV (they carry the templates).
        splits: the splits used (never test by default).
        max_new_tokens: length of the model's answers in a response contrast.
        progress: show a progress bar while generating.
    """
    if steer.templates_differ(splits):
        return steer.contrast_set(splits)
    return response_contrast(model, steer, splits, max_new_tokens=max_new_tokens,
                             progress=progress)


__all__ = ["choose_contrast", "response_contrast"]
