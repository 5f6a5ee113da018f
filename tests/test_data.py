"""Data sets: templates, JSONL/CSV readers, the reference CSV format."""

import csv
import json

import pytest

import clas_lens as cl
from clas_lens.data import REFERENCE_COLUMNS

COLUMNS = ["id", "x", "y", "base_template", "steer_template", "base_input", "base_label",
           "label_score", "label_accuracy", "label_instructions_template", "label_prompt_template"]


def write_reference_csv(path, n=24, eot=True):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for i in range(n):
            inp = f"item {i} {{braces}}"
            w.writerow({"id": f"r{i}", "x": f"Answer briefly: {inp}",
                        "y": f"A careful answer {i}." + ("<|eot_id|>" if eot else ""),
                        "base_template": "Answer briefly: {prompt}",
                        "steer_template": "Answer step by step: {prompt}",
                        "base_input": inp, "base_label": str(i), "label_score": "1",
                        "label_accuracy": "1", "label_instructions_template": "",
                        "label_prompt_template": ""})
    return path


def test_from_templates_pairs_and_labels():
    cs = cl.ContrastSet.from_templates(["a", "b"], "Say {prompt}.", "Shout {prompt}!")
    assert cs.prompts == ["Say a.", "Shout a!", "Say b.", "Shout b!"]
    assert cs.labels == [0, 1, 0, 1] and cs.pair_ids == [0, 0, 1, 1]


@pytest.mark.parametrize("labels,msg", [([1, 1], "only label"), ([0, 2], "0 or 1"), ([0], "labels")])
def test_contrast_set_rejects_bad_labels(labels, msg):
    with pytest.raises(cl.DataError, match=msg):
        cl.ContrastSet(["a", "b"], labels)


def test_contrast_set_rejects_empty():
    with pytest.raises(cl.DataError, match="no prompts"):
        cl.ContrastSet([], [])


def test_reference_csv_splits_and_eot(tmp_path):
    s = cl.SteerSet.from_reference_csv(write_reference_csv(tmp_path / "Toy_SteerDataset.csv"))
    assert s.name == "Toy"
    assert (len(s.train), len(s.valid), len(s.test)) == (10, 10, 4)
    assert s.train.prompts[0] == "Answer briefly: item 0 {braces}"
    assert all("<|eot_id|>" not in c for c in s.completions)
    cs = s.contrast_set()  # train and valid rows (0-19) only, base then steer template
    assert cs.prompts == [f"Answer {how}: item {i} {{braces}}" for i in range(20)
                          for how in ("briefly", "step by step")]
    assert cs.labels == [0, 1] * 20 and cs.pair_ids == [i for i in range(20) for _ in "ab"]
    held_out = s.contrast_set(splits=("test",))
    assert held_out.prompts[::2] == [f"Answer briefly: item {i} {{braces}}" for i in range(20, 24)]
    assert s.test.steer_prompts()[0] == "Answer step by step: item 20 {braces}"


@pytest.mark.parametrize("column", REFERENCE_COLUMNS)
def test_reference_csv_missing_column_named(tmp_path, column):
    """Each column the reader needs (``REFERENCE_COLUMNS``) is named when it is missing."""
    p = write_reference_csv(tmp_path / "a.csv")
    rows = list(csv.DictReader(open(p, encoding="utf-8")))
    with open(p, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=[c for c in COLUMNS if c != column])
        w.writeheader()
        for r in rows:
            r.pop(column)
            w.writerow(r)
    with pytest.raises(cl.DataError, match=rf"missing column\(s\) '{column}'"):
        cl.SteerSet.from_reference_csv(p)


def test_reference_csv_empty_target_names_row(tmp_path):
    p = write_reference_csv(tmp_path / "a.csv")
    text = open(p, encoding="utf-8").read().replace("A careful answer 3.<|eot_id|>", "")
    open(p, "w", encoding="utf-8").write(text)
    with pytest.raises(cl.DataError, match="row 3.*'y'"):
        cl.SteerSet.from_reference_csv(p)


def test_bad_encoding_named(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_bytes(b"prompt,label\n\xff\xfe bad,1\n")
    with pytest.raises(cl.DataError, match="UTF-8"):
        cl.ContrastSet.from_csv(p)


def test_jsonl_readers(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": f"p{i}", "label": i % 2}) for i in range(4)))
    cs = cl.ContrastSet.from_jsonl(p)
    assert cs.labels == [0, 1, 0, 1] and cs.pair_ids == [0, 0, 1, 1]
    q = tmp_path / "s.jsonl"
    q.write_text(json.dumps({"prompt": "a", "completion": "b", "split": "train"}) + "\n"
                 + json.dumps({"prompt": "c", "completion": "d", "split": "nope"}))
    with pytest.raises(cl.DataError, match="line 2.*split"):
        cl.SteerSet.from_jsonl(q)
    r = tmp_path / "m.jsonl"
    r.write_text(json.dumps({"prompt": "a"}))
    with pytest.raises(cl.DataError, match="line 1.*label"):
        cl.ContrastSet.from_jsonl(r)


@pytest.mark.parametrize("concept", ["positive", "formal", "french"])
def test_shipped_concepts_meet_the_minimums(concept):
    contrast, steer = cl.load_concept(f"data/{concept}")
    assert len(contrast) >= 40 and set(contrast.labels) == {0, 1}
    assert len(steer) >= 30 and len(steer.train) >= 10 and len(steer.valid) >= 10
    assert len(steer.test) >= 1
