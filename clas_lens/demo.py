"""The demo: directions -> CLAS steerer -> steered answers -> strength heatmaps.

Runs offline on the embedded SmolLM2-135M-Instruct in a few minutes on 2 CPU cores:

    clas-lens demo            # or: make demo
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path


def _side_by_side(prompt: str, base: str, steered: str, width: int = 48) -> str:
    left = textwrap.wrap(base.strip() or "(empty)", width)
    right = textwrap.wrap(steered.strip() or "(empty)", width)
    rows = [f"PROMPT: {prompt}", f"{'unsteered':<{width}} | CLAS-steered", "-" * (2 * width + 3)]
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        rows.append(f"{a:<{width}} | {b}")
    return "\n".join(rows)


def run_demo(concept: str = "data/positive", out: str = "figures", *, epochs: int = 8,
             max_new_tokens: int = 40, method: str = "rfm", n_show: int = 4, seed: int = 0,
             model=None, report: bool = True) -> dict:
    """Fit directions for a concept, train CLAS, compare answers, write heatmaps and the report.

    Args:
        concept: a ``data/<concept>`` folder (``contrast.jsonl`` + ``pairs.jsonl``).
        out: folder for ``demo_strengths.png`` and ``demo_strengths.html``.
        epochs: training epochs.
        max_new_tokens: tokens per answer.
        method: direction method.
        n_show: held-out prompts to answer.
        seed: seed of the split and the training.
        model: a loaded model (default: the embedded one).
        report: also train a layerwise LAS steerer (at most 4 epochs) to compare with and write
            ``demo_report.html`` (:func:`clas_lens.report` on 3 held-out prompts, 24 new tokens).

    Returns:
        A dict with the directions, steerer, history and both generation results.
    """
    import clas_lens as cl
    from clas_lens.plot import strength_heatmap

    t0 = time.perf_counter()
    print("Loading the embedded model (offline) ...", flush=True)
    model = model if model is not None else cl.load_model()
    contrast, steer = cl.load_concept(concept)
    print(f"Concept {contrast.name!r}: {len(contrast)} contrast prompts, "
          f"{len(steer.train)} train / {len(steer.valid)} valid / {len(steer.test)} test pairs")

    dirs = cl.fit_directions(model, contrast, method=method, seed=seed)
    print(f"\nHeld-out probe accuracy per layer ({method}):")
    for l, a in zip(dirs.layers, dirs.accuracy.tolist()):
        print(f"  layer {l:2d}  {a:.2f}  {'#' * round(20 * a)}")

    steerer = cl.CLASSteerer(dirs)
    hist = cl.train(model, steerer, steer.train, steer.valid, epochs=epochs, seed=seed)
    print(f"\nCLAS trained in {hist.seconds:.0f} s: valid loss {hist.valid_losses[0]:.3f} -> "
          f"{hist.best_valid_loss:.3f} (best epoch {hist.best_epoch})")

    prompts = steer.test.prompts[:n_show]
    kw = dict(max_new_tokens=max_new_tokens, repetition_penalty=1.2, progress=False)
    base = cl.generate(model, None, prompts, **kw)
    steered = cl.generate(model, steerer, prompts, **kw)
    print("\nHeld-out prompts, greedy decoding (repetition penalty 1.2):\n")
    for p, a, b in zip(prompts, base.texts, steered.texts):
        print(_side_by_side(p, a, b) + "\n")

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"CLAS strength alpha (tokens x layers), concept {contrast.name!r}"
    fig = strength_heatmap(steered, 0, title=title, backend="matplotlib")
    fig.savefig(out_dir / "demo_strengths.png", dpi=120, bbox_inches="tight")
    strength_heatmap(steered, 0, title=title).write_html(
        out_dir / "demo_strengths.html", include_plotlyjs=True)
    print(f"Wrote {out_dir / 'demo_strengths.png'} and {out_dir / 'demo_strengths.html'}")
    if report:
        print("\nThe report: layerwise LAS to compare with, attribution of every answer token ...")
        las = cl.LayerwiseLASSteerer(dirs)
        cl.train(model, las, steer.train, steer.valid, epochs=min(epochs, 4), seed=seed, progress=False)
        cl.report(model, steerer, prompts[:3], out=out_dir / "demo_report.html", directions=dirs,
                  pairs=steer.valid.pairs, other=las, other_name="layerwise LAS", max_new_tokens=24)
        print(f"Wrote {out_dir / 'demo_report.html'} (open it in a browser; it needs no network)")
    print(f"{time.perf_counter() - t0:.0f} s in all")
    return {"directions": dirs, "steerer": steerer, "history": hist, "base": base,
            "steered": steered}
