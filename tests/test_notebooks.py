"""The tutorial notebooks: in sync with notebooks/build.py, committed with outputs and
no errors, their figures shown on GitHub and offline (no remote script, a PNG beside every
plotly output), and each one runs end to end (CLAS_LENS_NB_SIZE=small) in a temp copy."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT = 240


def _builder():
    spec = importlib.util.spec_from_file_location("nb_build", NB_DIR / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_notebooks_exist():
    names = {p.stem for p in NOTEBOOKS}
    assert names == set(_builder().NOTEBOOKS), names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_matches_build_and_has_outputs(path):
    nb = nbformat.read(path, as_version=4)
    built = _builder().build(path.stem)
    assert [c.source for c in nb.cells] == [c.source for c in built.cells], \
        f"{path.name} is stale: rerun `python notebooks/build.py --execute`"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{path.name} has unexecuted cells"
    for c in code:
        for o in c.get("outputs", []):
            assert o.get("output_type") != "error", f"{path.name}: {o.get('ename')}: {o.get('evalue')}"


PLOTLY_JSON = "application/vnd.plotly.v1+json"
# a script loaded from elsewhere: <script src="http...">, "//host/...", or require.js pointed at a CDN
REMOTE = re.compile(r"""<script[^>]*\bsrc\s*=\s*["']?(https?:)?//|require\.config\s*\(\s*\{[^}]*https?:""",
                    re.I | re.S)


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def render_problems(nb) -> list[str]:
    """Why a notebook would not show its figures on GitHub or offline: remote scripts, or a plotly
    output (plotly JSON, or HTML that draws with Plotly) without a PNG beside it."""
    problems = []
    for k, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = o.get("data", {})
            for mime in ("text/html", "application/javascript"):
                if mime in data and REMOTE.search(_text(data[mime])):
                    problems.append(f"cell {k}: {mime} output loads a remote script")
            html = _text(data.get("text/html", ""))
            if (PLOTLY_JSON in data or "Plotly.newPlot" in html) and "image/png" not in data:
                problems.append(f"cell {k}: plotly output without an image/png fallback")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_renders_anywhere(path):
    nb = nbformat.read(path, as_version=4)
    assert render_problems(nb) == [], f"{path.name}: rebuild with `python notebooks/build.py --execute`"
    n_plotly = sum(PLOTLY_JSON in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert n_plotly > 0, f"{path.name} stores no plotly figure (were its outputs rendered as HTML only?)"


def test_render_check_catches_bad_outputs():
    """The check above can fail: a CDN-loaded plotly output and a bare plotly JSON output are caught."""
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    cdn = new_output("display_data", data={"text/html": '<script src="https://cdn.plot.ly/plotly-2.min.js">'
                                                         "</script><div>Plotly.newPlot(...)</div>"})
    req = new_output("display_data", data={"text/html": "<script>require.config({paths: {plotly: "
                                                        "'https://cdn.plot.ly/plotly-2'}});</script>"})
    bare = new_output("display_data", data={PLOTLY_JSON: {"data": [], "layout": {}}})
    good = new_output("display_data", data={PLOTLY_JSON: {"data": [], "layout": {}}, "image/png": "iVBOR"})
    nb = new_notebook(cells=[new_code_cell("x", outputs=[cdn]), new_code_cell("y", outputs=[req, bare]),
                             new_code_cell("z", outputs=[good])])
    assert render_problems(nb) == [
        "cell 0: text/html output loads a remote script",
        "cell 0: plotly output without an image/png fallback",
        "cell 1: text/html output loads a remote script",
        "cell 1: plotly output without an image/png fallback",
    ]


@pytest.mark.embedded
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_small(path, tmp_path, monkeypatch):
    """Execute a temp copy (never the committed file) at the small size."""
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    monkeypatch.setenv("CLAS_LENS_NB_SIZE", "small")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # one thread per kernel: on small shared CPUs oversubscribed threads are many times slower
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(copy, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on any error
    nbformat.write(nb, copy)
    out = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                  for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert "notebook ran in" in out and "(small)" in out
