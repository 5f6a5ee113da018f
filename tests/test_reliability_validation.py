"""Reliability (issue 7), validation at the public boundary.

Every bad input gets an error whose message names the file, row/line, column,
argument or model at fault. Nothing here needs the embedded model.
"""

import json

import pytest
import torch
from conftest import n_hooks, random_directions

import clas_lens as cl
from clas_lens.data import read_csv
from clas_lens.directions import check_layers, resid_activations
from clas_lens.model import completion_ids, context_length, fit_context

CONTRAST = cl.ContrastSet.from_templates(
    ["cats", "dogs", "rain", "Paris", "the sun", "hello"], "Describe {prompt}.",
    "Describe {prompt} in a cheerful way!")


# ---- empty inputs ------------------------------------------------------------

def test_empty_prompt_lists(tiny):
    with pytest.raises(ValueError, match="no prompts given"):
        resid_activations(tiny, [])
    with pytest.raises(ValueError, match="prompts is empty"):
        cl.generate(tiny, None, [], progress=False)
    with pytest.raises(ValueError, match="prompts is empty"):
        cl.trace(tiny, None, [])
    with pytest.raises(ValueError, match=r"no \(prompt, completion\) pairs"):
        cl.completion_nll(tiny, None, [])
    with pytest.raises(ValueError, match=r"no \(prompt, completion\) pairs"):
        cl.train(tiny, cl.CLASSteerer(random_directions(tiny)), [], progress=False)
    with pytest.raises(cl.DataError, match="ContrastSet: no prompts"):
        cl.ContrastSet([], [])
    with pytest.raises(cl.DataError, match="SteerSet: no pairs"):
        cl.SteerSet([], [], [])
    with pytest.raises(cl.DataError, match="from_templates: no inputs"):
        cl.ContrastSet.from_templates([], "a {prompt}", "b {prompt}")
    assert n_hooks(tiny) == 0


def test_a_single_string_is_not_a_list_of_prompts(tiny):
    # resid_activations("hello") once read five one-letter prompts; it now means ["hello"]
    one = resid_activations(tiny, "hello", layers=[0])
    assert one.shape == (1, 1, tiny.cfg.d_model)
    with pytest.raises(cl.DataError, match="list of strings, not one string"):
        cl.ContrastSet("ab", [0, 1])
    with pytest.raises(TypeError, match="prompt 1 is a int"):
        resid_activations(tiny, ["hello", 3])


def test_empty_and_non_text_prompts_in_sets():
    with pytest.raises(cl.DataError, match="ContrastSet prompt 1: empty"):
        cl.ContrastSet(["a", "  "], [0, 1])
    with pytest.raises(cl.DataError, match="SteerSet pair 0, prompt: expected text, got int"):
        cl.SteerSet([3], ["x"], ["train"])
    with pytest.raises(cl.DataError, match="split 'dev' is not one of"):
        cl.SteerSet(["a"], ["b"], ["dev"])


# ---- prompts longer than the context -------------------------------------------

def test_long_prompt_errors_unless_truncate(tiny):
    n_ctx = context_length(tiny)
    long = "hello world " * (n_ctx // 2 + 10)
    with pytest.raises(ValueError, match=rf"prompt 1 is \d+ tokens long, more than the model's "
                                         rf"context of {n_ctx}; .*truncate=True"):
        resid_activations(tiny, ["hi", long], layers=[0])
    with pytest.raises(ValueError, match="context"):
        cl.fit_directions(tiny, cl.ContrastSet([long, "hi", long, "yo"], [0, 1, 0, 1]),
                          method="mean_diff", progress=False)
    acts = resid_activations(tiny, ["hi", long], layers=[0], truncate=True)
    assert acts.shape == (2, 1, tiny.cfg.d_model) and torch.isfinite(acts).all()
    # truncation keeps the end of the prompt (the assistant header) and the BOS token
    ids = cl.chat_ids(tiny, long)
    kept = fit_context(tiny, ids, "x", truncate=True)
    assert len(kept) == n_ctx and kept[0] == ids[0] and kept[-5:] == ids[-5:]
    with pytest.raises(ValueError, match="prompt 0 plus max_new_tokens"):
        cl.generate(tiny, None, ["hi"], max_new_tokens=n_ctx, progress=False)
    with pytest.raises(ValueError, match="pair 0 is .* tokens long"):
        cl.completion_nll(tiny, None, [("hi", long)])
    with pytest.raises(ValueError, match="pair 0: reserving .* leaves no room"):
        cl.completion_nll(tiny, None, [("hi", long)], truncate=True)  # the target alone is too long
    # a reservation filling the context: the length error, or with truncate=True "no room"
    with pytest.raises(ValueError, match=r"x is \d+ tokens long, more than the model's context"):
        fit_context(tiny, ids[:3], "x", reserve=n_ctx)
    with pytest.raises(ValueError, match="leaves no room"):
        fit_context(tiny, ids[:3], "x", truncate=True, reserve=n_ctx)
    assert n_hooks(tiny) == 0


# ---- data files -------------------------------------------------------------

def _write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize("body,match", [
    ("prompt\nhello\n", r"x\.csv: missing column\(s\) 'label'"),
    ("prompt,label,label\na,0,1\n", r"x\.csv: duplicate column\(s\) 'label'"),
    ("prompt,label\na,0\nb\n", r"x\.csv, line 3: too few cells \(no value for column\(s\) 'label'\)"),
    ("prompt,label\na,0,extra\n", r"x\.csv, line 2: more cells than the header has columns \(2\)"),
    ("prompt,label\n", r"x\.csv: no rows"),
    ("", r"x\.csv: missing column\(s\) 'prompt', 'label'"),
    ("prompt,label\n,0\nb,1\n", r"x\.csv, row 1, field 'prompt': empty"),
    ("prompt,label\na,0\nb,yes\n", r"x\.csv, row 2, field 'label': 'yes' is not 0 or 1"),
    ("prompt,label\na,0\nb,0.7\n", r"x\.csv, row 2, field 'label': '0.7' is not 0 or 1"),
    ("prompt,label\na,1\nb,1\n", r"only label 1: a probe needs both classes"),
    ('prompt,label\n"unterminated,0\n', r"x\.csv, line 2: too few cells"),
])
def test_contrast_csv_errors_name_file_line_column(tmp_path, body, match):
    with pytest.raises(cl.DataError, match=match):
        cl.ContrastSet.from_csv(_write(tmp_path / "x.csv", body))


@pytest.mark.parametrize("lines,match", [
    (['{"prompt": "a", "label": 0}', '{"prompt": "b"}'], r"c\.jsonl, line 2: missing field 'label'"),
    (['{"prompt": "a", "label": 0}', '{"prompt": "", "label": 1}'],
     r"c\.jsonl, line 2, field 'prompt': empty"),
    (['{"prompt": null, "label": 0}'], r"c\.jsonl, line 1, field 'prompt': missing"),
    (['{"prompt": 5, "label": 0}'], r"c\.jsonl, line 1, field 'prompt': expected text, got int"),
    (['{"prompt": "a", "label": 0.5}'], r"c\.jsonl, line 1, field 'label': 0\.5 is not 0 or 1"),
    (['{"prompt": "a", "label": true}'], r"c\.jsonl, line 1, field 'label': True is not 0 or 1"),
    (['{"prompt": "a", "label": 2}'], r"c\.jsonl, line 1, field 'label': 2 is not 0 or 1"),
    (['{"prompt": "a", "label": 0}', "{not json"], r"c\.jsonl, line 2: invalid JSON"),
    (['["prompt", "label"]'], r"c\.jsonl, line 1: expected a JSON object"),
    (["", "   "], r"c\.jsonl: no rows"),
    (['{"prompt": "a", "label": 0}', '{"prompt": "b", "label": 0}'], r"only label 0"),
])
def test_contrast_jsonl_errors_name_file_line_field(tmp_path, lines, match):
    with pytest.raises(cl.DataError, match=match):
        cl.ContrastSet.from_jsonl(_write(tmp_path / "c.jsonl", "\n".join(lines)))


def test_labels_accept_only_zero_and_one():
    assert cl.ContrastSet(["a", "b", "c"], ["0", 1, 1.0]).labels == [0, 1, 1]
    with pytest.raises(cl.DataError, match=r"ContrastSet label 1: 0\.7 is not 0 or 1"):
        cl.ContrastSet(["a", "b"], [0, 0.7])
    with pytest.raises(cl.DataError, match=r"ContrastSet label 0: 'x' is not 0 or 1"):
        cl.ContrastSet(["a", "b"], ["x", 1])


@pytest.mark.parametrize("raw,match", [
    (b"prompt,label\n\xff\xfe bad,1\n", r"bad\.csv: not valid UTF-8"),
    ("prompt,label\nh\u00e9llo,0\n".encode("utf-16"), r"bad\.csv: not valid UTF-8"),
    ("prompt,label\nh\u00e9llo,0\n".encode("latin-1"), r"bad\.csv: not valid UTF-8"),
])
def test_bad_encoding_is_named(tmp_path, raw, match):
    with pytest.raises(cl.DataError, match=match):
        cl.ContrastSet.from_csv(_write(tmp_path / "bad.csv", raw))


def test_utf8_bom_is_accepted(tmp_path):
    p = _write(tmp_path / "bom.csv", "\ufeffprompt,label\na,0\nb,1\n")
    assert cl.ContrastSet.from_csv(p).prompts == ["a", "b"]


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(cl.DataError, match=r"nope\.jsonl: no such file"):
        cl.ContrastSet.from_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(cl.DataError, match=r"contrast\.jsonl: no such file"):
        cl.load_concept(tmp_path)
    with pytest.raises(cl.DataError, match="no such file"):
        read_csv(tmp_path, ["a"])  # a folder is not a file


def test_steer_jsonl_errors(tmp_path):
    ok = {"prompt": "a", "completion": "b", "split": "train"}
    for bad, match in [({**ok, "completion": ""}, r"line 2, field 'completion': empty"),
                       ({**ok, "split": ["train"]}, r"line 2, field 'split'"),
                       ({"prompt": "a", "split": "train"}, r"line 2: missing field 'completion'")]:
        p = _write(tmp_path / "p.jsonl", json.dumps(ok) + "\n" + json.dumps(bad))
        with pytest.raises(cl.DataError, match=match):
            cl.SteerSet.from_jsonl(p)


def test_reference_csv_errors(tmp_path):
    from test_data import write_reference_csv

    p = write_reference_csv(tmp_path / "T_SteerDataset.csv")
    text = p.read_text(encoding="utf-8")
    p.write_text(text.replace("Answer step by step: {prompt}", "Answer step by step", 1),
                 encoding="utf-8")
    with pytest.raises(cl.DataError, match=r"row 0 \(id r0\), column 'steer_template': no "
                                           r"'\{prompt\}' field"):
        cl.SteerSet.from_reference_csv(p)
    short = write_reference_csv(tmp_path / "Short_SteerDataset.csv", n=12)
    s = cl.SteerSet.from_reference_csv(short)
    with pytest.raises(cl.DataError, match="SteerSet 'Short' has no 'test' pairs"):
        s.test  # noqa: B018
    with pytest.raises(cl.DataError, match="unknown split 'dev'"):
        s.split("dev")


# ---- contrast sets with one class / too few examples -----------------------------

def test_contrast_set_one_class_and_too_few(tiny):
    with pytest.raises(cl.DataError, match="has only label 1"):
        cl.ContrastSet(["a", "b", "c"], [1, 1, 1])
    with pytest.raises(ValueError, match=r"label 0 has 1 example\(s\): at least 2 per label"):
        cl.fit_directions(tiny, cl.ContrastSet(["a", "b"], [0, 1]), method="mean_diff",
                          progress=False)


# ---- non-finite directions and parameters -------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_directions_refused(tiny, value):
    v = random_directions(tiny).vectors.clone()
    v[1, 3] = value
    with pytest.raises(ValueError, match="Directions: tensor 'vectors' contains NaN or infinite"):
        cl.Directions(v, torch.ones(3), [0, 1, 2], "x", "tiny-llama", 3, tiny.cfg.d_model)


def test_directions_shape_and_layer_checks(tiny):
    d = tiny.cfg.d_model
    with pytest.raises(ValueError, match="the vector of layer\\(s\\) \\[0\\] is zero"):
        cl.Directions(torch.zeros(1, d), torch.ones(1), [0], "x", "m", 3, d)
    with pytest.raises(ValueError, match=r"layers \[5\] out of range 0\.\.2"):
        cl.Directions(torch.ones(1, d), torch.ones(1), [5], "x", "m", 3, d)
    with pytest.raises(ValueError, match="has duplicates"):
        cl.Directions(torch.ones(2, d), torch.ones(2), [1, 1], "x", "m", 3, d)
    with pytest.raises(ValueError, match="accuracy must be"):
        cl.Directions(torch.ones(2, d), torch.ones(3), [0, 1], "x", "m", 3, d)
    with pytest.raises(ValueError, match="width 7, d_model is"):
        cl.Directions(torch.ones(1, 7), torch.ones(1), [0], "x", "m", 3, d)


def test_non_finite_precomputed_activations_refused(tiny):
    n, L, d = len(CONTRAST), 3, tiny.cfg.d_model
    acts = torch.randn(n, L, d)
    acts[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="activations contain NaN or infinite"):
        cl.fit_directions(tiny, CONTRAST, method="mean_diff", activations=acts, progress=False)
    with pytest.raises(ValueError, match=r"activations must be .* got \[12, 2, 32\]"):
        cl.fit_directions(tiny, CONTRAST, activations=torch.randn(n, 2, d), progress=False)


def test_scale_must_be_finite(tiny):
    st = cl.CLASSteerer(random_directions(tiny))
    with pytest.raises(ValueError, match="scale must be finite"):
        with st.apply(tiny, scale=float("nan")):
            pass
    assert n_hooks(tiny) == 0


# ---- unknown method / layer / hook names, out-of-range lists --------------------

def test_unknown_names(tiny):
    with pytest.raises(ValueError, match=r"unknown method 'magic'; choose one of \['logistic'"):
        cl.fit_directions(tiny, CONTRAST, method="magic", progress=False)
    with pytest.raises(ValueError, match="unknown position 'first'"):
        cl.fit_directions(tiny, CONTRAST, position="first", progress=False)
    with pytest.raises(KeyError, match="no direction for layer 7"):
        random_directions(tiny).vector(7)
    with pytest.raises(cl.DataError, match="unknown split"):
        cl.SteerSet(["a"], ["b"], ["train"]).split("training")
    with pytest.raises(ValueError, match=r"lr has unknown group\(s\) \['w'\]"):
        cl.train(tiny, cl.CLASSteerer(random_directions(tiny)), [("a", "b")], lr={"w": 1.0},
                 progress=False)


def test_unknown_hook_name_is_a_clear_error_and_leaves_no_hooks(tiny):
    ok = ("blocks.0.hook_resid_post", lambda h, hook=None: h)
    with pytest.raises(KeyError, match="Hook name 'blocks.9.hook_resid_post' does not exist"):
        with tiny.hooks(fwd_hooks=[ok, ("blocks.9.hook_resid_post", lambda h, hook=None: h)]):
            pass
    assert n_hooks(tiny) == 0


@pytest.mark.parametrize("layers,exc,match", [
    ([], ValueError, "layers is empty"),
    ([3], ValueError, r"layers \[3\] out of range: the model has layers 0\.\.2"),
    ([-1], ValueError, r"layers \[-1\] out of range"),
    ([0, 0], ValueError, "has duplicates"),
    ([1.5], TypeError, "layer 1.5 is not an integer"),
    ([True], TypeError, "layer True is not an integer"),
    ("12", TypeError, "got the string '12'"),
    (3, TypeError, "layers must be a list of integers, got int"),
])
def test_layer_lists(tiny, layers, exc, match):
    with pytest.raises(exc, match=match):
        check_layers(tiny, layers)


def test_layer_lists_in_steerers_and_rank(tiny):
    dirs = random_directions(tiny, layers=[0, 1])
    with pytest.raises(ValueError, match="have no layer 2"):
        cl.CLASSteerer(dirs, layers=[2])
    with pytest.raises(ValueError, match=r"layers \[5\] out of range: the model has layers 0\.\.2"):
        cl.CLASSteerer(dirs, layers=[5])
    with pytest.raises(ValueError, match=r"layers \[9\] out of range: the model has layers 0\.\.2"):
        cl.ReFTSteerer(tiny, layers=[9])
    with pytest.raises(ValueError, match="layers is empty"):
        cl.LoRASteerer(tiny, layers=[])
    with pytest.raises(ValueError, match="rank=3 but 1 direction set"):
        cl.CLASSteerer(dirs, rank=3)
    with pytest.raises(ValueError, match="LAS steerers take a single Directions"):
        cl.LASSteerer([dirs, dirs])


def test_holdout_and_batch_size(tiny):
    with pytest.raises(ValueError, match="holdout must be between 0 and 1"):
        cl.fit_directions(tiny, CONTRAST, holdout=1.0, progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        resid_activations(tiny, ["a"], batch_size=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        cl.generate(tiny, None, ["a"], batch_size=0)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        cl.generate(tiny, None, ["a"], max_new_tokens=-1)


# ---- things made for another model ------------------------------------------------

def test_directions_and_steerers_for_another_model(tiny, tiny_other, tmp_path):
    dirs = random_directions(tiny)
    st = cl.CLASSteerer(dirs)
    msg = r"made for a model with (model_name|n_layers|d_model)=.*but this model has"
    for call in (lambda: st.apply(tiny_other).__enter__(),
                 lambda: cl.generate(tiny_other, st, ["hi"], max_new_tokens=1, progress=False),
                 lambda: cl.trace(tiny_other, st, ["hi"]),
                 lambda: cl.train(tiny_other, st, [("a", "b")], progress=False),
                 lambda: dirs.check_model(tiny_other)):
        with pytest.raises(cl.ArtifactError, match=msg):
            call()
    dirs.save(tmp_path / "d")
    with pytest.raises(cl.ArtifactError, match=r"directions .* made for a model with"):
        cl.load_directions(tmp_path / "d", model=tiny_other)
    assert n_hooks(tiny_other) == 0


def test_same_shape_other_name_is_refused(tiny):
    d = tiny.cfg.d_model
    v = torch.nn.functional.normalize(torch.randn(3, d), dim=-1)
    other = cl.Directions(v, torch.ones(3), [0, 1, 2], "x", "another-model", 3, d)
    with pytest.raises(cl.ArtifactError, match="model_name='another-model', but this model has "
                                               "model_name='tiny-llama'"):
        with cl.CLASSteerer(other).apply(tiny):
            pass
    assert n_hooks(tiny) == 0


def test_directions_from_two_models_cannot_be_stacked(tiny, tiny_other):
    with pytest.raises(ValueError, match="directions come from different models"):
        cl.CLASSteerer([random_directions(tiny), random_directions(tiny_other)])


# ---- validation in steerers.py / train.py / trace.py ---------------------------------

@pytest.mark.parametrize("layers,match", [([1.5], "not an integer"), ([0, 0], "duplicates"),
                                          ([], "layers is empty")])
def test_steerer_layer_lists_validated(tiny, layers, match):
    """Steerers check their layer lists like directions do (validate_layers)."""
    dirs = random_directions(tiny)
    with pytest.raises((TypeError, ValueError), match=match):
        cl.CLASSteerer(dirs, layers=layers)
    with pytest.raises((TypeError, ValueError), match=match):
        cl.ReFTSteerer(tiny, layers=layers)


@pytest.mark.parametrize("make", [lambda m: cl.ReFTSteerer(m, rank=0),
                                  lambda m: cl.ReFTSteerer(m, rank=-1),
                                  lambda m: cl.LoRASteerer(m, rank=0)])
def test_rank_validated(tiny, make):
    """ReFT and LoRA refuse a rank below 1 with a ValueError naming the rank."""
    with pytest.raises(ValueError, match="rank"):
        make(tiny)


@pytest.mark.parametrize("which", ["las", "clas", "lora_alpha"])
def test_non_finite_steerer_parameters_refused(tiny, which):
    """NaN parameters are refused when set or applied (never NaN logits in silence)."""
    dirs = random_directions(tiny)
    with pytest.raises(ValueError, match="NaN|finite"):
        if which == "las":
            st = cl.LASSteerer(dirs).set(float("nan"))
        elif which == "clas":
            st = cl.CLASSteerer(dirs)
            with torch.no_grad():
                st.W[0, 0, 0] = float("nan")
        else:
            st = cl.LoRASteerer(tiny, lora_alpha=float("nan"))
        with st.apply(tiny):
            pass
    assert n_hooks(tiny) == 0


def test_batch_size_validated(tiny):
    """trace() and completion_nll() refuse batch_size 0 with a message naming it."""
    with pytest.raises(ValueError, match="batch_size"):
        cl.trace(tiny, None, ["hi"], batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        cl.completion_nll(tiny, None, [("a", "b")], batch_size=0)


@pytest.mark.parametrize("kw,match", [
    (dict(do_sample=True, temperature=0.0), r"temperature must be > 0 when sampling, got 0\.0"),
    (dict(do_sample=True, top_k=10**6), r"top_k must be between 1 and the vocabulary size \d+"),
    (dict(repetition_penalty=0.0), r"repetition_penalty must be > 0, got 0\.0"),
])
def test_generation_settings_validated(tiny, kw, match):
    """generate() refuses temperature <= 0 when sampling, top_k outside the vocabulary
    and repetition_penalty <= 0."""
    with pytest.raises(ValueError, match=match):
        cl.generate(tiny, None, ["hi"], max_new_tokens=1, progress=False, **kw)


def test_truncate_in_trace_and_training(tiny):
    """trace() and completion_nll() take truncate=True, as the context error suggests: they
    keep the BOS token and the end of the prompt, and score the completion after that."""
    long = "hello world " * 200
    n_ctx, ids = context_length(tiny), cl.chat_ids(tiny, long)
    assert len(ids) > n_ctx and ids[0] == tiny.tokenizer.bos_token_id
    res = cl.trace(tiny, None, [long], truncate=True)
    assert res.token_ids[0] == [ids[0]] + ids[len(ids) - n_ctx + 1:]
    tail = completion_ids(tiny, "x")
    kept = [ids[0]] + ids[len(ids) - (n_ctx - len(tail)) + 1:]
    with torch.inference_mode():
        logits = tiny(torch.tensor([kept + tail]))[0].float()
    logp = logits[len(kept) - 1:-1].log_softmax(-1)
    by_hand = -float(logp[torch.arange(len(tail)), torch.tensor(tail)].mean())
    assert cl.completion_nll(tiny, None, [(long, "x")], truncate=True) == pytest.approx(by_hand,
                                                                                       abs=1e-4)
