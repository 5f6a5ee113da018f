"""The tutorial notebooks: in sync with notebooks/build.py, committed with outputs and
no errors, and each one runs end to end (CLAS_LENS_NB_SIZE=small) in a temp copy."""

from __future__ import annotations

import importlib.util
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
