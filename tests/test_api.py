"""The public surface: everything in ``__all__`` resolves, the lens modules load on use."""

import subprocess
import sys

import pytest

import clas_lens as cl


def test_all_names_resolve():
    for name in cl.__all__:
        assert getattr(cl, name) is not None, name
    for cls in (cl.LASSteerer, cl.LayerwiseLASSteerer, cl.ReFTSteerer, cl.LoRASteerer):
        assert issubclass(cls, cl.Steerer)


def test_lens_submodules_load_on_use():
    assert cl.analysis.layer_sweep_las is not None
    assert cl.plot.strength_heatmap is not None
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
