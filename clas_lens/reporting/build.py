"""Build the report of one steerer: run the analyses, draw the figures, assemble one page.

Every number comes from :mod:`clas_lens.tracing` and :mod:`clas_lens.analysis`, every figure
from :mod:`clas_lens.plot`; this module only puts them together.

Example:
    >>> report(model, steerer, prompts, out="report.html", directions=dirs,   # doctest: +SKIP
    ...        pairs=valid_pairs, other=las)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from clas_lens.reporting.page import render_page

#: quantile of |alpha| that sets the token view's colour limit.
COLOUR_QUANTILE = 0.99


def _r(x) -> list:
    """Nested list of floats rounded to 4 significant digits (small JSON)."""
    return np.vectorize(lambda v: float(f"{v:.4g}"))(np.asarray(x, dtype=float)).tolist()


def shown_start(tokens: Sequence[str], prompt_length: int) -> int:
    """First position the token view shows: the user turn (a leading system turn is hidden).

    The chat template opens every turn with the first token (``<|im_start|>``); with three or
    more turns in the prompt (system, user, assistant header) the view starts at the user turn.

    >>> shown_start(["<s>", "system", "x", "<s>", "user", "hi", "<s>", "assistant", "a"], 8)
    3
    >>> shown_start(["<s>", "user", "hi", "<s>", "assistant", "a"], 5)
    0
    """
    opens = [k for k in range(prompt_length) if tokens[k] == tokens[0]]
    return opens[-2] if len(opens) >= 3 else 0


def _side(name, res, i, decode, attr=None) -> dict:
    n = int(res.mask[i].sum())
    ids, plen = res.token_ids[i][:n], int(res.prompt_lengths[i])
    start = shown_start(res.str_tokens[i], plen)
    s, p = res.strengths[i, :n], res.projections[i, :n]
    if s.ndim == 3:
        s, p = s[..., 0], p[..., 0]
    return {"name": name, "text": [decode(t) for t in ids[start:]], "start": start, "plen": plen,
            "alpha": _r(s[start:].float()), "proj": _r(p[start:].float()), "attr": attr}


def _attributed(res, i, which: str) -> range:
    """Positions whose alpha is attributed: the answer, every shown token, or none."""
    n, plen = int(res.mask[i].sum()), int(res.prompt_lengths[i])
    first = {"answer": plen, "all": shown_start(res.str_tokens[i], plen), "none": n}[which]
    return range(first, n)


def _attributions(model, steerer, res, i, which: str, k: int, progress) -> list:
    """Top-``k`` components of alpha per shown token and layer (one steered pass per token;
    ``None`` for tokens not attributed)."""
    from clas_lens.analysis import attribute_layers, top_components

    n = int(res.mask[i].sum())
    start = shown_start(res.str_tokens[i], int(res.prompt_lengths[i]))
    out = [None] * (n - start)
    for pos in _attributed(res, i, which):
        attrs = attribute_layers(model, steerer, res.token_ids[i][:n], position=pos)
        out[pos - start] = [[[name, float(f"{v:.3g}")] for name, v in top_components(a, k)] for a in attrs]
        progress.update(1)
    return out


def colour_limits(examples: list[dict], n_layers: int) -> dict:
    """Per layer (and ``"mean"``): the quantile of |alpha| over shown tokens, position 0 left out."""
    rows = [np.asarray(side["alpha"])[(1 if side["start"] == 0 else 0):]
            for ex in examples for side in ex["sides"]]
    a = np.concatenate([r for r in rows if len(r)]) if any(len(r) for r in rows) else np.zeros((1, n_layers))
    lim = {str(j): float(np.quantile(np.abs(a[:, j]), COLOUR_QUANTILE)) for j in range(n_layers)}
    lim["mean"] = float(np.quantile(np.abs(a.mean(1)), COLOUR_QUANTILE))
    return {k: max(v, 1e-6) for k, v in lim.items()}


def _layers_text(layers: list[int]) -> str:
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]} ({len(layers)} layers)"
    return ", ".join(map(str, layers))


def config_dict(cfg) -> dict:
    """An artifact's config as a plain dict (a config object's ``to_dict()``, a ``cfg()`` method's
    result, or a dict)."""
    cfg = cfg() if callable(cfg) else cfg
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def _provenance(steerer, directions, other, settings: dict) -> list[tuple[str, str]]:
    from clas_lens.io import versions

    cfg = config_dict(steerer.cfg)
    train = dict(cfg.get("training") or cfg.get("extra", {}).get("train") or {})
    best = train.pop("best_valid_loss", "not recorded")
    shape = f"{cfg.get('n_layers')} layers, d_model {cfg.get('d_model')}"
    rows = [("model", f"{cfg.get('model_name')} ({shape})"),
            ("steerer", f"{cfg['kind']} at {_layers_text(list(cfg['layers']))}"),
            ("valid loss (best)", str(best)),
            ("training", json.dumps(train, sort_keys=True) if train else "not recorded")]
    if directions is not None:
        d = config_dict(directions.cfg)
        acc, concept = directions.accuracy, d.get("concept") or "an unnamed contrast"
        rows += [("directions", f"{d.get('method')} on {concept}, held-out "
                                f"accuracy mean {float(acc.mean()):.3f}, max {float(acc.max()):.3f}"),
                 ("contrast and direction fit", json.dumps(d.get("fit", d.get("meta")), sort_keys=True))]
    if other is not None:
        rows.append(("second steerer", f"{other.kind} at {_layers_text(list(other.layers))}"))
    rows += [("report settings", json.dumps(settings, sort_keys=True)),
             ("versions", json.dumps(versions(), sort_keys=True))]
    return rows


def _fig(fig) -> str:
    fig.update_layout(width=None, autosize=True)  # as wide as the page, however many tokens
    return fig.to_html(full_html=False, include_plotlyjs=False,
                       config={"displaylogo": False, "responsive": True})


def report(model, steerer, prompts: Sequence[str], *, out: str | os.PathLike | None = None,
           directions=None, pairs=None, other=None, other_name: str | None = None,
           max_new_tokens: int = 24, repetition_penalty: float | None = 1.2,
           scales: Sequence[float] = (0, 0.5, 1, 1.5, 2), attribute: str = "answer", top_k: int = 3,
           heatmaps: int = 2,
           title: str | None = None, progress: bool = True) -> str:
    """One self-contained HTML page showing what a steerer does on some prompts.

    The page holds: answers unsteered and steered side by side with tokens coloured by alpha
    (a layer selector, "mean over layers"; hover: alpha, h·v and the largest attributed
    components at that layer), tokens x layers heatmaps, probe accuracy beside mean |alpha| per
    layer, alpha against h·v, a second steerer's strengths beside this one's, similarity with null
    bands, dose-response, and the provenance. No network request: plotly.js is inlined once.

    Args:
        model: the ``TransformerBridge`` the steerer was made for.
        steerer: a CLAS-form steerer (``alpha = w.h + b``; attribution and read-out need ``W``/``b``).
        prompts: user prompts to answer (a few: each attributed token costs one steered pass).
        out: where to write the page (atomically); ``None`` only returns it.
        directions: the steerer's :class:`~clas_lens.directions.Directions` (probe accuracy,
            layer similarity), or ``None``.
        pairs: ``(prompt, completion)`` pairs for the dose-response NLL, or ``None``.
        other: a second steerer traced on the same tokens (e.g. layerwise LAS), or ``None``.
        other_name: its label (default: its kind).
        max_new_tokens, repetition_penalty: greedy generation settings.
        scales: steering scales of the dose-response.
        attribute: whose alpha is attributed to heads and MLPs: ``"answer"`` (the steered answer's
            tokens), ``"all"`` (prompt tokens too) or ``"none"``; one steered pass per token.
        top_k: components listed per token and layer.
        heatmaps: tokens x layers heatmaps drawn (the first prompts).
        title: page title.
        progress: progress bar over the attribution passes.

    Returns:
        The HTML text.
    """
    from plotly.offline import get_plotlyjs

    from clas_lens import analysis as an
    from clas_lens import plot
    from clas_lens.io import atomic_write_text
    from clas_lens.plot.lens import accuracy_and_strength, strength_vs_projection, strengths_beside
    from clas_lens.tracing import generate, trace

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt to answer")
    if not (hasattr(steerer, "W") and hasattr(steerer, "b")):
        raise ValueError(f"report needs a CLAS-form steerer (alpha = w.h + b), got {steerer.kind!r}; "
                         "pass a LAS steerer as other= beside a CLAS one")
    if attribute not in ("answer", "all", "none"):
        raise ValueError(f"attribute must be 'answer', 'all' or 'none', got {attribute!r}")
    t0 = time.perf_counter()
    kw = dict(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty, progress=False)
    steered = generate(model, steerer, prompts, **kw)
    # the unsteered answer, then the steerer run over it (teacher forced) for its alpha there
    base = trace(model, steerer, prompts, generate(model, None, prompts, **kw).texts)

    def decode(t):
        return model.tokenizer.decode([t])

    n_attr = sum(len(_attributed(steered, i, attribute)) for i in range(len(prompts)))
    bar = tqdm(total=n_attr, desc="attribution", disable=not progress)
    examples = [{"prompt": p, "sides": [
        _side("unsteered", base, i, decode),
        _side(f"{steerer.kind.upper()}-steered", steered, i, decode,
              _attributions(model, steerer, steered, i, attribute, top_k, bar))]}
        for i, p in enumerate(prompts)]
    bar.close()
    data = {"examples": examples, "layers": list(steerer.layers),
            "vmax": colour_limits(examples, len(steerer.layers))}

    sections = [("Where the steering acts: tokens x layers",
                 "alpha of every token of the steered answer at every steered layer (hover for the token).",
                 [_fig(plot.strength_heatmap(steered, i)) for i in range(min(heatmaps, len(prompts)))])]
    acc = None
    if directions is not None:
        acc = [float(directions.accuracy[directions.layers.index(L)]) if L in directions.layers
               else float("nan") for L in steerer.layers]
    sections.append(("Probe accuracy and strength per layer",
                     "Held-out accuracy of the probe that gave each direction, and the mean |alpha| over "
                     "the steered answers' tokens.",
                     [_fig(accuracy_and_strength(steerer.layers, acc,
                                                 an.layer_profile(steered, generated_only=True)))]))
    sections.append(("alpha against the projection h·v",
                     "Each point is one token at one layer of the steered answers. Points on a line "
                     "through the origin would mean alpha only rescales the concept already present.",
                     [_fig(strength_vs_projection(steered))]))
    if other is not None:
        name = other_name or other.kind
        ta = trace(model, steerer, prompts, steered.texts)
        tb = trace(model, other, prompts, steered.texts)
        sections.append((f"{steerer.kind.upper()} beside {name}",
                         f"Both steerers teacher-forced on the {steerer.kind.upper()}-steered answers.",
                         [_fig(strengths_beside(an.compare_strengths(ta, tb),
                                                (steerer.kind.upper(), name)))]))
    note = ("cos(w_l, v_l): does the steerer read the concept it writes? Grey: the band of random unit "
            "vectors. Then the layer x layer cosine of the directions.")
    try:
        sim = [_fig(plot.cosine_plot(an.readout_alignment(steerer)))]
    except ValueError as err:  # e.g. an untrained steerer: w = 0
        sim, note = [], f"cos(w_l, v_l) is not drawn: {err}. The layer x layer cosine of the directions:"
    if directions is not None:
        sim.append(_fig(plot.similarity_matrix_plot(an.layer_similarity_matrix(directions))))
    sections.append(("Similarity, with null bands", note, sim))
    if pairs:
        d = an.dose_response(model, steerer, pairs, scales=scales)
        note = f"Completion NLL of {len(pairs)} pairs as alpha is scaled (0: unsteered, 1: as trained)."
        sections.append(("Dose-response", note, [_fig(plot.dose_response_plot(d))]))
    settings = {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "attribute": attribute,
                "repetition_penalty": repetition_penalty, "dose_scales": list(scales) if pairs else None,
                "dose_pairs": len(pairs) if pairs else 0, "seconds": round(time.perf_counter() - t0, 1)}
    concept = getattr(directions, "concept", "") if directions is not None else ""
    title = title or f"{steerer.kind.upper()} steerer report" + (f": {concept}" if concept else "")
    model_name = config_dict(steerer.cfg).get("model_name")
    page = render_page(title, data, sections, _provenance(steerer, directions, other, settings),
                       subtitle=f"model {model_name}, {len(prompts)} prompts, greedy decoding, "
                                f"{max_new_tokens} new tokens at most",
                       plotlyjs=get_plotlyjs())
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, page)
    return page


def load_prompts(path: str | os.PathLike) -> tuple[list[str], list]:
    """Prompts (and pairs, if any) from ``prompts.json`` (as ``clas-lens train`` saves it), a
    ``data/<concept>`` folder (its test prompts and valid pairs) or a text file (one prompt a line).

    Returns:
        ``(prompts, pairs)``; ``pairs`` is empty when the file has none.
    """
    from clas_lens.data import DataError, load_concept

    p = Path(path)
    if p.is_dir():
        _, steer = load_concept(p)
        return list(steer.test.prompts), list(steer.valid.pairs)
    if not p.is_file():
        raise DataError(f"{p}: no such prompts file or data folder")
    if p.suffix == ".json":
        try:
            d = json.loads(p.read_text())
            return [str(x) for x in d["prompts"]], [tuple(x) for x in d.get("pairs", [])]
        except (ValueError, KeyError, TypeError) as err:
            raise DataError(f"{p}: expected {{\"prompts\": [...], \"pairs\": [[prompt, completion], ...]}}: "
                            f"{err}") from None
    prompts = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not prompts:
        raise DataError(f"{p}: no prompts (one prompt per line)")
    return prompts, []


def report_run(run: str | os.PathLike, out: str | os.PathLike, *, model=None,
               prompts: str | os.PathLike | None = None, n_prompts: int = 4, other=None,
               **kwargs) -> str:
    """:func:`report` for a folder saved by ``clas-lens train``.

    Args:
        run: the folder (the steerer, ``directions/`` and ``prompts.json``).
        out: the HTML file to write.
        model: a loaded model (default: the one named in the steerer's ``cfg.json``).
        prompts: prompts file or data folder (default: ``RUN/prompts.json``).
        n_prompts: how many of the prompts to answer.
        other: a second saved steerer's folder (e.g. layerwise LAS), or ``None``.
        **kwargs: passed to :func:`report`.
    """
    from clas_lens.data import DataError
    try:  # the loader function; older versions only had the classmethod
        from clas_lens.directions import load_directions
    except ImportError:  # pragma: no cover
        from clas_lens.directions import Directions
        load_directions = Directions.load
    from clas_lens.io import load_artifact
    from clas_lens.model import load_model
    from clas_lens.steerers import load_steerer

    run = Path(run)
    src = Path(prompts) if prompts is not None else run / "prompts.json"
    if not src.exists():
        raise DataError(f"{src}: no prompts; pass --prompts FILE (a data/<concept> folder, a prompts.json "
                        "or a text file with one prompt a line)")
    plist, pairs = load_prompts(src)
    if model is None:
        _, cfg = load_artifact(run)
        model = load_model(cfg.get("model_name"))
    steerer = load_steerer(run, model)
    dirs = load_directions(run / "directions", model) if (run / "directions").is_dir() else None
    second = load_steerer(other, model) if other is not None else None
    return report(model, steerer, plist[:n_prompts], out=out, directions=dirs, pairs=pairs,
                  other=second, **kwargs)


__all__ = ["COLOUR_QUANTILE", "colour_limits", "config_dict", "load_prompts", "report", "report_run",
           "shown_start"]
