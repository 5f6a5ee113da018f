"""Build (and optionally execute) the tutorial notebooks from their source below.

    python notebooks/build.py                 # write the .ipynb files (no outputs)
    python notebooks/build.py --execute       # ... and run them (CLAS_LENS_NB_SIZE=full)
    python notebooks/build.py --execute --size small --only 01   # a quick check

Every notebook reads ``CLAS_LENS_NB_SIZE``: ``"small"`` (tests: a few layers,
one epoch, a few tokens) or ``"full"`` (default). Execution times are written to
``notebooks/timings.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''\
import os, time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZE = os.environ.get("CLAS_LENS_NB_SIZE", "full")   # "small" under test
SMALL = SIZE == "small"

import torch
import plotly.io as pio
import clas_lens as cl
from clas_lens import analysis as an, plot
from clas_lens.figures import data_dir

# Plotly figures are stored as plotly JSON (JupyterLab and VS Code draw it with no network) and,
# beside it, as a PNG (what GitHub and viewers without JavaScript show). The PNG needs kaleido and
# a Chromium (Debian package chromium); without them only the JSON is stored.
pio.renderers.default = "plotly_mimetype"
if not SMALL:
    import warnings, kaleido
    warnings.filterwarnings("ignore", message="The kopts argument is ignored")
    try:
        kaleido.start_sync_server(silence_warnings=True)
        pio.to_image({"data": [], "layout": {}}, format="png")
        pio.renderers.default = "plotly_mimetype+png"
    except Exception as err:
        print("figures without PNG copies:", err)
%matplotlib inline
torch.manual_seed(0)
DATA = data_dir()
T0 = time.perf_counter()
print("size:", SIZE, "| data:", DATA)'''

SIZES = '''\
if SMALL:   # a smoke run: few layers, one epoch, few tokens
    LAYERS, EPOCHS, N_TRAIN, N_VALID, N_PROMPTS, MAX_NEW, N_CONTRAST = [1, 2, 3], 1, 2, 2, 2, 8, 8
else:
    LAYERS, EPOCHS, N_TRAIN, N_VALID, N_PROMPTS, MAX_NEW, N_CONTRAST = None, 4, None, None, 8, 48, None
SWEEP_EPOCHS = 1 if SMALL else 2   # epochs of each steerer in a layer sweep

def head(x, n):
    """The first n items of a ContrastSet/SteerSet/list (all when n is None)."""
    if n is None:
        return x
    if isinstance(x, cl.ContrastSet):
        ids = None if x.pair_ids is None else x.pair_ids[:2 * n]
        return cl.ContrastSet(x.prompts[:2 * n], x.labels[:2 * n], ids, x.name)
    if isinstance(x, cl.SteerSet):
        return x.subset(list(range(min(n, len(x)))))
    return x[:n]'''

LOAD = '''\
model = cl.load_model()                       # embedded SmolLM2-135M-Instruct, offline
contrast, pairs = cl.load_concept(DATA / "positive")
contrast = head(contrast, N_CONTRAST)
train_set, valid_set = head(pairs.train, N_TRAIN), head(pairs.valid, N_VALID)
test_prompts = head(pairs.test.prompts, N_PROMPTS)
print(model.cfg.n_layers, "layers, d_model", model.cfg.d_model)
print(len(contrast), "contrast prompts;", len(train_set), "train /", len(valid_set), "valid pairs")'''

FOOTER = 'print(f"notebook ran in {time.perf_counter() - T0:.0f}s ({SIZE})")'


def nb_quickstart():
    return [
        ("md", "# 01 · Quickstart: Contextual Linear Activation Steering in five steps\n\n"
               "CLAS (arXiv 2604.24693) steers a model by adding, at every layer `l` and token `t`,\n"
               "`h' = h + alpha_{l,t} v_l` with a frozen probe direction `v_l` and a **context-dependent**\n"
               "strength `alpha_{l,t} = w_l . h_{l,t} + b_l` learned from a few (prompt, completion) pairs.\n"
               "`clas_lens` records `alpha` for every token, so you can see *where* steering acts.\n\n"
               "Data flow: model -> directions -> steerer -> trace -> analysis -> figure."),
        ("code", SETUP), ("code", SIZES),
        ("md", "## 1. Model and concept data\n`data/positive` holds contrast prompts (with / without "
               "\"be cheerful\") and (prompt, cheerful completion) pairs."),
        ("code", LOAD),
        ("code", "contrast.prompts[:2], contrast.labels[:2], train_set.pairs[0]"),
        ("md", "## 2. Probe directions\nOne unit direction per layer from the contrast prompts "
               "(`mean_diff`: difference of class means), with its accuracy on held-out pairs."),
        ("code", 'dirs = cl.fit_directions(model, contrast, method="mean_diff", layers=LAYERS, progress=False)\n'
                 "plot.probe_accuracy(dirs)"),
        ("md", "## 3. Train CLAS\nOnly `W` and `b` are trained (model frozen); both start at zero, "
               "so the untrained steerer is the unsteered model. The best valid epoch is kept."),
        ("code", "steerer = cl.CLASSteerer(dirs)\n"
                 "hist = cl.train(model, steerer, train_set, valid_set, epochs=EPOCHS, progress=False)\n"
                 'print(f"valid NLL {hist.valid_losses[0]:.3f} -> {hist.best_valid_loss:.3f} '
                 '(best epoch {hist.best_epoch}, {hist.seconds:.0f}s)")\n'
                 "plot.training_curves(hist)"),
        ("md", "## 4. Generate, steered and unsteered\n`generate` records the strength of every "
               "prompt and generated token at every steered layer."),
        ("code", "res = cl.generate(model, steerer, test_prompts[:2], max_new_tokens=MAX_NEW, progress=False)\n"
                 "base = cl.generate(model, None, test_prompts[:2], max_new_tokens=MAX_NEW, progress=False)\n"
                 "for p, s, b in zip(res.prompts, res.texts, base.texts):\n"
                 '    print("PROMPT   ", p)\n    print("unsteered", b.replace(chr(10), " "))\n'
                 '    print("CLAS     ", s.replace(chr(10), " "), end="\\n\\n")\n'
                 "res.strengths.shape   # [batch, pos, layer]"),
        ("md", "## 5. Where does the steering act?\nTokens x layers heatmap of `alpha` (hover for the "
               "token; the dashed line marks the start of the answer; grey: the first token and the system "
               "prompt, left out of the colour scale), then the answer as coloured tokens "
               "(red: pushed toward the concept, blue: away)."),
        ("code", "plot.strength_heatmap(res, 0)"),
        ("code", "plot.show_tokens(res, 0);"),
        ("md", "Static version for a paper or a README (matplotlib):"),
        ("code", "fig = plot.strength_heatmap(res, 0, backend=\"matplotlib\")\nfig"),
        ("md", "## Save and reload\nSteerers and directions are safetensors + `cfg.json` folders."),
        ("code", "import tempfile\nwith tempfile.TemporaryDirectory() as tmp:\n"
                 "    steerer.save(f\"{tmp}/clas\")\n"
                 "    again = cl.load_steerer(f\"{tmp}/clas\", model)\n"
                 "print(type(again).__name__, again.layers[:5], torch.equal(again.W, steerer.W.cpu()))"),
        ("code", FOOTER),
    ]


def nb_token_strengths():
    return [
        ("md", "# 02 · Token strengths across many prompts\n\nOne trained CLAS steerer, many "
               "held-out prompts: which tokens and layers get the largest `alpha`, how prompt and "
               "answer tokens differ, and how the strength reacts to a completion that already shows "
               "the behaviour."),
        ("code", SETUP), ("code", SIZES), ("code", LOAD),
        ("code", 'dirs = cl.fit_directions(model, contrast, method="mean_diff", layers=LAYERS, progress=False)\n'
                 "steerer = cl.CLASSteerer(dirs)\n"
                 "hist = cl.train(model, steerer, train_set, valid_set, epochs=EPOCHS, progress=False)\n"
                 'print(f"valid NLL {hist.valid_losses[0]:.3f} -> {hist.best_valid_loss:.3f}")'),
        ("md", "## Generate on all held-out prompts"),
        ("code", "res = cl.generate(model, steerer, test_prompts, max_new_tokens=MAX_NEW, progress=False)\n"
                 "for p, t in zip(res.prompts, res.texts):\n"
                 '    print(f"{p[:50]:50s} | {t[:90]!r}")'),
        ("md", "## Per-prompt summary\n`strength_summary` gives the mean `alpha` per prompt, over all, "
               "prompt and generated tokens. (Its overall max `|alpha|` sits on the first token, "
               "`<|im_start|>`: an attention sink whose residual norm is an outlier, so below the "
               "largest `|alpha|` is taken over the answer tokens.)"),
        ("code", "rows = an.strength_summary(res)\n"
                 "gen = res.generated_mask()\n"
                 'print(f"{\'prompt\':40s} {\'mean\':>7s} {\'prompt\':>7s} {\'answer\':>7s}   largest |alpha| in the answer")\n'
                 "for i, r in enumerate(rows):\n"
                 "    a = res.strengths[i].abs().masked_fill(~gen[i].unsqueeze(-1), -1.0)\n"
                 "    t, l = divmod(int(a.argmax()), a.shape[1])\n"
                 '    print(f"{r[\'prompt\'][:40]:40s} {r[\'mean\']:7.3f} {r[\'mean_prompt\']:7.3f} '
                 '{r[\'mean_generated\']:7.3f}   {float(res.strengths[i, t, l]):+.2f} on '
                 '{plot.token_label(res.str_tokens[i][t])!r} (pos {t}, layer {res.layers[l]})")'),
        ("md", "## Which layers carry the steering?"),
        ("code", "prof = an.layer_profile(res, generated_only=True)\n"
                 "top_layer = res.layers[int(prof.argmax())]\n"
                 'print("largest mean |alpha| on generated tokens at layer", top_layer)\n'
                 'plot.layer_profile_plot(res.layers, prof, title="mean |alpha| per layer (generated tokens)")'),
        ("md", "## Prompts x tokens at that layer\nEach row is a prompt (the black bar marks the start "
               "of the answer); hover for the token."),
        ("code", "plot.prompts_heatmap(res, top_layer)"),
        ("md", "Only the answers, aligned at their first token, at the layer where `alpha` varies "
               "most across answer tokens (the most *contextual* layer):"),
        ("code", "spread = res.strengths[gen].std(0)\n"
                 "ctx_layer = res.layers[int(spread.argmax())]\n"
                 'print("most variable layer:", ctx_layer)\n'
                 "plot.prompts_heatmap(res, ctx_layer, generated_only=True)"),
        ("md", "## Answers as coloured tokens"),
        ("code", "from IPython.display import HTML, display\n"
                 "for i in range(min(3, len(res))):\n"
                 "    display(HTML(f\"<b>{res.prompts[i]}</b>\" + plot.token_html(res, i, ctx_layer)))"),
        ("md", "## Teacher-forced: cheerful vs neutral completions\n`trace` runs the steerer on given "
               "completions. Does `alpha` shrink once the text is already cheerful (the steerer has "
               "less to add)?"),
        ("code", "neutral = [\"Here is some information about that topic.\"] * len(test_prompts)\n"
                 "cheerful = [c for _, c in head(pairs.test, N_PROMPTS).pairs]\n"
                 "t_neu = cl.trace(model, steerer, test_prompts, neutral)\n"
                 "t_che = cl.trace(model, steerer, test_prompts, cheerful)\n"
                 "a_neu = an.layer_profile(t_neu, generated_only=True, absolute=False)\n"
                 "a_che = an.layer_profile(t_che, generated_only=True, absolute=False)\n"
                 'print(f"mean alpha on completion tokens: neutral {float(a_neu.mean()):+.3f}, '
                 'cheerful {float(a_che.mean()):+.3f}")\n'
                 "plot.sweep_curves(t_neu.layers, torch.stack([a_neu, a_che], 1), coefficients=[\"neutral\", \"cheerful\"],\n"
                 '                  metric="mean alpha", title="mean alpha on completion tokens per layer")'),
        ("code", "plot.strength_heatmap(t_che, 0, title=\"teacher-forced cheerful completion\")"),
        ("code", FOOTER),
    ]


def nb_directions():
    return [
        ("md", "# 03 · Directions: probes, methods, concepts, and what CLAS reads\n\n"
               "* probe accuracy per layer for the four direction methods;\n"
               "* how similar the methods' (and concepts') directions are, against a null band of "
               "random unit vectors;\n"
               "* the layer x layer similarity of one direction set;\n"
               "* after training, the cosine between the CLAS read-out `w_l` and `v_l` "
               "(does CLAS read the concept it writes?), and a ReFT steerer's learned direction."),
        ("code", SETUP), ("code", SIZES), ("code", LOAD),
        ("md", "## Four methods from one activation pass"),
        ("code", "layers = LAYERS or list(range(model.cfg.n_layers))\n"
                 "acts = cl.resid_activations(model, contrast.prompts, layers)\n"
                 "dirs = {m: cl.fit_directions(model, contrast, method=m, layers=layers, activations=acts,\n"
                 "                             progress=False) for m in cl.PROBE_METHODS}\n"
                 "plot.probe_accuracy(dirs)"),
        ("code", "ms = an.method_similarity(dirs)\n"
                 "for row in ms.table():\n"
                 '    print(f"{row[\'a\']:>9s} vs {row[\'b\']:9s} mean cos {row[\'mean\']:+.3f}  '
                 'layers outside null {row[\'n_outside_null\']}/{len(ms.layers)}")\n'
                 "plot.method_similarity_plot(ms)"),
        ("md", "## Concepts: positive vs formal vs French\nDifferent behaviours should give directions "
               "much less aligned than two methods on the same behaviour."),
        ("code", "concepts = {}\n"
                 "for name in [\"positive\", \"formal\", \"french\"]:\n"
                 "    cs, _ = cl.load_concept(DATA / name)\n"
                 "    concepts[name] = cl.fit_directions(model, head(cs, N_CONTRAST), method=\"mean_diff\",\n"
                 "                                       layers=layers, progress=False)\n"
                 "cs_sim = an.method_similarity(concepts)\n"
                 "plot.method_similarity_plot(cs_sim, title=\"cosine between concept directions (mean_diff)\")"),
        ("md", "## Layer x layer similarity\nHow fast does the positive direction rotate through depth?"),
        ("code", "sm = an.layer_similarity_matrix(dirs[\"mean_diff\"])\n"
                 "print(\"adjacent-layer cosine:\", [round(float(c), 2) for c in sm.adjacent()])\n"
                 "plot.similarity_matrix_plot(sm)"),
        ("md", "## What does CLAS read?\n`alpha = w . h + b`: compare the trained read-out `w_l` with "
               "the written direction `v_l`. A cosine inside the null band means CLAS's trigger is not "
               "simply \"how much of the concept is already there\"."),
        ("code", "steerer = cl.CLASSteerer(dirs[\"mean_diff\"])\n"
                 "hist = cl.train(model, steerer, train_set, valid_set, epochs=EPOCHS, progress=False)\n"
                 "ro = an.readout_alignment(steerer)\n"
                 "print(ro.summary())\n"
                 "plot.cosine_plot(ro)"),
        ("md", "`w_l` against the other concepts' directions (is the trigger concept-specific?):"),
        ("code", "W = steerer.W[:, 0].detach()\n"
                 "res_c = [an.cosine_per_layer(W, concepts[n], layers=steerer.layers, labels=(\"w\", n))\n"
                 "         for n in concepts]\n"
                 "plot.cosine_plot(res_c, title=\"cos(w_l, concept direction) per layer\")"),
        ("md", "## ReFT: a learned direction instead of a probe\nSame form `h + (w.h + b) u` but `u` "
               "is learned; on a few layers (cheap), compare `u_l` with the probe `v_l`."),
        ("code", "reft_layers = layers[:3] if SMALL else layers[6:24:6]\n"
                 "reft = cl.ReFTSteerer(model, layers=reft_layers, seed=0)\n"
                 "h_reft = cl.train(model, reft, train_set, valid_set, epochs=EPOCHS, progress=False)\n"
                 'print(f"ReFT valid NLL {h_reft.valid_losses[0]:.3f} -> {h_reft.best_valid_loss:.3f}")\n'
                 "u_vs_v = an.cosine_per_layer(reft.V[:, 0].detach(), dirs[\"mean_diff\"], layers=reft_layers,\n"
                 "                             labels=(\"u (ReFT)\", \"v (probe)\"))\n"
                 "print(u_vs_v.summary())\n"
                 "plot.cosine_plot(u_vs_v)"),
        ("code", FOOTER),
    ]


def nb_layer_sweeps():
    return [
        ("md", "# 04 · Layer sweeps: where does steering work?\n\n"
               "* **LAS** (constant `h + c v_l`) at one layer at a time, over a grid of `c`: a "
               "layer x coefficient map of the completion NLL (cached residuals make this cheap);\n"
               "* **CLAS** trained at one layer at a time, and on the first `k` layers;\n"
               "* **dose-response**: the trained CLAS steerer scaled by 0 ... 2."),
        ("code", SETUP), ("code", SIZES), ("code", LOAD),
        ("code", 'dirs = cl.fit_directions(model, contrast, method="mean_diff", layers=LAYERS, progress=False)\n'
                 "layers = dirs.layers\n"
                 "acts = cl.resid_activations(model, valid_set.prompts, layers)\n"
                 "norm = acts.norm(dim=-1).mean(0)          # mean residual norm per layer\n"
                 'print("mean |h| per layer:", [round(float(x)) for x in norm])'),
        ("md", "## LAS, one layer at a time\nCoefficients in units of the mean residual norm "
               "(negative `c` pushes away from the concept)."),
        ("code", "sweep_layers = layers if SMALL else layers[1::3]\n"
                 "ref = float(norm.mean())\n"
                 "fractions = [-0.25, 0.1, 0.5] if SMALL else [-0.25, 0.05, 0.1, 0.2, 0.35, 0.5]\n"
                 "coefs = [round(f * ref, 2) for f in fractions]\n"
                 "las = an.layer_sweep_las(model, dirs, valid_set, coefs, layers=sweep_layers)\n"
                 'print(f"unsteered NLL {las.baseline:.3f}; best {las.best()}; {las.seconds:.0f}s")\n'
                 "gain = float((las.nll - las.baseline).min())   # colour limit: keep small gains visible\n"
                 "plot.sweep_plot(las, vmax=max(0.25, 4 * abs(gain)) if gain < 0 else None)"),
        ("code", "plot.sweep_curves(las.layers, las.nll, coefficients=las.coefficients, baseline=las.baseline,\n"
                 '                  title="LAS one layer at a time: valid NLL per layer")'),
        ("md", "## CLAS, one layer at a time\nEach point is a separate steerer trained on a single layer "
               "(best valid NLL, `SWEEP_EPOCHS` epochs each)."),
        ("code", "clas_layers = layers[:2] if SMALL else layers[2::6]\n"
                 "one = an.layer_sweep_clas(model, dirs, train_set, valid_set, layers=clas_layers,\n"
                 "                          epochs=SWEEP_EPOCHS)\n"
                 'print(f"best {one.best()}; {one.seconds:.0f}s")\n'
                 "plot.sweep_plot(one)"),
        ("md", "## CLAS on the first k layers"),
        ("code", "ks = [1, 2] if SMALL else [1, 8, 16, len(layers)]\n"
                 "cum = an.cumulative_sweep_clas(model, dirs, train_set, valid_set, ks=ks, epochs=SWEEP_EPOCHS)\n"
                 "plot.sweep_plot(cum)"),
        ("md", "## Dose-response of a trained CLAS steerer\n`scale` multiplies every `alpha`: 1 is the "
               "trained steerer, 0 the unsteered model."),
        ("code", "steerer = cl.CLASSteerer(dirs)\n"
                 "hist = cl.train(model, steerer, train_set, valid_set, epochs=EPOCHS, progress=False)\n"
                 "scales = [0, 1] if SMALL else [0, 0.5, 1, 2, 3]\n"
                 "cheer = lambda texts: sum(t.count(\"!\") for t in texts) / max(1, len(texts))  # a crude score\n"
                 "dr = an.dose_response(model, steerer, valid_set, scales, behaviour=cheer,\n"
                 "                      prompts=test_prompts[:2], max_new_tokens=MAX_NEW)\n"
                 "for s, t in zip(dr[\"scales\"], dr[\"texts\"]):\n"
                 '    print(f"scale {s}: {t[0][:100]!r}")\n'
                 "plot.dose_response_plot(dr, title=\"valid NLL and '!' per answer vs steering scale\")"),
        ("code", FOOTER),
    ]


def nb_attribution():
    return [
        ("md", "# 05 · Attribution: why does the steering switch on?\n\n"
               "`alpha_{l,t} = w_l . h_{l,t} + b_l` is linear in the residual stream, and the residual "
               "is a sum of components (embedding, each attention head, each MLP, earlier steering "
               "edits). So `alpha` splits **exactly** into `b_l + sum_c w_l . c`: which heads and MLPs "
               "make the steerer fire on this token?"),
        ("code", SETUP), ("code", SIZES), ("code", LOAD),
        ("code", 'dirs = cl.fit_directions(model, contrast, method="mean_diff", layers=LAYERS, progress=False)\n'
                 "steerer = cl.CLASSteerer(dirs)\n"
                 "hist = cl.train(model, steerer, train_set, valid_set, epochs=EPOCHS, progress=False)\n"
                 "res = cl.generate(model, steerer, test_prompts[:2], max_new_tokens=MAX_NEW, progress=False)\n"
                 "print(res.texts[0])"),
        ("md", "## Pick a token: the largest `|alpha|` among the answer tokens"),
        ("code", "prof = an.layer_profile(res, generated_only=True)\n"
                 "layer = res.layers[int(prof.argmax())]\n"
                 "j = res.layers.index(layer)\n"
                 "s = res.strengths[0, :, j].abs().masked_fill(~res.generated_mask()[0], -1)\n"
                 "pos = int(s.argmax())\n"
                 "ids = res.token_ids[0][: pos + 1]\n"
                 'print(f"layer {layer}, position {pos}, token {plot.token_label(res.str_tokens[0][pos])!r}, '
                 'alpha {float(res.strengths[0, pos, j]):+.3f}")\n'
                 "plot.show_tokens(res, 0, layer);"),
        ("md", "## Decompose it"),
        ("code", "attrs = an.attribute_layers(model, steerer, ids, position=pos)\n"
                 "attr = attrs[res.layers.index(layer)]\n"
                 'print(f"alpha {attr.alpha:+.4f} = bias {attr.bias:+.4f} + components -> {attr.total:+.4f} '
                 '(residual error {attr.residual_error:.1e})")\n'
                 "print(\"grouped:\", {k: round(v, 3) for k, v in attr.grouped().items()})\n"
                 "plot.attribution_plot(attr, top=20)"),
        ("code", "plot.attribution_plot(attr, grouped=True)"),
        ("md", "## The same token at every steered layer\nStacked contributions per kind (bars) and "
               "alpha (line): where in depth does the trigger build up, and how much do earlier "
               "steering edits feed later strengths?"),
        ("code", "plot.attribution_layers_plot(attrs)"),
        ("md", "## What does the top head look at?"),
        ("code", "heads = [(n, v) for n, v in an.top_components(attr, 40) if \".H\" in n]\n"
                 "name, value = heads[0]\n"
                 "k, h = int(name.split(\".\")[0][1:]), int(name.split(\".H\")[1])\n"
                 "src = an.head_attention_sources(model, ids, k, h, position=pos, steerer=steerer, k=8)\n"
                 'print(f"{name} contributes {value:+.3f}; it attends to:")\n'
                 "for r in src:\n"
                 '    print(f"  pos {r[\'position\']:3d} {plot.token_label(r[\'token\'])!r:18s} weight {r[\'weight\']:.3f}")'),
        ("md", "## High- vs low-alpha tokens\nThe same decomposition for the answer token with the "
               "smallest alpha at that layer, grouped by kind."),
        ("code", "s_low = res.strengths[0, :, j].masked_fill(~res.generated_mask()[0], float(\"inf\"))\n"
                 "pos_low = int(s_low.argmin())\n"
                 "low = an.attribute_strength(model, steerer, res.token_ids[0][: pos_low + 1], layer=layer,\n"
                 "                            position=pos_low)\n"
                 "for a in (attr, low):\n"
                 '    print(f"{plot.token_label(a.token)!r:14s} alpha {a.alpha:+.3f}  ",\n'
                 "          {k: round(v, 3) for k, v in a.grouped().items()})\n"
                 "plot.attribution_plot(low, top=15)"),
        ("code", FOOTER),
    ]


NOTEBOOKS = {
    "01_quickstart": nb_quickstart,
    "02_token_strengths": nb_token_strengths,
    "03_directions": nb_directions,
    "04_layer_sweeps": nb_layer_sweeps,
    "05_attribution": nb_attribution,
}


def build(name: str) -> nbformat.NotebookNode:
    cells = []
    for kind, src in NOTEBOOKS[name]():
        cells.append(new_markdown_cell(src) if kind == "md" else new_code_cell(src))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb, *, size: str, cwd: Path, timeout: int = 1200) -> float:
    """Run ``nb`` in place with ``CLAS_LENS_NB_SIZE=size``; returns seconds."""
    from nbclient import NotebookClient

    old = os.environ.get("CLAS_LENS_NB_SIZE")
    os.environ["CLAS_LENS_NB_SIZE"] = size
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        if old is None:
            os.environ.pop("CLAS_LENS_NB_SIZE", None)
        else:
            os.environ["CLAS_LENS_NB_SIZE"] = old
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--execute", action="store_true")
    p.add_argument("--size", default="full", choices=["small", "full"])
    p.add_argument("--only", default=None, help="comma-separated name prefixes")
    p.add_argument("--out", default=str(HERE), help="folder for the .ipynb files")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in NOTEBOOKS
             if args.only is None or any(n.startswith(o) for o in args.only.split(","))]
    timings_path = HERE / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for name in names:
        nb = build(name)
        if args.execute:
            secs = execute(nb, size=args.size, cwd=out)
            timings.setdefault(name, {})[args.size] = round(secs, 1)
            print(f"{name}: {secs:.0f}s ({args.size})", flush=True)
        nbformat.write(nb, out / f"{name}.ipynb")
    if args.execute and out.resolve() == HERE:
        timings_path.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
