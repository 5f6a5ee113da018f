"""Reliability (issue 7), the command line: ``--help`` for every command, usage errors
exit 2 with the usage line, failures exit 1 with one ``clas-lens CMD: error: ...``
line, an interrupt exits 130; ``train`` records the seed and versions it ran with.

``main`` runs in-process; the model is replaced by the tiny fixture where needed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import n_hooks

import clas_lens as cl
from clas_lens import cli

COMMANDS = ["demo", "train", "bench", "figures"]


def _run(capsys, argv):
    """``(exit status, stdout, stderr)`` of ``clas-lens argv``."""
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture()
def concept(tmp_path):
    """A small valid data/<concept> folder."""
    folder = tmp_path / "toy"
    folder.mkdir()
    words = ["cats", "dogs", "rain", "Paris", "music", "cake"]
    with open(folder / "contrast.jsonl", "w", encoding="utf-8") as fh:
        for w in words:
            fh.write(json.dumps({"prompt": f"Describe {w}.", "label": 0}) + "\n")
            fh.write(json.dumps({"prompt": f"Describe {w} cheerfully!", "label": 1}) + "\n")
    with open(folder / "pairs.jsonl", "w", encoding="utf-8") as fh:
        for i, split in enumerate(["train", "train", "valid", "test"]):
            fh.write(json.dumps({"prompt": f"Tell me about {words[i]}", "completion": "Wonderful!",
                                 "split": split}) + "\n")
    return folder


@pytest.fixture()
def tiny_model(tiny, monkeypatch):
    monkeypatch.setattr(cl, "load_model", lambda name=None, **kw: tiny)
    return tiny


# ---- help ----------------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
def test_help_for_every_command(capsys, command):
    rc, out, _ = _run(capsys, [command, "--help"])
    assert rc == 0
    assert out.startswith(f"usage: clas-lens {command}")


def test_top_level_help_lists_commands(capsys):
    rc, out, _ = _run(capsys, ["--help"])
    assert rc == 0 and all(c in out for c in COMMANDS)


# ---- usage errors: exit 2 -------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    ([], "the following arguments are required: COMMAND"),
    (["fly"], "argument COMMAND: invalid choice: 'fly'"),
    (["train"], "the following arguments are required: source, --out"),
    (["train", "data/positive"], "the following arguments are required: --out"),
    (["train", "data/positive", "--out", "x", "--layers", "1,a"],
     "argument --layers: '1,a': expected comma-separated layer numbers"),
    (["train", "data/positive", "--out", "x", "--layers", ""],
     "argument --layers: '': expected comma-separated layer numbers"),
    (["train", "data/positive", "--out", "x", "--layers", "1,,2"],
     "argument --layers: '1,,2': expected comma-separated layer numbers"),
    (["train", "data/positive", "--out", "x", "--epochs", "-1"],
     "argument --epochs: -1 is less than 0"),
    (["train", "data/positive", "--out", "x", "--epochs", "two"],
     "argument --epochs: 'two' is not an integer"),
    (["train", "data/positive", "--out", "x", "--seed", "-5"], "argument --seed: -5 is less than 0"),
    (["train", "data/positive", "--out", "x", "--method", "magic"],
     "argument --method: unknown direction method 'magic' (choose from logistic, mean_diff, pca, rfm)"),
    (["train", "data/positive", "--out", "x", "--bogus"], "unrecognized arguments: --bogus"),
    (["demo", "--method", "magic"], "argument --method: unknown direction method 'magic'"),
    (["demo", "--epochs", "-2"], "argument --epochs: -2 is less than 0"),
    (["demo", "--max-new-tokens", "0"], "argument --max-new-tokens: 0 is less than 1"),
    (["bench", "--methods", "clas,magic"], "argument --methods: unknown method(s) ['magic']"),
    (["bench", "--direction-method", "magic"],
     "argument --direction-method: unknown direction method 'magic'"),
    (["bench", "--gen-rows", "0"], "argument --gen-rows: 0 is less than 1"),
    (["figures", "--quick", "extra"], "unrecognized arguments: extra"),
])
def test_usage_errors_exit_2(capsys, argv, message):
    rc, out, err = _run(capsys, argv)
    assert rc == 2
    assert "usage: clas-lens" in err and message in err
    assert out == ""


def test_bench_without_csv_exits_2(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_default_bench_path", lambda: [])
    rc, _, err = _run(capsys, ["bench"])
    assert rc == 2 and "no CSV given and ../shared/benchmarks not found" in err


# ---- failures: exit 1 with one clear line --------------------------------------------------

def test_train_missing_source(capsys, tmp_path, tiny_model):
    rc, _, err = _run(capsys, ["train", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 1
    assert err.strip() == f"clas-lens train: error: {tmp_path / 'nope'}: no such file or folder"


def test_train_wrong_kind_of_source(capsys, tmp_path, tiny_model):
    src = tmp_path / "notes.txt"
    src.write_text("hello")
    rc, _, err = _run(capsys, ["train", str(src), "--out", str(tmp_path / "o")])
    assert rc == 1 and "expected a data/<concept> folder or a reference-format CSV" in err


def test_train_broken_data_names_file_and_line(capsys, concept, tmp_path, tiny_model):
    with open(concept / "pairs.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"prompt": "x", "split": "train"}\n')
    rc, _, err = _run(capsys, ["train", str(concept), "--out", str(tmp_path / "o")])
    assert rc == 1
    assert "clas-lens train: error:" in err and "pairs.jsonl, line 5: missing field 'completion'" in err
    assert not (tmp_path / "o").exists()


def test_train_out_is_a_file(capsys, concept, tmp_path, tiny_model):
    (tmp_path / "o").write_text("keep me")
    rc, _, err = _run(capsys, ["train", str(concept), "--out", str(tmp_path / "o")])
    assert rc == 1 and "exists and is not a folder" in err
    assert (tmp_path / "o").read_text() == "keep me"


def test_train_layer_out_of_range(capsys, concept, tmp_path, tiny_model):
    rc, _, err = _run(capsys, ["train", str(concept), "--out", str(tmp_path / "o"),
                               "--layers", "1,9", "--method", "mean_diff", "--epochs", "1"])
    assert rc == 1 and "layers [9] out of range: the model has layers 0..2" in err
    assert n_hooks(tiny_model) == 0


def test_train_model_not_available(capsys, concept, tmp_path):
    rc, _, err = _run(capsys, ["train", str(concept), "--out", str(tmp_path / "o"),
                               "--model", "no-such-org/no-such-model-xyz"])
    assert rc == 1
    assert "clas-lens train: error: Cannot load model 'no-such-org/no-such-model-xyz'" in err


def test_train_non_finite_loss_exits_1_and_writes_nothing(capsys, concept, tmp_path, tiny_model,
                                                         monkeypatch):
    from test_reliability_training import Poisoned

    monkeypatch.setattr(cl, "CLASSteerer", lambda dirs: Poisoned(dirs, at=1))
    rc, _, err = _run(capsys, ["train", str(concept), "--out", str(tmp_path / "o"),
                               "--method", "mean_diff", "--epochs", "2"])
    assert rc == 1 and "non-finite training loss (nan) at step 1 (epoch 1)" in err
    assert not (tmp_path / "o").exists()
    assert n_hooks(tiny_model) == 0


def test_interrupt_exits_130(capsys, concept, tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cl, "load_model", interrupted)
    rc, _, err = _run(capsys, ["train", str(concept), "--out", str(tmp_path / "o")])
    assert rc == 130 and "clas-lens train: interrupted" in err


def test_demo_bad_concept_fails_before_loading_a_model(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cl, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    rc, _, err = _run(capsys, ["demo", "--concept", str(tmp_path / "none"), "--out",
                               str(tmp_path / "figs")])
    assert rc == 1 and "contrast.jsonl: no such file" in err


# ---- success: artifacts with seed and versions ------------------------------------------

def test_train_writes_artifacts_with_seed_and_versions(capsys, concept, tmp_path, tiny_model):
    out = tmp_path / "o"
    rc, stdout, err = _run(capsys, ["train", str(concept), "--out", str(out), "--method",
                                    "mean_diff", "--epochs", "1", "--seed", "3", "--layers", "0,2"])
    assert rc == 0, err
    assert f"saved to {out}" in stdout
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["training"]["settings"]["seed"] == 3 and cfg["training"]["settings"]["epochs"] == 1
    assert cfg["training"]["best_epoch"] in (0, 1)
    assert cfg["training"]["best_valid_loss"] > 0
    assert cfg["layers"] == [0, 2]
    assert {"clas_lens", "torch", "transformer_lens", "python"} <= set(cfg["versions"])
    dcfg = json.loads((out / "directions" / "cfg.json").read_text())
    assert dcfg["fit"]["seed"] == 3 and "versions" in dcfg
    st = cl.load_steerer(out, model=tiny_model)
    assert st.layers == [0, 2]
    assert n_hooks(tiny_model) == 0


def test_console_script_exit_status(tmp_path):
    """The installed entry point passes main's status to the shell."""
    exe = Path(sys.executable).with_name("clas-lens")
    if not exe.exists():
        pytest.skip("console script not installed")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run([str(exe), "train", "data/positive", "--out", str(tmp_path / "o"),
                        "--epochs", "-1"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "argument --epochs: -1 is less than 0" in p.stderr
