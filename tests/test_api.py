"""The public surface: ``__all__`` lists what the package defines, every submodule is a
module under its own name, the lens loads on use, no private name crosses modules."""

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
from conftest import random_directions

import clas_lens as cl

ROOT = Path(cl.__file__).parent.parent
SUBMODULES = sorted(m.name for m in pkgutil.walk_packages(cl.__path__, "clas_lens."))


def test_all_lists_the_package_names_and_each_is_clas_lens_own():
    assert len(cl.__all__) == len(set(cl.__all__))
    public = {n for n, v in vars(cl).items()
              if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public == set(cl.__all__)  # nothing exported by accident, nothing listed but missing
    for name in cl.__all__:
        obj = vars(cl)[name]
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith("clas_lens."), name
    for cls in (cl.LASSteerer, cl.LayerwiseLASSteerer, cl.ReFTSteerer, cl.LoRASteerer):
        assert issubclass(cls, cl.Steerer)
    assert cl.Recorder is importlib.import_module("clas_lens.steerers").Recorder
    assert set(cl.PROBE_METHODS) == {"mean_diff", "logistic", "pca", "rfm"}
    harness = importlib.import_module("clas_lens.bench.harness")
    assert "clas" in harness.STEERING_METHODS and "rfm" not in harness.STEERING_METHODS


def test_the_submodule_list_is_complete():
    files = sorted(p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
                   for p in (ROOT / "clas_lens").rglob("*.py") if "__pycache__" not in p.parts)
    names = sorted(f.removesuffix(".__init__") for f in files if f != "clas_lens.__init__")
    assert SUBMODULES == names
    assert {"clas_lens.training", "clas_lens.tracing", "clas_lens.losses", "clas_lens.configs",
            "clas_lens.analysis", "clas_lens.plot", "clas_lens.bench", "clas_lens.cli"} <= set(names)


@pytest.mark.parametrize("name", SUBMODULES)
def test_import_as_gives_the_module(name):
    """``import clas_lens.<name> as m`` must give the module, not a function or class of the
    same name bound in the parent package (as ``clas_lens.train`` once did)."""
    ns: dict = {}
    exec(f"import {name} as m", ns)
    assert isinstance(ns["m"], types.ModuleType), f"{name} is shadowed by {ns['m']!r}"
    assert ns["m"].__name__ == name
    for exported in getattr(ns["m"], "__all__", []):
        getattr(ns["m"], exported)  # an AttributeError names a listed but missing export


def test_lens_submodules_load_on_use():
    assert cl.analysis is sys.modules["clas_lens.analysis"]
    assert cl.analysis.layer_sweep_las.__module__ == "clas_lens.analysis.sweeps"
    assert cl.plot is sys.modules["clas_lens.plot"]
    assert cl.bench is sys.modules["clas_lens.bench"]
    with pytest.raises(AttributeError, match="no attribute 'magic'"):
        _ = cl.magic


def test_import_stays_light():
    code = ("import sys, clas_lens; "
            "print(sorted(m for m in ('plotly', 'matplotlib', 'clas_lens.analysis', "
            "'clas_lens.plot') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def private_imports(folder: Path) -> list[str]:
    """``from clas_lens... import _name`` anywhere under ``folder`` (multi-line imports too)."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("clas_lens"):
                found += [f"{path.relative_to(folder)}:{node.lineno} {node.module}.{a.name}"
                          for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    return found


def test_no_private_name_is_imported_across_modules(tmp_path):
    assert private_imports(ROOT / "clas_lens") == []
    assert private_imports(ROOT / "bench") == []
    (tmp_path / "x.py").write_text("from clas_lens.plot.common import (\n    fig,\n    _np,\n)\n")
    assert private_imports(tmp_path) == ["x.py:1 clas_lens.plot.common._np"]  # the check can fail


def test_one_loading_style_and_deprecated_aliases(tiny, tmp_path):
    d = random_directions(tiny, seed=5)
    d.save(tmp_path / "d")
    with pytest.warns(DeprecationWarning, match=r"use clas_lens\.load_directions"):
        old = cl.Directions.load(tmp_path / "d", model=tiny)
    assert old.cfg == cl.load_directions(tmp_path / "d", model=tiny).cfg == d.cfg
    directions = importlib.import_module("clas_lens.directions")
    with pytest.warns(DeprecationWarning, match="renamed PROBE_METHODS"):
        assert directions.METHODS is directions.PROBE_METHODS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cl.load_directions(tmp_path / "d")  # the current style warns nothing
