"""Regenerate every committed figure in ``figures/`` from code, offline.

``make_figures()`` runs the whole pipeline on the embedded SmolLM2-135M-Instruct:
probe directions on ``data/positive`` (and ``data/formal`` for a concept-vs-concept
comparison), a CLAS steerer trained on the positive pairs, steered generation on
held-out prompts, and the analyses of :mod:`clas_lens.analysis`; each figure is
written as a PNG with matplotlib (no browser needed), plus a small HTML page of
coloured tokens and ``figures.json`` (the numbers behind the figures and timings).

    $ clas-lens figures            # or: make figures
    $ clas-lens figures --quick    # a few layers, one epoch (a smoke run)

Figures written (``out/``):

* ``probe_accuracy.png``      held-out probe accuracy per layer (methods, concepts)
* ``training_curves.png``     CLAS loss (train/valid) and parameter norms
* ``strength_heatmap.png``    tokens x layers strengths of one steered answer
* ``prompts_tokens.png``      prompts x answer tokens strengths at one layer
* ``token_strengths.html``    the steered answers as coloured tokens
* ``layer_profile.png``       mean |alpha| per layer, prompt vs generated tokens
* ``readout_similarity.png``  cos(w_l, v_l) per layer with the null band
* ``concept_similarity.png``  cos between probe directions of methods/concepts, null band
* ``layer_similarity.png``    layer x layer cosine of the probe directions
* ``las_layer_sweep.png``     LAS one layer at a time: layer x coefficient change in NLL
* ``attribution.png``         why alpha: top components of one token's strength
* ``attribution_layers.png``  that token's alpha decomposed per layer (embed/attn/mlp/steer)
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path

import torch

FIGURES = (
    "probe_accuracy.png", "training_curves.png", "strength_heatmap.png", "prompts_tokens.png",
    "token_strengths.html", "layer_profile.png", "readout_similarity.png",
    "concept_similarity.png", "layer_similarity.png", "las_layer_sweep.png", "attribution.png",
    "attribution_layers.png",
)


def settings(quick: bool) -> dict:
    """The work sizes of a full or a quick run."""
    if quick:
        return {"layers": [1, 3, 5], "methods": ["mean_diff", "logistic"], "epochs": 1,
                "contrast_pairs": 8, "train_pairs": 4, "valid_pairs": 2, "gen_prompts": 2,
                "max_new_tokens": 8, "sweep_layers": [1, 5], "coef_fractions": [-0.5, 0.5, 1.0]}
    return {"layers": None, "methods": ["mean_diff", "logistic", "pca", "rfm"], "epochs": 4,
            "contrast_pairs": None, "train_pairs": None, "valid_pairs": None, "gen_prompts": 8,
            "max_new_tokens": 40, "sweep_layers": "every_3",
            "coef_fractions": [-0.25, 0.05, 0.1, 0.2, 0.35, 0.5]}


def data_dir() -> Path:
    """``data/`` of the working directory, else the one next to the package (editable install)."""
    here = Path.cwd() / "data"
    if (here / "positive").is_dir():
        return here
    return Path(__file__).resolve().parent.parent / "data"


def _subset_contrast(contrast, n_pairs):
    if n_pairs is None:
        return contrast
    from clas_lens.data import ContrastSet

    n = 2 * n_pairs
    pairs = None if contrast.pair_ids is None else contrast.pair_ids[:n]
    return ContrastSet(contrast.prompts[:n], contrast.labels[:n], pairs, contrast.name)


def _take(steer_set, n):
    return steer_set if n is None else steer_set.subset(list(range(min(n, len(steer_set)))))


class _Log:
    def __init__(self, verbose: bool):
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.verbose = verbose
        self.steps: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.steps[name] = round(now - self.last, 2)
        self.last = now
        if self.verbose:
            print(f"[figures] {name}: {self.steps[name]:.1f}s (total {now - self.t0:.1f}s)",
                  flush=True)


def make_figures(out: str | os.PathLike = "figures", quick: bool = False, *, model=None,
                 concept: str | os.PathLike | None = None,
                 other_concept: str | os.PathLike | None = None,
                 verbose: bool = True) -> dict[str, str]:
    """Regenerate the committed figures into ``out`` (offline, embedded model).

    Args:
        out: output folder (created).
        quick: a few layers, one epoch, a few tokens (for tests; about a minute).
        model: an already loaded model (default: ``clas_lens.load_model()``).
        concept: the steered concept folder (default ``data/positive``).
        other_concept: a second concept for the direction comparison (``data/formal``).
        verbose: print one line per step with its time.

    Returns:
        ``{file name: path}`` of everything written (``figures.json`` included).
    """
    import clas_lens as cl
    from clas_lens import analysis as an
    from clas_lens import plot
    from clas_lens.model import model_info
    from clas_lens.plot._common import _np

    torch.manual_seed(0)
    cfg = settings(quick)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(verbose)
    written: dict[str, str] = {}
    summary: dict = {"quick": quick, "settings": cfg}

    def save(fig, name: str) -> None:
        written[name] = plot.save_png(fig, out / name, dpi=110)

    # -- model and data ---------------------------------------------------------------
    model = cl.load_model() if model is None else model
    data = data_dir()
    contrast, pairs = cl.load_concept(Path(concept) if concept else data / "positive")
    contrast_o, _ = cl.load_concept(Path(other_concept) if other_concept else data / "formal")
    contrast = _subset_contrast(contrast, cfg["contrast_pairs"])
    contrast_o = _subset_contrast(contrast_o, cfg["contrast_pairs"])
    train_set, valid_set = _take(pairs.train, cfg["train_pairs"]), _take(pairs.valid, cfg["valid_pairs"])
    test_prompts = pairs.test.prompts[: cfg["gen_prompts"]]
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if cfg["layers"] is None else cfg["layers"]
    summary.update({"model": model_info(model)["model_name"], "layers": layers,
                    "concept": contrast.name, "other_concept": contrast_o.name})
    log("load model and data")

    # -- probe directions (one activation pass per concept, every method on it) --------
    acts = cl.resid_activations(model, contrast.prompts, layers)
    dirs = {m: cl.fit_directions(model, contrast, method=m, layers=layers, activations=acts,
                                 progress=False) for m in cfg["methods"]}
    log("positive activations and probes")
    acts_o = cl.resid_activations(model, contrast_o.prompts, layers)
    dirs_o = cl.fit_directions(model, contrast_o, method="mean_diff", layers=layers,
                               activations=acts_o, progress=False)
    log("formal activations and probe")
    main_dirs = dirs["mean_diff"]
    named = {f"{contrast.name}/{m}": d for m, d in dirs.items()}
    named[f"{contrast_o.name}/mean_diff"] = dirs_o
    save(plot.probe_accuracy_mpl(named, title="held-out probe accuracy per layer"),
         "probe_accuracy.png")
    summary["probe_accuracy"] = {k: [round(float(a), 4) for a in d.accuracy]
                                 for k, d in named.items()}

    others = {**{f"{contrast.name}/{m}": dirs[m] for m in cfg["methods"] if m != "mean_diff"},
              f"{contrast_o.name}/mean_diff": dirs_o}
    sims = [an.cosine_per_layer(main_dirs, d, labels=(f"{contrast.name}/mean_diff", name))
            for name, d in others.items()]
    save(plot.cosine_plot_mpl(
        sims, title=f"cosine of the {contrast.name}/mean_diff direction with other methods and "
                    f"concepts\n(grey: null 95% of random directions, d={sims[0].null.d})"),
        "concept_similarity.png")
    summary["concept_similarity"] = {r.labels[1]: {k: v for k, v in r.summary().items()
                                                   if k != "labels"} for r in sims}
    sm = an.layer_similarity_matrix(main_dirs)
    save(plot.similarity_matrix_plot_mpl(sm), "layer_similarity.png")
    log("direction similarity figures")

    # -- CLAS training ----------------------------------------------------------------
    steerer = cl.CLASSteerer(main_dirs)
    hist = cl.train(model, steerer, train_set, valid_set, epochs=cfg["epochs"], progress=False)
    save(plot.training_curves_mpl(hist, title=f"CLAS on {contrast.name} "
                                  f"({len(layers)} layers, mean_diff directions)"),
         "training_curves.png")
    summary["training"] = {"valid_losses": hist.valid_losses, "best_epoch": hist.best_epoch,
                           "seconds": round(hist.seconds, 1)}
    log("train CLAS")

    ro = an.readout_alignment(steerer)
    save(plot.cosine_plot_mpl(ro, title=f"read-out w vs probe v per layer (grey: null 95%, "
                                        f"d={ro.null.d})"), "readout_similarity.png")
    summary["readout_alignment"] = {k: v for k, v in ro.summary().items() if k != "labels"}

    # -- steered generation and token strengths ----------------------------------------
    res = cl.generate(model, steerer, test_prompts, max_new_tokens=cfg["max_new_tokens"],
                      progress=False)
    log("generate")
    profile_gen = an.layer_profile(res, generated_only=True)
    profile_all = an.layer_profile(res)
    top_layer = res.layers[int(profile_gen.argmax())]
    save(plot.strength_heatmap_mpl(res, 0, title=f"CLAS strength alpha per token and layer: "
                                                  f"\u201c{res.prompts[0]}\u201d"),
         "strength_heatmap.png")
    gen = res.generated_mask()
    spread = res.strengths[gen].std(0) if int(gen.sum()) > 1 else profile_gen
    ctx_layer = res.layers[int(spread.argmax())]
    save(plot.prompts_heatmap_mpl(res, ctx_layer, generated_only=True,
                                  title=f"alpha on the steered answers at layer {ctx_layer} "
                                        f"(the layer where alpha varies most across tokens)"),
         "prompts_tokens.png")
    fig = plot.layer_profile_plot_mpl(res.layers, profile_gen, label="generated tokens",
                                      title="mean |alpha| per steered layer (held-out prompts)")
    ax = fig.axes[0]
    ax.plot([str(L) for L in res.layers], _np(profile_all), "k.-", label="all tokens")
    ax.legend(fontsize=8)
    save(fig, "layer_profile.png")
    page = ["<html><head><meta charset='utf-8'><title>CLAS token strengths</title></head><body>",
            f"<h3>CLAS strengths (mean over layers), {summary['model']}, concept "
            f"{contrast.name}</h3>"]
    for i in range(len(res)):
        page.append(f"<p><b>{html.escape(res.prompts[i])}</b></p>")
        page.append(plot.token_html(res, i, None))
    page.append("</body></html>")
    (out / "token_strengths.html").write_text("\n".join(page), encoding="utf-8")
    written["token_strengths.html"] = str(out / "token_strengths.html")
    summary["generation"] = {"texts": res.texts, "top_layer": top_layer,
                             "most_variable_layer": ctx_layer,
                             "strength_summary": [{k: v for k, v in s.items() if k != "prompt"}
                                                  for s in an.strength_summary(res)]}
    log("strength figures")

    # -- attribution: why does one token's alpha fire? ---------------------------------
    gen_mask = res.generated_mask()[0]
    j = res.layers.index(top_layer)
    s0 = res.strengths[0, :, j].abs().masked_fill(~gen_mask, -1.0)
    pos = int(s0.argmax()) if bool(gen_mask.any()) else int(res.mask[0].sum()) - 1
    ids = res.token_ids[0][: pos + 1]
    attrs = an.attribute_layers(model, steerer, ids, position=pos)
    attr = attrs[res.layers.index(top_layer)]
    save(plot.attribution_plot_mpl(attr, top=20), "attribution.png")
    save(plot.attribution_layers_plot_mpl(attrs), "attribution_layers.png")
    summary["attribution"] = {"layer": attr.layer, "position": attr.position,
                              "token": attr.token, "alpha": attr.alpha, "total": attr.total,
                              "grouped": attr.grouped(), "top": an.top_components(attr, 10)}
    log("attribution")

    # -- LAS layer sweep ---------------------------------------------------------------
    sweep_layers = cfg["sweep_layers"]
    if sweep_layers == "every_3":
        sweep_layers = layers[1::3]
    norms = acts.norm(dim=-1).mean(0)  # [layer] mean residual norm (last prompt token)
    ref = float(norms[[layers.index(L) for L in sweep_layers]].mean())
    coefs = [round(f * ref, 3) for f in cfg["coef_fractions"]]
    sw = an.layer_sweep_las(model, main_dirs, valid_set, coefs, layers=sweep_layers)
    gain = float((sw.nll - sw.baseline).min())
    vmax = max(0.25, 4 * abs(gain)) if gain < 0 else None  # keep improvements visible
    save(plot.sweep_plot_mpl(sw, title=f"LAS at one layer (h + c v): change in valid NLL vs "
                                       f"unsteered ({sw.baseline:.3f})\nmean |h| = {ref:.0f}; "
                                       f"box: best (layer, c)", vmax=vmax),
         "las_layer_sweep.png")
    summary["las_sweep"] = {"layers": sw.layers, "coefficients": coefs, "baseline": sw.baseline,
                            "nll": sw.nll.tolist(), "best": sw.best()}
    log("LAS layer sweep")

    summary["seconds"] = log.steps
    summary["total_seconds"] = round(time.perf_counter() - log.t0, 1)
    with open(out / "figures.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, default=_jsonable)
    written["figures.json"] = str(out / "figures.json")
    if verbose:
        print(f"[figures] wrote {len(written)} files to {out} in {summary['total_seconds']}s")
    return written


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    return str(x)


__all__ = ["FIGURES", "data_dir", "make_figures", "settings"]
