"""Dose-response: completion NLL (and optionally a behaviour score) as a steerer's
strength is scaled.

Example:
    >>> steerer = cl.LASSteerer(dirs).set(1.0)
    >>> out = dose_response(model, steerer, pairs.valid, scales=(0, 1, 2))
    >>> out["scales"], len(out["nll"])
    ([0.0, 1.0, 2.0], 3)
    >>> abs(out["nll"][0] - cl.completion_nll(model, None, pairs.valid)) < 1e-6   # 0 = unsteered
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from clas_lens.analysis.sweeps import check_coefficients
from clas_lens.losses import as_pairs, completion_nll
from clas_lens.steerers import Steerer
from clas_lens.tracing import generate


def dose_response(model, steerer: Steerer, pairs, scales: Sequence[float] = (0, 0.5, 1, 2), *,
                  behaviour: Callable[[list[str]], float] | None = None,
                  prompts: Sequence[str] | None = None, max_new_tokens: int = 32,
                  batch_size: int = 8) -> dict:
    """Completion NLL (and optionally a behaviour score) as the steering is scaled.

    Args:
        model: a ``TransformerBridge``.
        steerer: any steerer (``scale`` multiplies its strength).
        pairs: ``(prompt, completion)`` pairs for the NLL.
        scales: the scales (0 = unsteered).
        behaviour: optional callable mapping a list of generated texts to a score.
        prompts: prompts to generate from for the behaviour (default: the pairs' prompts).
        max_new_tokens: tokens per generation.
        batch_size: batch size of NLL and generation.

    Returns:
        ``{"scales", "nll"}`` plus ``"behaviour"`` and ``"texts"`` (per scale) when
        ``behaviour`` is given.
    """
    scales = check_coefficients(scales, "scales")
    pairs = as_pairs(pairs)
    out = {"scales": scales,
           "nll": [completion_nll(model, steerer, pairs, batch_size=batch_size, scale=s)
                   for s in scales]}
    if behaviour is None:
        return out
    if not callable(behaviour):
        raise TypeError("behaviour must be a callable(list[str]) -> float")
    prompts = [p for p, _ in pairs] if prompts is None else list(prompts)
    texts = [generate(model, steerer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                      scale=s, progress=False).texts for s in scales]
    out["texts"] = texts
    out["behaviour"] = [float(behaviour(t)) for t in texts]
    return out


__all__ = ["dose_response"]
