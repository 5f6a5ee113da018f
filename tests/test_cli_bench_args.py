"""The ``clas-lens bench`` options for generation length and the LLM judge: how they parse,
which values are refused, and that ``main`` hands them to ``run_benchmarks`` unchanged.

``run_benchmarks`` is replaced by a recorder: nothing is loaded or run.
"""

import inspect

import pytest

from clas_lens import cli
from clas_lens.bench import harness

URL = "http://127.0.0.1:8000/v1"
RUN_BENCHMARKS = harness.run_benchmarks  # the real one, before any test replaces it


def _parse(argv):
    return cli.build_parser().parse_args(argv)


def _usage_error(capsys, argv) -> str:
    """The stderr of a command line the parser refuses (exit status 2)."""
    with pytest.raises(SystemExit, match="^2$"):
        _parse(argv)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: clas-lens")
    return err


def test_defaults():
    args = _parse(["bench"])
    # None: run_benchmarks' own defaults (every test row, per-benchmark length, cap 256)
    assert (args.gen_rows, args.max_new_tokens, args.max_new_tokens_cap) == (None, None, None)
    assert (args.judge_url, args.judge_model) == (None, None)
    assert (args.judge_workers, args.judge_timeout) == (4, 60.0)


def test_every_option_parsed():
    args = _parse(["bench", "a.csv", "--gen-rows", "12", "--max-new-tokens", "48",
                   "--max-new-tokens-cap", "128", "--judge-url", "https://api.example.org/v1",
                   "--judge-model", "gpt-x", "--judge-workers", "9", "--judge-timeout", "2.5"])
    assert args.paths == ["a.csv"]
    assert (args.gen_rows, args.max_new_tokens, args.max_new_tokens_cap) == (12, 48, 128)
    assert (args.judge_url, args.judge_model) == ("https://api.example.org/v1", "gpt-x")
    assert (args.judge_workers, args.judge_timeout) == (9, 2.5)


def test_judge_model_defaults_to_judge_with_a_url():
    assert _parse(["bench", "--judge-url", URL]).judge_model == "judge"


def test_judge_model_may_come_before_the_url():
    args = _parse(["bench", "--judge-model", "qwen", "--judge-url", URL])
    assert (args.judge_url, args.judge_model) == (URL, "qwen")


@pytest.mark.parametrize("url", [URL, "https://api.openai.com/v1/chat/completions",
                                 "HTTP://Localhost:11434/v1"])
def test_http_urls_accepted(url):
    assert _parse(["bench", "--judge-url", url]).judge_url == url


def test_judge_model_without_url_is_refused(capsys):
    err = _usage_error(capsys, ["bench", "--judge-model", "qwen"])
    assert "argument --judge-model: needs --judge-url" in err


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "localhost:8000", "ftp://host/v1",
                                 "http://", "https:/api.openai.com/v1", ""])
def test_bad_url_is_refused(capsys, url):
    err = _usage_error(capsys, ["bench", "--judge-url", url])
    assert f"argument --judge-url: {url!r}: expected an http:// or https:// URL" in err


@pytest.mark.parametrize("argv,message", [
    (["--judge-workers", "0"], "argument --judge-workers: 0 is less than 1"),
    (["--judge-timeout", "0"], "argument --judge-timeout: '0' is not a positive number of seconds"),
    (["--judge-timeout", "-3"], "argument --judge-timeout: '-3' is not a positive number of seconds"),
    (["--judge-timeout", "nan"], "argument --judge-timeout: 'nan' is not a positive number of seconds"),
    (["--judge-timeout", "inf"], "argument --judge-timeout: 'inf' is not a positive number of seconds"),
    (["--judge-timeout", "soon"], "argument --judge-timeout: 'soon' is not a number"),
    (["--judge-url", URL, "--judge-model", " "],
     "argument --judge-model: expected a model name, got an empty string"),
    (["--max-new-tokens-cap", "0"], "argument --max-new-tokens-cap: 0 is less than 1"),
    (["--max-new-tokens", "0"], "argument --max-new-tokens: 0 is less than 1"),
    (["--api-key=secret"], "unrecognized arguments: --api-key=secret"),
])
def test_bad_values_are_refused(capsys, argv, message):
    assert message in _usage_error(capsys, ["bench", *argv])


def test_help_says_where_the_key_comes_from(capsys):
    with pytest.raises(SystemExit, match="^0$"):
        _parse(["bench", "--help"])
    squeezed = "".join(capsys.readouterr().out.split())  # help lines also wrap at hyphens
    for text in ("--judge-url URL", "--judge-model NAME", "--judge-workers N", "--judge-timeout S",
                 "--max-new-tokens-cap", "CLAS_LENS_JUDGE_API_KEY or OPENAI_API_KEY",
                 "never from the command line", "(default: every test row)",
                 "capped by --max-new-tokens-cap"):
        assert "".join(text.split()) in squeezed, text


@pytest.fixture()
def recorded(monkeypatch):
    """The calls ``main`` makes to ``run_benchmarks``: ``(paths, keyword arguments)``."""
    calls = []

    def record(paths, **kw):
        calls.append((paths, kw))
        return []

    monkeypatch.setattr(harness, "run_benchmarks", record)
    return calls


PASSED = ("gen_rows", "max_new_tokens", "max_new_tokens_cap", "judge_url", "judge_model",
          "judge_workers", "judge_timeout")


@pytest.mark.parametrize("argv,expected", [
    ([], (None, None, None, None, None, 4, 60.0)),
    (["--gen-rows", "7", "--max-new-tokens-cap", "96", "--judge-url", URL, "--judge-model", "qwen",
      "--judge-workers", "2", "--judge-timeout", "15"], (7, None, 96, URL, "qwen", 2, 15.0)),
    (["--max-new-tokens", "33", "--judge-url", URL], (None, 33, None, URL, "judge", 4, 60.0)),
])
def test_main_passes_the_options_through(tmp_path, recorded, argv, expected):
    csv = str(tmp_path / "Alpaca_SteerDataset.csv")
    out = str(tmp_path / "results")
    assert cli.main(["bench", csv, "--out", out, *argv]) == 0
    assert len(recorded) == 1
    paths, kw = recorded[0]
    assert paths == [csv] and kw["out"] == out
    assert tuple(kw[k] for k in PASSED) == expected
    assert not [k for k in kw if "key" in k]  # the API key never travels as an argument


def test_run_benchmarks_takes_every_option_main_passes(tmp_path, recorded):
    argv = ["bench", str(tmp_path / "a.csv"), "--max-new-tokens-cap", "64", "--judge-url", URL]
    assert cli.main(argv) == 0
    paths, kw = recorded[0]
    bound = inspect.signature(RUN_BENCHMARKS).bind(paths, **kw)
    assert bound.arguments["judge_url"] == URL and bound.arguments["max_new_tokens_cap"] == 64
