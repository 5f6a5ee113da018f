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
* ``dose_response.png``       valid NLL of the CLAS steerer as its strength is scaled

Token-level figures follow the plot module's colour rule: position 0 and the chat
template's system prompt are drawn grey and left out of the colour limit, which is
the 99th percentile of the other cells' ``|alpha|``.
"""

from __future__ import annotations

import html
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

FIGURES = (
    "probe_accuracy.png", "training_curves.png", "strength_heatmap.png", "prompts_tokens.png",
    "token_strengths.html", "layer_profile.png", "readout_similarity.png",
    "concept_similarity.png", "layer_similarity.png", "las_layer_sweep.png", "attribution.png",
    "attribution_layers.png", "dose_response.png",
)


def settings(quick: bool) -> dict:
    """The work sizes of a full or a quick run."""
    if quick:
        return {"layers": [1, 3, 5], "methods": ["mean_diff", "logistic"], "epochs": 1,
                "contrast_pairs": 8, "train_pairs": 4, "valid_pairs": 2, "gen_prompts": 2,
                "max_new_tokens": 8, "sweep_layers": [1, 5], "coef_fractions": [-0.5, 0.5, 1.0],
                "dose_scales": [0.0, 1.0, 2.0]}
    return {"layers": None, "methods": ["mean_diff", "logistic", "pca", "rfm"], "epochs": 4,
            "contrast_pairs": None, "train_pairs": None, "valid_pairs": None, "gen_prompts": 8,
            "max_new_tokens": 40, "sweep_layers": "every_3",
            "coef_fractions": [-0.25, 0.05, 0.1, 0.2, 0.35, 0.5],
            "dose_scales": [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]}


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


@dataclass
class _Run:
    """Where a figure run writes, what it has written, and the numbers behind the figures."""

    out: Path
    cfg: dict
    verbose: bool
    written: dict[str, str] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter)
    last: float = field(default_factory=time.perf_counter)

    def save(self, fig, name: str) -> None:
        """Write a matplotlib figure as ``out/name``."""
        from clas_lens.plot import save_png

        self.written[name] = save_png(fig, self.out / name, dpi=110)

    def write_text(self, name: str, text: str) -> None:
        """Write a text file ``out/name`` atomically."""
        from clas_lens.io import atomic_write_text

        atomic_write_text(self.out / name, text)
        self.written[name] = str(self.out / name)

    def step(self, name: str) -> None:
        """Record the time of the step that just finished (and print it when verbose)."""
        now = time.perf_counter()
        self.seconds[name] = round(now - self.last, 2)
        self.last = now
        if self.verbose:
            print(f"[figures] {name}: {self.seconds[name]:.1f}s (total {now - self.t0:.1f}s)",
                  flush=True)


@dataclass
class _Inputs:
    """The model, the concept data and the layers of a figure run."""

    model: object
    contrast: object
    contrast_o: object
    train_set: object
    valid_set: object
    test_prompts: list[str]
    layers: list[int]


def load_inputs(run: _Run, model, concept, other_concept) -> _Inputs:
    """Load the model (unless given) and the two concepts, cut to the run's sizes."""
    import clas_lens as cl
    from clas_lens.model import model_info

    cfg = run.cfg
    model = cl.load_model() if model is None else model
    data = data_dir()
    contrast, pairs = cl.load_concept(Path(concept) if concept else data / "positive")
    contrast_o, _ = cl.load_concept(Path(other_concept) if other_concept else data / "formal")
    n_layers = int(model.cfg.n_layers)
    inp = _Inputs(model, _subset_contrast(contrast, cfg["contrast_pairs"]),
                  _subset_contrast(contrast_o, cfg["contrast_pairs"]),
                  _take(pairs.train, cfg["train_pairs"]), _take(pairs.valid, cfg["valid_pairs"]),
                  pairs.test.prompts[: cfg["gen_prompts"]],
                  list(range(n_layers)) if cfg["layers"] is None else cfg["layers"])
    run.summary.update({"model": model_info(model)["model_name"], "layers": inp.layers,
                        "concept": inp.contrast.name, "other_concept": inp.contrast_o.name})
    run.step("load model and data")
    return inp


def probe_figures(run: _Run, inp: _Inputs):
    """Probe directions per method and concept; accuracy and similarity figures.

    Returns:
        ``(mean_diff directions of the concept, its residual activations)``.
    """
    import clas_lens as cl
    from clas_lens import analysis as an
    from clas_lens import plot

    cfg, model, layers = run.cfg, inp.model, inp.layers
    name, name_o = inp.contrast.name, inp.contrast_o.name
    acts = cl.resid_activations(model, inp.contrast.prompts, layers)
    dirs = {m: cl.fit_directions(model, inp.contrast, method=m, layers=layers, activations=acts,
                                 progress=False) for m in cfg["methods"]}
    run.step("positive activations and probes")
    acts_o = cl.resid_activations(model, inp.contrast_o.prompts, layers)
    dirs_o = cl.fit_directions(model, inp.contrast_o, method="mean_diff", layers=layers,
                               activations=acts_o, progress=False)
    run.step("formal activations and probe")
    named = {f"{name}/{m}": d for m, d in dirs.items()}
    named[f"{name_o}/mean_diff"] = dirs_o
    run.save(plot.probe_accuracy(named, title="held-out probe accuracy per layer",
                                 backend="matplotlib"), "probe_accuracy.png")
    run.summary["probe_accuracy"] = {k: [round(float(a), 4) for a in d.accuracy]
                                     for k, d in named.items()}
    main = dirs["mean_diff"]
    others = {**{f"{name}/{m}": dirs[m] for m in cfg["methods"] if m != "mean_diff"},
              f"{name_o}/mean_diff": dirs_o}
    sims = [an.cosine_per_layer(main, d, labels=(f"{name}/mean_diff", k)) for k, d in others.items()]
    run.save(plot.cosine_plot(
        sims, title=f"cosine of the {name}/mean_diff direction with other methods and concepts\n"
                    f"(grey: null 95% of random directions, d={sims[0].null.d})",
        backend="matplotlib"), "concept_similarity.png")
    run.summary["concept_similarity"] = {r.labels[1]: {k: v for k, v in r.summary().items()
                                                       if k != "labels"} for r in sims}
    run.save(plot.similarity_matrix_plot(an.layer_similarity_matrix(main), backend="matplotlib"),
             "layer_similarity.png")
    run.step("direction similarity figures")
    return main, acts


def training_figures(run: _Run, inp: _Inputs, directions):
    """Train CLAS on the concept's pairs; training curves and read-out alignment. Returns it."""
    import clas_lens as cl
    from clas_lens import analysis as an
    from clas_lens import plot

    steerer = cl.CLASSteerer(directions)
    hist = cl.train(inp.model, steerer, inp.train_set, inp.valid_set, epochs=run.cfg["epochs"],
                    progress=False)
    run.save(plot.training_curves(hist, title=f"CLAS on {inp.contrast.name} ({len(inp.layers)} "
                                              f"layers, mean_diff directions)", backend="matplotlib"),
             "training_curves.png")
    run.summary["training"] = {"valid_losses": hist.valid_losses, "best_epoch": hist.best_epoch,
                               "seconds": round(hist.seconds, 1)}
    run.step("train CLAS")
    ro = an.readout_alignment(steerer)
    run.save(plot.cosine_plot(ro, title=f"read-out w vs probe v per layer (grey: null 95%, "
                                        f"d={ro.null.d})", backend="matplotlib"),
             "readout_similarity.png")
    run.summary["readout_alignment"] = {k: v for k, v in ro.summary().items() if k != "labels"}
    return steerer


def strength_figures(run: _Run, inp: _Inputs, steerer):
    """Steered answers to held-out prompts; heatmaps, per-layer profile, coloured tokens.

    Returns:
        ``(the generation result, the layer with the largest mean |alpha| on answers)``.
    """
    import clas_lens as cl
    from clas_lens import analysis as an
    from clas_lens import plot

    res = cl.generate(inp.model, steerer, inp.test_prompts, max_new_tokens=run.cfg["max_new_tokens"],
                      progress=False)
    run.step("generate")
    profile_gen = an.layer_profile(res, generated_only=True)
    profile_all = an.layer_profile(res, skip_first=True)
    top_layer = res.layers[int(profile_gen.argmax())]
    run.save(plot.strength_heatmap(res, 0, title=f"CLAS strength alpha per token and layer: "
                                                 f"\u201c{res.prompts[0]}\u201d", backend="matplotlib"),
             "strength_heatmap.png")
    gen = res.generated_mask()
    spread = res.strengths[gen].std(0) if int(gen.sum()) > 1 else profile_gen
    ctx_layer = res.layers[int(spread.argmax())]
    run.save(plot.prompts_heatmap(res, ctx_layer, generated_only=True, backend="matplotlib",
                                  title=f"alpha on the steered answers at layer {ctx_layer} "
                                        f"(the layer where alpha varies most across tokens)"),
             "prompts_tokens.png")
    fig = plot.layer_profile_plot(res.layers, profile_gen, label="generated tokens",
                                  title="mean |alpha| per steered layer (held-out prompts)",
                                  backend="matplotlib")
    ax = fig.axes[0]
    ax.plot([str(L) for L in res.layers], profile_all.tolist(), "k.-",
            label="all tokens but the first")
    ax.legend(fontsize=8)
    run.save(fig, "layer_profile.png")
    page = ["<html><head><meta charset='utf-8'><title>CLAS token strengths</title></head><body>",
            f"<h3>CLAS strengths (mean over layers), {run.summary.get('model', '')}, concept "
            f"{inp.contrast.name}</h3>"]
    for i in range(len(res)):
        page += [f"<p><b>{html.escape(res.prompts[i])}</b></p>", plot.token_html(res, i, None)]
    run.write_text("token_strengths.html", "\n".join(page + ["</body></html>"]))
    run.summary["generation"] = {
        "texts": res.texts, "top_layer": top_layer, "most_variable_layer": ctx_layer,
        "strength_summary": [{k: v for k, v in s.items() if k != "prompt"}
                             for s in an.strength_summary(res)]}
    run.step("strength figures")
    return res, top_layer


def attribution_figures(run: _Run, inp: _Inputs, steerer, res, top_layer: int) -> None:
    """Why the strongest answer token's alpha fires at ``top_layer``, and across layers."""
    from clas_lens import analysis as an
    from clas_lens import plot

    gen_mask = res.generated_mask()[0]
    j = res.layers.index(top_layer)
    s0 = res.strengths[0, :, j].abs().masked_fill(~gen_mask, -1.0)
    pos = int(s0.argmax()) if bool(gen_mask.any()) else int(res.mask[0].sum()) - 1
    attrs = an.attribute_layers(inp.model, steerer, res.token_ids[0][: pos + 1], position=pos)
    attr = attrs[j]
    run.save(plot.attribution_plot(attr, top=20, backend="matplotlib"), "attribution.png")
    run.save(plot.attribution_layers_plot(attrs, backend="matplotlib"), "attribution_layers.png")
    run.summary["attribution"] = {"layer": attr.layer, "position": attr.position,
                                  "token": attr.token, "alpha": attr.alpha, "total": attr.total,
                                  "grouped": attr.grouped(), "top": an.top_components(attr, 10)}
    run.step("attribution")


def sweep_figures(run: _Run, inp: _Inputs, directions, acts, steerer) -> None:
    """LAS one layer at a time (layer x coefficient), and CLAS's dose-response."""
    from clas_lens import analysis as an
    from clas_lens import plot

    layers = inp.layers
    sweep_layers = run.cfg["sweep_layers"]
    if sweep_layers == "every_3":
        sweep_layers = layers[1::3]
    norms = acts.norm(dim=-1).mean(0)  # [layer] mean residual norm (last prompt token)
    ref = float(norms[[layers.index(L) for L in sweep_layers]].mean())
    coefs = [round(f * ref, 3) for f in run.cfg["coef_fractions"]]
    sw = an.layer_sweep_las(inp.model, directions, inp.valid_set, coefs, layers=sweep_layers)
    gain = float((sw.nll - sw.baseline).min())
    vmax = max(0.25, 4 * abs(gain)) if gain < 0 else None  # keep improvements visible
    run.save(plot.sweep_plot(sw, title=f"LAS at one layer (h + c v): change in valid NLL vs "
                                       f"unsteered ({sw.baseline:.3f})\nmean |h| = {ref:.0f}; "
                                       f"box: best (layer, c)", vmax=vmax, backend="matplotlib"),
             "las_layer_sweep.png")
    run.summary["las_sweep"] = {"layers": sw.layers, "coefficients": coefs, "baseline": sw.baseline,
                                "nll": sw.nll.tolist(), "best": sw.best()}
    run.step("LAS layer sweep")
    dr = an.dose_response(inp.model, steerer, inp.valid_set, run.cfg["dose_scales"])
    run.save(plot.dose_response_plot(dr, title="CLAS dose-response: valid NLL as alpha is scaled "
                                               "(0 = unsteered, 1 = trained)", backend="matplotlib"),
             "dose_response.png")
    run.summary["dose_response"] = {"scales": list(dr["scales"]), "nll": list(dr["nll"])}
    run.step("dose-response")


def write_summary(run: _Run) -> None:
    """Write ``figures.json``: settings, the numbers behind the figures and step times."""
    run.summary["seconds"] = run.seconds
    run.summary["total_seconds"] = round(time.perf_counter() - run.t0, 1)
    run.write_text("figures.json", json.dumps(run.summary, indent=1, default=_jsonable))
    if run.verbose:
        print(f"[figures] wrote {len(run.written)} files to {run.out} in "
              f"{run.summary['total_seconds']}s")


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
    torch.manual_seed(0)
    cfg = settings(quick)
    run = _Run(Path(out), cfg, verbose, summary={"quick": quick, "settings": cfg})
    run.out.mkdir(parents=True, exist_ok=True)
    inp = load_inputs(run, model, concept, other_concept)
    directions, acts = probe_figures(run, inp)
    steerer = training_figures(run, inp, directions)
    res, top_layer = strength_figures(run, inp, steerer)
    attribution_figures(run, inp, steerer, res, top_layer)
    sweep_figures(run, inp, directions, acts, steerer)
    write_summary(run)
    return run.written


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    return str(x)


__all__ = [
    "FIGURES", "attribution_figures", "data_dir", "load_inputs", "make_figures", "probe_figures",
    "settings", "strength_figures", "sweep_figures", "training_figures", "write_summary",
]
