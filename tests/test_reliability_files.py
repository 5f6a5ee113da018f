"""Reliability (issue 7), files: atomic saves, tamper-evident loads, safetensors only.

An artifact is ``cfg.json`` + ``weights-<hash>.safetensors``. A crash mid-save leaves
the previous artifact loadable; a truncated or modified file (weights or cfg) is
refused with an ``ArtifactError`` that names it; nothing is ever unpickled.
"""

import hashlib
import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from conftest import random_directions, randomize
from safetensors.torch import save as st_save

import clas_lens as cl
from clas_lens import io
from clas_lens.configs import ProbeFit


@pytest.fixture()
def saved(tiny, tmp_path):
    st = randomize(cl.CLASSteerer(random_directions(tiny, seed=41)), seed=42)
    st.save(tmp_path / "st")
    return st, tmp_path / "st"


def _weights(folder: Path) -> Path:
    return next(folder.glob("weights-*.safetensors"))


def _cfg(folder: Path) -> dict:
    return json.loads((folder / "cfg.json").read_text(encoding="utf-8"))


def _craft(folder: Path, cfg: dict, data: bytes | None = None) -> None:
    """Rewrite an artifact consistently (hashes recomputed): a deliberate forgery."""
    if data is not None:
        (folder / cfg["weights_file"]).write_bytes(data)
        cfg["weights_sha256"] = hashlib.sha256(data).hexdigest()
    cfg[io.CFG_HASH_KEY] = io.cfg_digest(cfg)
    (folder / "cfg.json").write_text(json.dumps(cfg), encoding="utf-8")


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- atomic saves ---------------------------------------------------------------

def test_crash_while_replacing_cfg_keeps_previous_artifact(tiny, saved, monkeypatch):
    st, folder = saved
    before = (folder / "cfg.json").read_bytes()
    real = os.replace

    def crash(src, dst):
        if Path(dst).name == "cfg.json":
            raise OSError("disk full (simulated)")
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", crash)
    new = randomize(cl.CLASSteerer(random_directions(tiny, seed=41)), seed=99)
    with pytest.raises(OSError, match="simulated"):
        new.save(folder)
    monkeypatch.setattr(io.os, "replace", real)
    assert (folder / "cfg.json").read_bytes() == before
    assert _same(cl.load_steerer(folder, model=tiny), st)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    new.save(folder)  # a later save succeeds and cleans the orphaned weights
    assert len(list(folder.glob("weights-*.safetensors"))) == 1
    assert _same(cl.load_steerer(folder, model=tiny), new)


def test_interrupt_while_writing_weights_keeps_previous_artifact(tiny, saved, monkeypatch):
    st, folder = saved
    listing = sorted(p.name for p in folder.iterdir())

    def boom(fd):
        raise KeyboardInterrupt("killed during fsync")

    monkeypatch.setattr(io.os, "fsync", boom)
    new = randomize(cl.CLASSteerer(random_directions(tiny, seed=41)), seed=7)
    with pytest.raises(KeyboardInterrupt, match="killed during fsync"):
        new.save(folder)
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == listing  # temp file removed
    assert _same(cl.load_steerer(folder, model=tiny), st)


def test_directions_save_is_atomic_too(tiny, tmp_path, monkeypatch):
    d = random_directions(tiny, seed=3)
    d.save(tmp_path / "d")
    monkeypatch.setattr(io.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError, match="crash"):
        random_directions(tiny, seed=4).save(tmp_path / "d")
    monkeypatch.undo()
    assert torch.equal(cl.load_directions(tmp_path / "d", model=tiny).vectors, d.vectors)


def test_saving_onto_a_file_is_refused(tiny, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(cl.ArtifactError, match=r"f exists and is not a folder"):
        cl.CLASSteerer(random_directions(tiny)).save(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"


# ---- truncated / tampered / missing files ----------------------------------------

def test_truncated_weights(saved):
    _, folder = saved
    w = _weights(folder)
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(cl.ArtifactError, match=r"weights-.*\.safetensors does not match the hash "
                                               r"recorded in cfg\.json: truncated or modified"):
        cl.load_steerer(folder)


def test_flipped_byte_in_weights(saved):
    _, folder = saved
    w = _weights(folder)
    data = bytearray(w.read_bytes())
    data[-3] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(cl.ArtifactError, match="truncated or modified"):
        cl.load_steerer(folder)


def test_truncated_cfg(saved):
    _, folder = saved
    p = folder / "cfg.json"
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(cl.ArtifactError, match=r"cfg\.json is not valid JSON \(truncated or "
                                               r"modified\?\)"):
        cl.load_steerer(folder)


def test_edited_cfg_is_detected(tiny, saved):
    _, folder = saved
    cfg = _cfg(folder)
    cfg["layers"] = [0, 1]
    cfg["directions"][0]["concept"] = "edited by hand"
    (folder / "cfg.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(cl.ArtifactError, match=r"cfg\.json does not match its recorded "
                                               r"cfg_sha256: it was modified after saving"):
        cl.load_steerer(folder, model=tiny)


def test_missing_pieces(saved, tmp_path):
    _, folder = saved
    with pytest.raises(cl.ArtifactError, match=r"is not a clas_lens artifact: cfg\.json is missing"):
        cl.load_steerer(tmp_path / "nowhere")
    _weights(folder).unlink()
    with pytest.raises(cl.ArtifactError, match=r"weights-.*\.safetensors is missing"):
        cl.load_steerer(folder)


def test_old_artifacts_without_cfg_hash_still_load(tiny, saved):
    st, folder = saved
    cfg = _cfg(folder)
    del cfg[io.CFG_HASH_KEY]
    (folder / "cfg.json").write_text(json.dumps(cfg), encoding="utf-8")
    assert _same(cl.load_steerer(folder, model=tiny), st)


# ---- forged but self-consistent artifacts --------------------------------------------

def test_weights_path_outside_the_folder_refused(saved):
    _, folder = saved
    cfg = _cfg(folder)
    cfg["weights_file"] = "../elsewhere.safetensors"
    _craft(folder, cfg)
    with pytest.raises(cl.ArtifactError, match="must be a .safetensors file inside the artifact"):
        cl.load_steerer(folder)


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["CLAS_LENS_PICKLE_MARKER"]),))


def test_a_pickle_is_never_loaded(saved, tmp_path, monkeypatch):
    _, folder = saved
    marker = tmp_path / "pickle-ran"
    monkeypatch.setenv("CLAS_LENS_PICKLE_MARKER", str(marker))
    data = pickle.dumps({"W": _Payload()})
    _craft(folder, _cfg(folder), data)
    with pytest.raises(cl.ArtifactError, match="cannot be read as safetensors"):
        cl.load_steerer(folder)
    assert not marker.exists()
    # and the package never calls a pickle loader
    src = Path(cl.__file__).parent
    for f in src.rglob("*.py"):
        text = f.read_text(encoding="utf-8")
        assert not re.search(r"torch\.load\(|pickle\.loads?\(|weights_only\s*=\s*False", text), f


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loaded_parameters_refused(saved, value):
    st, folder = saved
    sd = {k: v.clone() for k, v in st.state_dict().items()}
    sd["W"][0, 0, 1] = value
    _craft(folder, _cfg(folder), st_save(sd))
    with pytest.raises(cl.ArtifactError, match=r"loading .*st: tensor 'W' contains NaN or infinite"):
        cl.load_steerer(folder)


def test_tensors_that_do_not_fit_the_kind(saved):
    st, folder = saved
    sd = {k: v.clone() for k, v in st.state_dict().items()}
    sd["W"] = sd["W"][:, :, :5].contiguous()
    _craft(folder, _cfg(folder), st_save(sd))
    with pytest.raises(cl.ArtifactError, match="tensors do not fit a clas steerer"):
        cl.load_steerer(folder)


def test_unknown_kind_and_missing_keys(tiny, saved, tmp_path):
    _, folder = saved
    cfg = _cfg(folder)
    cfg["kind"] = "magic"
    _craft(folder, cfg)
    with pytest.raises(cl.ArtifactError, match=r"unknown steerer kind 'magic'; known: \["):
        cl.load_steerer(folder)
    cfg["kind"] = "clas"
    del cfg["layers"]
    _craft(folder, cfg)
    with pytest.raises(cl.ArtifactError, match=r"steerer cfg\.json: missing key\(s\) \['layers'\]"):
        cl.load_steerer(folder)
    d = random_directions(tiny)
    d.save(tmp_path / "d")
    with pytest.raises(cl.ArtifactError, match=r"unknown steerer kind 'directions'"):
        cl.load_steerer(tmp_path / "d")
    cfg = _cfg(tmp_path / "d")
    with pytest.raises(cl.ArtifactError, match=r"holds a 'directions', expected a 'clas'"):
        io.load_artifact(tmp_path / "d", kind="clas")
    del cfg["d_model"]
    _craft(tmp_path / "d", cfg)
    with pytest.raises(cl.ArtifactError, match=r"directions .*: missing key\(s\) \['d_model'\]"):
        cl.load_directions(tmp_path / "d")


def test_forged_directions_shapes_and_hooks(tiny, tmp_path):
    d = random_directions(tiny)
    d.save(tmp_path / "d")
    cfg = _cfg(tmp_path / "d")
    cfg["layers"] = [0, 1]
    cfg["hook_names"] = cfg["hook_names"][:2]
    _craft(tmp_path / "d", cfg)
    with pytest.raises(cl.ArtifactError, match=r"vectors must be \[len\(layers\), d_model\]"):
        cl.load_directions(tmp_path / "d")
    cfg["layers"] = [0, 1, 2]
    cfg["hook_names"] = ["blocks.0.hook_resid_pre"] + cfg["hook_names"][1:] + ["blocks.2.hook_resid_post"]
    _craft(tmp_path / "d", cfg)
    with pytest.raises(cl.ArtifactError, match="hook_names .* do not match layers"):
        cl.load_directions(tmp_path / "d")


def test_steerer_hook_points_missing_on_the_model(tiny, saved):
    _, folder = saved
    cfg = _cfg(folder)
    cfg["hook_names"] = ["blocks.0.hook_nope"] + cfg["hook_names"][1:]
    _craft(folder, cfg)
    with pytest.raises(cl.ArtifactError, match=r"uses hook point\(s\) \['blocks\.0\.hook_nope'\] "
                                               r"that this model does not have"):
        cl.load_steerer(folder, model=tiny)


def test_every_artifact_records_versions(tiny, saved, tmp_path):
    _, folder = saved
    random_directions(tiny).save(tmp_path / "d")
    for f in (folder, tmp_path / "d"):
        v = _cfg(f)["versions"]
        assert set(v) >= {"clas_lens", "torch", "transformer_lens", "python"}
        assert v["clas_lens"] == cl.__version__ and v["torch"] == torch.__version__


# ---- typed configs: unknown keys refused, the earlier cfg.json layout still loads ------

def test_unknown_cfg_keys_are_refused(tiny, saved, tmp_path):
    _, folder = saved
    cfg = _cfg(folder)
    cfg["colour"] = "red"
    _craft(folder, cfg)
    with pytest.raises(cl.ArtifactError, match=r"st: steerer cfg\.json: unknown key\(s\) \['colour'\]"):
        cl.load_steerer(folder)
    cfg = _cfg(folder)
    del cfg["colour"]
    cfg["directions"][0]["note"] = "x"
    _craft(folder, cfg)
    with pytest.raises(cl.ArtifactError, match=r"directions provenance: unknown key\(s\) \['note'\]"):
        cl.load_steerer(folder)
    random_directions(tiny).save(tmp_path / "d")
    cfg = _cfg(tmp_path / "d")
    cfg["fit"] = {"position": "last", "seed": 0}
    _craft(tmp_path / "d", cfg)
    with pytest.raises(cl.ArtifactError, match=r"probe fit settings: missing key\(s\) "
                                               r"\['holdout', 'n_fit', 'n_heldout'\]"):
        cl.load_directions(tmp_path / "d")


def test_steerer_hook_names_must_fit_kind_and_layers(tiny, saved):
    _, folder = saved
    cfg = _cfg(folder)
    cfg["hook_names"] = [n.replace("resid_post", "resid_pre") for n in cfg["hook_names"]]
    _craft(folder, cfg)
    with pytest.raises(cl.ArtifactError, match=r"hook_names .* do not match a clas steerer of layers"):
        cl.load_steerer(folder, model=tiny)


def _old_layout(st) -> dict:
    """The cfg.json the earlier version wrote: provenance in a loose ``extra`` dict, no rank."""
    cfg = st.cfg
    extra = {k: v for k, v in (("seed", cfg.seed), ("lora_alpha", cfg.lora_alpha),
                                ("d_mlp", cfg.d_mlp)) if v is not None}
    if cfg.directions is not None:
        extra["directions"] = [{"method": d.method, "concept": d.concept, "layers": d.layers}
                               for d in cfg.directions]
    if st.kind == "clas":
        extra["train"] = {"epochs": 8, "lr": {"W": 3e-3, "b": 0.1}, "seed": 0, "batch_size": 4,
                          "best_epoch": 3, "best_valid_loss": 1.25}
    return {"kind": st.kind, "layers": st.layers, "hook_names": st.hook_names,
            "model_name": cfg.model_name, "n_layers": cfg.n_layers, "d_model": cfg.d_model,
            "extra": extra}


def test_artifacts_of_the_earlier_cfg_layout_still_load(tiny, tmp_path):
    dirs = [random_directions(tiny, seed=1), random_directions(tiny, seed=2)]
    steerers = [cl.CLASSteerer(dirs), cl.ReFTSteerer(tiny, rank=2, seed=3), cl.LASSteerer(dirs[0]),
                cl.LayerwiseLASSteerer(dirs[0], layers=[1, 2]),
                cl.LoRASteerer(tiny, layers=[0], rank=3, lora_alpha=4.0, seed=5)]
    for st in steerers:
        randomize(st, seed=6)
        io.save_artifact(tmp_path / st.kind, dict(st.state_dict()), _old_layout(st))
        back = cl.load_steerer(tmp_path / st.kind, model=tiny)
        assert type(back) is type(st) and _same(back, st), st.kind
        assert back.rank == st.rank and back.cfg.seed == st.cfg.seed, st.kind
        assert back.cfg.lora_alpha == st.cfg.lora_alpha and back.cfg.directions == st.cfg.directions
    clas = cl.load_steerer(tmp_path / "clas")
    assert clas.rank == 2 and clas.cfg.training.best_epoch == 3
    assert clas.cfg.training.best_valid_loss == 1.25 and clas.cfg.training.settings["batch_size"] == 4
    d = dirs[0]
    old = {"kind": "directions", "method": "rfm", "layers": d.layers, "hook_names": d.hook_names,
           "model_name": d.model_name, "n_layers": d.n_layers, "d_model": d.d_model,
           "concept": "positive", "meta": {"position": "last", "seed": 7, "holdout": 0.25,
                                           "n_fit": 30, "n_heldout": 10, "truncate": False}}
    io.save_artifact(tmp_path / "d", {"vectors": d.vectors, "accuracy": d.accuracy}, old)
    back = cl.load_directions(tmp_path / "d", model=tiny)
    assert torch.equal(back.vectors, d.vectors) and back.method == "rfm"
    assert back.fit == ProbeFit(position="last", seed=7, holdout=0.25, n_fit=30, n_heldout=10)


def test_new_layout_round_trips_every_field(tiny, tmp_path):
    st = cl.LoRASteerer(tiny, layers=[1], rank=2, lora_alpha=3.0, seed=4)
    st.record_training({"epochs": 2, "seed": 1, "best_epoch": 1, "best_step": 3,
                        "best_valid_loss": None})
    st.save(tmp_path / "st")
    raw = _cfg(tmp_path / "st")
    assert {k: raw[k] for k in ("rank", "d_mlp", "lora_alpha", "seed")} == {
        "rank": 2, "d_mlp": 2 * tiny.cfg.d_model, "lora_alpha": 3.0, "seed": 4}
    assert raw["training"] == {"settings": {"epochs": 2, "seed": 1}, "best_epoch": 1,
                               "best_step": 3, "best_valid_loss": None}
    assert cl.load_steerer(tmp_path / "st").cfg == st.cfg
    assert cl.SteererConfig.from_dict(st.cfg.to_dict()) == st.cfg
