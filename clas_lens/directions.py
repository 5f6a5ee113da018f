"""Probe directions per layer from a contrast set.

Four strategies, chosen by name: ``mean_diff``, ``logistic``, ``pca`` (of paired
differences) and ``rfm`` (a Recursive Feature Machine: Laplace-kernel ridge
regression whose feature matrix is updated by the average gradient outer product;
the direction is that matrix's top eigenvector). Every direction is unit norm and
points toward label 1.

Example:
    >>> dirs = fit_directions(model, contrast, method="mean_diff", progress=False)
    >>> dirs.vectors.shape, dirs.accuracy.shape      # [layer, d_model], [layer]
    (torch.Size([3, 32]), torch.Size([3]))
    >>> dirs.fit.n_fit + dirs.fit.n_heldout == len(contrast)
    True
    >>> dirs.save(tmp / "dirs")
    >>> load_directions(tmp / "dirs", model=model).cfg == dirs.cfg
    True
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from clas_lens.configs import DirectionsConfig, ProbeFit
from clas_lens.data import ContrastSet
from clas_lens.io import (
    ArtifactError,
    check_finite,
    check_model_matches,
    load_artifact,
    save_artifact,
)
from clas_lens.model import (
    chat_ids,
    check_batch_size,
    completion_ids,
    fit_context,
    left_pad,
    model_device,
    model_info,
    pad_id,
)


def resid_hook(layer: int) -> str:
    """Hook name of the residual stream after block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def validate_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    """Validate a layer list for a model with ``n_layers`` layers (``None`` = all layers).

    Returns the layers sorted. Raises ``TypeError`` for a non-integer (``1.5``, ``True``,
    a string) and ``ValueError`` for an empty list, a layer out of range or a duplicate.
    """
    n = int(n_layers)
    if layers is None:
        return list(range(n))
    if isinstance(layers, (str, bytes)):
        raise TypeError(f"layers must be a list of integers, got the string {layers!r}")
    try:
        layers = list(layers)
    except TypeError:
        raise TypeError(f"layers must be a list of integers, got {type(layers).__name__}") from None
    for x in layers:
        if isinstance(x, bool):
            raise TypeError(f"layer {x!r} is not an integer")
        try:
            operator.index(x)
        except TypeError:
            raise TypeError(f"layer {x!r} is not an integer") from None
    layers = [operator.index(x) for x in layers]
    if not layers:
        raise ValueError("layers is empty")
    bad = [x for x in layers if not 0 <= x < n]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{n - 1}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers {layers} has duplicates")
    return sorted(layers)


def check_layers(model, layers: Sequence[int] | None) -> list[int]:
    """Validate a layer list against the model (``None`` = all layers); see
    :func:`validate_layers`."""
    return validate_layers(layers, int(model.cfg.n_layers))


@torch.inference_mode()
def resid_activations(
    model, prompts: Sequence[str], layers: Sequence[int] | None = None, *,
    position: str = "last", batch_size: int = 16, chat: bool = True, progress: bool = False,
    truncate: bool = False, completions: Sequence[str] | None = None,
) -> Float[Tensor, "n layer d_model"]:
    """Residual stream (``blocks.{l}.hook_resid_post``) of each prompt, one pass per batch.

    Args:
        model: a ``TransformerBridge``.
        prompts: user prompts (chat-formatted unless ``chat=False``).
        layers: layers to read (default: all).
        position: ``"last"`` (the last prompt token) or ``"mean"`` (mean over the
            prompt's tokens, position 0 excluded: its norm is an outlier); with
            ``completions``, the last completion token or the mean over the completion.
        batch_size: prompts per forward pass (left padded).
        chat: apply the chat template.
        progress: show a progress bar.
        truncate: keep only the last tokens of a prompt longer than the model's context
            (and its BOS token); without it such a prompt is an error.
        completions: optional assistant text after each chat prompt (no end-of-turn
            token); activations are then read over the completion (at the last prompt
            token for an empty completion).

    Returns:
        float32 activations ``[n_prompts, n_layers_read, d_model]``.

    Raises:
        ValueError: no prompts, a prompt longer than the context (unless ``truncate``),
            an unknown position, bad layers or batch size.
        TypeError: a prompt that is not a string.
    """
    if position not in ("last", "mean"):
        raise ValueError(f"unknown position {position!r}; choose 'last' or 'mean'")
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    check_batch_size(batch_size)
    layers = check_layers(model, layers)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt {i} is a {type(p).__name__}, not a str")
    if completions is not None and len(completions) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    tails = [[] if completions is None else completion_ids(model, c, end_of_turn=False)
             for c in (completions or prompts)]
    seqs = [fit_context(model, chat_ids(model, p, chat=chat), f"prompt {i}", truncate=truncate,
                        reserve=len(t)) + t for i, (p, t) in enumerate(zip(prompts, tails))]
    # positions read by "mean" (the last ones, left padding): the completion (the last
    # prompt token for an empty one), or the prompt without its first token
    n_read = [max(len(t), 1) if completions is not None else len(s) - 1
              for s, t in zip(seqs, tails)]
    names = {resid_hook(l): j for j, l in enumerate(layers)}
    out = torch.empty(len(seqs), len(layers), int(model.cfg.d_model))
    device = model_device(model)
    # batches of similar length (less left padding); rows go back to the prompts' order
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    starts = range(0, len(seqs), batch_size)
    for start in tqdm(starts, desc="activations", disable=not progress):
        rows = order[start:start + batch_size]
        ids, mask = left_pad([seqs[i] for i in rows], pad_id(model), device)
        read = torch.zeros_like(mask)
        for i, k in enumerate(n_read[r] for r in rows):
            if k > 0:
                read[i, -k:] = 1
        store: dict[int, Tensor] = {}

        def make(j, store=store, read=read):
            return lambda h, hook=None: grab(h, j, store, read)

        def grab(h, j, store, read):
            if position == "last":
                store[j] = h[:, -1].float().cpu()
            else:
                m = read.unsqueeze(-1).to(h.dtype)
                store[j] = ((h * m).sum(1) / m.sum(1).clamp(min=1)).float().cpu()
            return h

        with model.hooks(fwd_hooks=[(n, make(j)) for n, j in names.items()]):
            model(ids, attention_mask=mask, stop_at_layer=max(layers) + 1)
        for j in range(len(layers)):
            out[rows, j] = store[j]
    return out


# ---- strategies: (X [n, d] float64, y [n], pairs or None, seed) -> direction [d] ----

def _mean_diff(X, y, pairs, seed):
    return X[y == 1].mean(0) - X[y == 0].mean(0)


def _logistic(X, y, pairs, seed):
    from sklearn.linear_model import LogisticRegression

    mu = X.mean(0)
    scale = np.linalg.norm(X - mu, axis=1).mean() + 1e-12
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    clf.fit((X - mu) / scale, y)
    return clf.coef_[0] / scale


def _paired_differences(X, y, pairs):
    if pairs is None:
        pos, neg = X[y == 1], X[y == 0]
        k = min(len(pos), len(neg))
        return pos[:k] - neg[:k]
    diffs = []
    for p in sorted(set(pairs)):
        idx = [i for i, q in enumerate(pairs) if q == p]
        ones = [i for i in idx if y[i] == 1]
        zeros = [i for i in idx if y[i] == 0]
        if ones and zeros:
            diffs.append(X[ones].mean(0) - X[zeros].mean(0))
    if not diffs:
        raise ValueError("pca needs pairs holding both labels")
    return np.stack(diffs)


def _pca(X, y, pairs, seed):
    d = _paired_differences(X, y, pairs)
    rng = np.random.default_rng(seed)
    d = d * rng.choice([-1.0, 1.0], size=(len(d), 1))  # random signs: PC1 is the contrast axis
    d = d - d.mean(0)
    _, _, vt = np.linalg.svd(d, full_matrices=False)
    return vt[0]


def rfm_feature_matrix(
    X: np.ndarray, y: np.ndarray, *, iters: int = 5, ridge: float = 1e-3, bandwidth: float | None = None
) -> np.ndarray:
    """Average gradient outer product (AGOP) of a Laplace-kernel RFM.

    Kernel ``K(x, z) = exp(-||x - z||_M / L)`` with Mahalanobis norm ``M``; each
    iteration solves kernel ridge regression ``(K + ridge I) a = y`` and sets
    ``M`` to the mean outer product of the predictor's input gradients at the
    training points (normalised to unit trace... times d).

    Args:
        X: ``[n, d]`` features (centred and scaled by the caller).
        y: ``[n]`` targets (here +-1).
        iters: RFM iterations.
        ridge: ridge regulariser.
        bandwidth: ``L``; default the median pairwise distance.

    Returns:
        ``M`` as ``[d, d]``.
    """
    n, d = X.shape
    M = np.eye(d)
    for _ in range(iters):
        XM = X @ M
        sq = np.einsum("ij,ij->i", XM, X)
        dist2 = np.maximum(sq[:, None] + sq[None, :] - 2 * XM @ X.T, 0.0)
        dist = np.sqrt(dist2)
        L = bandwidth or float(np.median(dist[dist > 0])) or 1.0
        K = np.exp(-dist / L)
        a = np.linalg.solve(K + ridge * np.eye(n), y)
        # grad f(x_i) = -(1/L) sum_j a_j K_ij / dist_ij * M (x_i - x_j)
        with np.errstate(divide="ignore", invalid="ignore"):
            C = np.where(dist > 0, K / np.where(dist > 0, dist, 1.0), 0.0) * a[None, :]
        G = -(C.sum(1, keepdims=True) * X - C @ X) @ M / L  # [n, d]
        M = G.T @ G / n
        tr = np.trace(M)
        if not np.isfinite(tr) or tr <= 0:
            raise FloatingPointError("RFM feature matrix degenerated (zero or non-finite)")
        M = M * (d / tr)
    return M


def _rfm(X, y, pairs, seed):
    mu = X.mean(0)
    scale = np.linalg.norm(X - mu, axis=1).mean() + 1e-12
    Z = (X - mu) / scale
    M = rfm_feature_matrix(Z, np.where(y == 1, 1.0, -1.0))
    vals, vecs = np.linalg.eigh(M)
    return vecs[:, -1]


#: the probe methods, by name: ``(X [n, d], y [n], pairs or None, seed) -> direction [d]``
PROBE_METHODS: dict[str, Callable] = {
    "mean_diff": _mean_diff,
    "logistic": _logistic,
    "pca": _pca,
    "rfm": _rfm,
}


def direction_from_features(X, y, method: str, *, pairs=None, seed: int = 0) -> np.ndarray:
    """One unit direction from features ``X [n, d]`` and labels ``y``, pointing toward label 1."""
    if method not in PROBE_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(PROBE_METHODS)}")
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if len(set(y.tolist())) < 2:
        raise ValueError("a direction needs examples of both labels")
    v = np.asarray(PROBE_METHODS[method](X, y, pairs, seed), dtype=np.float64)
    norm = np.linalg.norm(v)
    if not np.isfinite(norm) or norm == 0:
        raise FloatingPointError(f"{method} gave a zero or non-finite direction")
    v = v / norm
    if (X[y == 1].mean(0) - X[y == 0].mean(0)) @ v < 0:
        v = -v
    return v


def _split(labels: list[int], pairs: list[int] | None, holdout: float, seed: int):
    """Held-out split by pair (whole pairs go to one side), stratified otherwise."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    groups = pairs if pairs is not None else list(range(n))
    uniq = sorted(set(groups))
    rng.shuffle(uniq)
    k = max(1, int(round(holdout * len(uniq))))
    test_groups = set(uniq[:k])
    test = [i for i in range(n) if groups[i] in test_groups]
    fit = [i for i in range(n) if groups[i] not in test_groups]
    ys = lambda idx: {labels[i] for i in idx}  # noqa: E731
    if ys(fit) != {0, 1} or ys(test) != {0, 1}:
        # fall back to a stratified split by label
        fit, test = [], []
        for c in (0, 1):
            idx = [i for i in range(n) if labels[i] == c]
            rng.shuffle(idx)
            m = max(1, int(round(holdout * len(idx))))
            if len(idx) < 2:
                raise ValueError(f"label {c} has {len(idx)} example(s): at least 2 per label needed")
            test += idx[:m]
            fit += idx[m:]
    return sorted(fit), sorted(test)


def projection_accuracy(v, X_fit, y_fit, X_test, y_test) -> float:
    """Accuracy of thresholding ``X @ v`` midway between the two class means of the fit set."""
    p_fit = X_fit @ v
    thr = 0.5 * (p_fit[y_fit == 1].mean() + p_fit[y_fit == 0].mean())
    return float(((X_test @ v > thr).astype(int) == y_test).mean())


@dataclass
class Directions:
    """Unit probe directions, one per layer, with their held-out probe accuracy.

    Attributes:
        vectors: ``[n_layers, d_model]`` unit vectors pointing toward label 1.
        accuracy: ``[n_layers]`` accuracy on prompts the direction did not see.
        layers: the model layer of each row.
        method: the strategy name.
        model_name, n_layers, d_model: the model the directions were read from.
        concept: the contrast set's name.
        fit: how :func:`fit_directions` fitted them (``None`` for directions made by hand;
            a dict of the same fields is accepted).
    """

    vectors: Float[Tensor, "n_layers d_model"]
    accuracy: Float[Tensor, "n_layers"]  # noqa: F821
    layers: list[int]
    method: str
    model_name: str
    n_layers: int
    d_model: int
    concept: str = ""
    fit: ProbeFit | None = None

    def __post_init__(self):
        if isinstance(self.fit, dict):
            self.fit = ProbeFit.from_dict(self.fit) if self.fit else None
        self.vectors = torch.as_tensor(self.vectors, dtype=torch.float32)
        self.accuracy = torch.as_tensor(self.accuracy, dtype=torch.float32)
        self.layers = [int(x) for x in self.layers]
        self.n_layers, self.d_model = int(self.n_layers), int(self.d_model)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.layers):
            raise ValueError(f"vectors must be [len(layers), d_model], got {tuple(self.vectors.shape)}")
        if self.vectors.shape[1] != self.d_model:
            raise ValueError(f"vectors have width {self.vectors.shape[1]}, d_model is {self.d_model}")
        if self.accuracy.shape != (len(self.layers),):
            raise ValueError(f"accuracy must be [len(layers)] = [{len(self.layers)}], "
                             f"got {tuple(self.accuracy.shape)}")
        bad = [x for x in self.layers if not 0 <= x < self.n_layers]
        if bad:
            raise ValueError(f"Directions: layers {bad} out of range 0..{self.n_layers - 1}")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"Directions: layers {self.layers} has duplicates")
        check_finite({"vectors": self.vectors}, "Directions")
        zero = [l for l, v in zip(self.layers, self.vectors) if float(v.norm()) == 0.0]
        if zero:
            raise ValueError(f"Directions: the vector of layer(s) {zero} is zero")

    @property
    def hook_names(self) -> list[str]:
        return [resid_hook(l) for l in self.layers]

    def vector(self, layer: int) -> Tensor:
        """The unit direction of one model layer."""
        if layer not in self.layers:
            raise KeyError(f"no direction for layer {layer}; have {self.layers}")
        return self.vectors[self.layers.index(layer)]

    @property
    def cfg(self) -> DirectionsConfig:
        """The config saved as ``cfg.json``."""
        return DirectionsConfig(method=self.method, layers=list(self.layers),
                                hook_names=self.hook_names, model_name=self.model_name,
                                n_layers=self.n_layers, d_model=self.d_model,
                                concept=self.concept, fit=self.fit)

    def save(self, path: str | os.PathLike) -> None:
        """Save as ``cfg.json`` + safetensors (atomic)."""
        save_artifact(path, {"vectors": self.vectors, "accuracy": self.accuracy},
                      self.cfg.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> Directions:
        """Deprecated alias of :func:`load_directions`."""
        warnings.warn("Directions.load is deprecated: use clas_lens.load_directions(path, model)",
                      DeprecationWarning, stacklevel=2)
        return load_directions(path, model)

    def check_model(self, model) -> None:
        """Refuse a model other than the one the directions were read from."""
        check_model_matches({"model_name": self.model_name, "n_layers": self.n_layers,
                             "d_model": self.d_model}, model, "these directions")


def fit_directions(
    model, contrast: ContrastSet, method: str = "rfm", layers: Sequence[int] | None = None,
    position: str = "last", *, holdout: float = 0.25, seed: int = 0, batch_size: int = 16,
    progress: bool = True, activations: Tensor | None = None, truncate: bool = False,
) -> Directions:
    """Fit one probe direction per layer from a contrast set.

    The prompts are split (by pair when paired) into a fit part and a held-out part;
    each layer's direction is fitted on the fit part, and its accuracy is that of a
    midpoint threshold on the held-out part.

    Args:
        model: a ``TransformerBridge``.
        contrast: prompts with labels 0/1.
        method: ``"mean_diff"``, ``"logistic"``, ``"pca"`` or ``"rfm"``.
        layers: layers to probe (default: all).
        position: ``"last"`` or ``"mean"`` (see :func:`resid_activations`).
        holdout: fraction of pairs held out for the accuracy.
        seed: seed of the split and of the strategies.
        batch_size: prompts per forward pass.
        progress: show progress bars.
        activations: precomputed ``[n, len(layers), d_model]`` activations (skips the model pass).
        truncate: keep only the last tokens of prompts longer than the context
            (see :func:`resid_activations`); without it such a prompt is an error.

    Returns:
        A :class:`Directions` artifact.

    Raises:
        ValueError: unknown method or position, bad layers or holdout, a class with
            fewer than 2 examples, activations of the wrong shape or non-finite, a
            contrast without signal (its two labels' prompts identical pair by pair, or
            one label's prompts exactly the other's: see ``ContrastSet.signal_problem``).

    Warns:
        UserWarning: the held-out accuracy is at chance at every layer (see
            :func:`chance_accuracy`); ``fit.at_chance`` records it.
    """
    if method not in PROBE_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(PROBE_METHODS)}")
    if position not in ("last", "mean"):
        raise ValueError(f"unknown position {position!r}; choose 'last' or 'mean'")
    if not isinstance(contrast, ContrastSet):
        raise TypeError("contrast must be a ContrastSet")
    if not 0.0 < float(holdout) < 1.0:
        raise ValueError(f"holdout must be between 0 and 1 (exclusive), got {holdout!r}")
    contrast.check_signal()
    layers = check_layers(model, layers)
    if activations is None:
        activations = resid_activations(model, contrast.prompts, layers, position=position,
                                        batch_size=batch_size, progress=progress,
                                        truncate=truncate, completions=contrast.completions)
    else:
        activations = torch.as_tensor(activations)
        want = (len(contrast), len(layers), int(model.cfg.d_model))
        if tuple(activations.shape) != want:
            raise ValueError(f"activations must be [n_prompts, n_layers, d_model] = {list(want)}, "
                             f"got {list(activations.shape)}")
        if not torch.isfinite(activations).all():
            raise ValueError("activations contain NaN or infinite values")
    y = np.asarray(contrast.labels)
    fit, test = _split(contrast.labels, contrast.pair_ids, holdout, seed)
    pairs_fit = None if contrast.pair_ids is None else [contrast.pair_ids[i] for i in fit]
    vecs, accs = [], []
    for j, _ in enumerate(tqdm(layers, desc=f"{method} probes", disable=not progress)):
        X = activations[:, j].double().numpy()
        v = direction_from_features(X[fit], y[fit], method, pairs=pairs_fit, seed=seed)
        vecs.append(torch.from_numpy(v).float())
        accs.append(projection_accuracy(v, X[fit], y[fit], X[test], y[test]))
    chance = chance_accuracy(y[test])
    at_chance = max(accs) <= chance
    if at_chance:
        warnings.warn(f"contrast {contrast.name!r}: the held-out probe accuracy is at chance at "
                      f"every layer (best {max(accs):.3f} <= {chance:.3f} on {len(test)} held-out "
                      "prompts): these directions may be noise. Check the contrast, or try a "
                      "response contrast (clas_lens.response_contrast)", stacklevel=2)
    info = model_info(model)
    return Directions(
        torch.stack(vecs), torch.tensor(accs), layers, method, info["model_name"],
        info["n_layers"], info["d_model"], contrast.name,
        ProbeFit(position=position, seed=seed, holdout=float(holdout), n_fit=len(fit),
                 n_heldout=len(test), truncate=truncate, contrast=contrast.source,
                 chance_accuracy=chance, at_chance=at_chance),
    )


def chance_accuracy(y_heldout) -> float:
    """The held-out accuracy a probe without signal reaches by luck.

    The majority share ``p`` of the held-out labels plus two binomial standard errors,
    ``p + 2 sqrt(p (1 - p) / n)``, at most ``1 - 1/n`` (a probe right on every held-out
    prompt is never called chance): an accuracy at or below it is at chance.
    """
    y = np.asarray(y_heldout)
    n = len(y)
    p = max(float((y == 1).mean()), float((y == 0).mean()))
    return min(1.0 - 1.0 / n, p + 2.0 * float(np.sqrt(p * (1 - p) / n)))


def load_directions(path: str | os.PathLike, model=None) -> Directions:
    """Load saved directions; with ``model`` given, refuse ones made for another model.

    Raises:
        ArtifactError: missing or tampered files, unknown or missing ``cfg.json`` keys,
            hook names that do not match the layers, or another model.
    """
    t, raw = load_artifact(path, kind="directions")
    try:
        cfg = DirectionsConfig.from_dict(raw)
    except ArtifactError as err:
        raise ArtifactError(f"directions {path}: {err}") from err
    missing = [k for k in ("vectors", "accuracy") if k not in t]
    if missing:
        raise ArtifactError(f"directions {path}: missing {', '.join(map(repr, missing))}")
    if cfg.hook_names != [resid_hook(l) for l in cfg.layers]:
        raise ArtifactError(f"directions {path}: hook_names {cfg.hook_names} do not match "
                            f"layers {cfg.layers}")
    if model is not None:
        check_model_matches(cfg.to_dict(), model, f"directions {path}")
    try:
        return Directions(t["vectors"], t["accuracy"], cfg.layers, cfg.method, cfg.model_name,
                          cfg.n_layers, cfg.d_model, cfg.concept, cfg.fit)
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"directions {path}: {err}") from err


def __getattr__(name: str):
    if name == "METHODS":
        warnings.warn("clas_lens.directions.METHODS is renamed PROBE_METHODS", DeprecationWarning,
                      stacklevel=2)
        return PROBE_METHODS
    raise AttributeError(f"module 'clas_lens.directions' has no attribute {name!r}")
