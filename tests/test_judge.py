"""The judge client (clas_lens.bench.judge) against real chat-completions servers on 127.0.0.1."""

from __future__ import annotations

import doctest
import json
import re
import time

import pytest
from chat_server import completion, user_text

from clas_lens.bench import judge as judge_mod
from clas_lens.bench.judge import Judge, JudgeItem, endpoint_url, judge_item, parse_score

INSTRUCTIONS = "Rate the response from 0 to 2. Output only the number (0-2)."
TEMPLATE = "[Question]\n{prompt}\n\n[Answer]\n{completion}\n\nScore: "
FAST = {"timeout": 0.5, "retries": 2, "backoff": 0.01, "max_backoff": 0.05}


def scored_answer(request):
    """A well-formed judge: the answer text 'quality k' gets score k, in three usual formats."""
    k = int(re.search(r"quality (\d)", user_text(request)).group(1))
    content = ["0", "**Score:** 1", "2\n\nThe answer follows the question in full."][k]
    return 200, completion(content, request["body"]["model"]), {}


def items(n, method="clas", bench="Toy", word="quality"):
    return [JudgeItem(bench, method, f"r{i}", INSTRUCTIONS,
                      TEMPLATE.format(prompt=f"q{i}", completion=f"{word} {i % 3}")) for i in range(n)]


def test_doctests_run():
    result = doctest.testmod(judge_mod)
    assert result.attempted >= 2 and result.failed == 0


@pytest.mark.parametrize("text, expected", [
    ("2", 2.0), ("1\n\nExplanation: it has 3 errors", 1.0), ("**Score:** 0", 0.0), ("Score is 2.", 2.0),
    ("2/2", 2.0), ("<think>1 or 0? Let me see</think>\n1", 1.0), ("The answer deserves a 2.", 2.0),
    ("3", None), ("10", None), ("-1", None), ("1 or 2", None), ("Score (0-2): 1", None), ("good", None),
    ("", None), (None, None),
])
def test_parse_score(text, expected):
    """Fails if the parser reads a first character ("10" -> 1), ignores the range, or drops
    the rubric's own answer formats."""
    assert parse_score(text, max_score=2) == expected


def test_endpoint_url():
    assert endpoint_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1/chat/completions"
    assert endpoint_url("https://h/v1/chat/completions") == "https://h/v1/chat/completions"
    with pytest.raises(ValueError, match="judge url 'localhost:8000' must be an http"):
        endpoint_url("localhost:8000")
    with pytest.raises(ValueError, match="judge model must be a non-empty name"):
        Judge("http://127.0.0.1:1/v1", " ")


def test_judge_item_fills_the_csv_templates():
    row = {"base_input": "Sort {x} in C++", "label_instructions_template": INSTRUCTIONS,
           "label_prompt_template": TEMPLATE}
    gen = "Here:\n```cpp\nint f(){return 1;}\n```\nDone {completion}"
    item = judge_item("Toy", "clas", 7, row, gen)
    assert item.instructions == INSTRUCTIONS
    assert item.prompt == f"[Question]\nSort {{x}} in C++\n\n[Answer]\n{gen}\n\nScore: "
    code = judge_item("LeetCode", "clas", 7, row, gen)  # judged on its code blocks, as the reference does
    assert code.prompt.split("[Answer]\n")[1] == "```cpp\nint f(){return 1;}\n```\n\nScore: "
    assert judge_item("GSM8K", "clas", 7, dict(row, label_prompt_template=""), gen) is None
    with pytest.raises(ValueError, match="no 'base_input' column"):
        judge_item("Toy", "clas", 7, {"label_prompt_template": TEMPLATE}, gen)


def test_well_formed_answers_become_scores(serve, tmp_path):
    def slower_first(request):  # earlier rows answer later: results must still follow the items
        time.sleep(0.03 * (9 - int(re.search(r"q(\d)", user_text(request)).group(1))))
        return scored_answer(request)

    server = serve(slower_first)
    judge = Judge(server.url, "judge-x", cache_path=tmp_path / "cache.jsonl", **FAST)
    todo = items(9)
    run = judge.score_many(todo, workers=3, progress=False)
    assert [r.score for r in run.results] == [float(i % 3) for i in range(9)]  # order of the items
    assert {r.status for r in run.results} == {"ok"}
    assert run.count_rows() == [{"benchmark": "Toy", "method": "clas", "judge_ok": 9,
                                 "judge_unparseable": 0, "judge_missing": 0, "judge_cached": 0}]
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["model"] == "judge-x" and req["body"]["temperature"] == 0.0
    assert req["body"]["messages"][0] == {"role": "system", "content": INSTRUCTIONS}
    assert sorted(user_text(r) for r in server.requests) == sorted(i.prompt for i in todo)
    assert "Authorization" not in req["headers"]


def test_garbage_is_counted_unparseable_per_cell(serve):
    def respond(request):
        text = user_text(request)
        if "broken" in text:
            return 200, "{not json", {}
        if "empty" in text:
            return 200, completion(None), {}
        return 200, completion("It is hard to say; somewhere between 1 and 2."), {}

    server = serve(respond)
    judge = Judge(server.url, "judge-x", **FAST)
    todo = items(2, method="lora", word="vague") + items(2, method="reft", word="broken") + items(
        1, method="reft", word="empty")
    with pytest.warns(UserWarning, match=r"Toy/lora: 2 unparseable, 0 missing; Toy/reft: 3 unparseable"):
        run = judge.score_many(todo, progress=False)
    assert [r.status for r in run.results] == ["unparseable"] * 5
    assert all(r.score is None for r in run.results)
    assert run.results[0].raw.startswith("It is hard to say") and run.results[2].raw == "{not json"
    assert run.results[2].error == "not a chat-completions response"
    assert run.counts[("Toy", "lora")]["unparseable"] == 2 and run.counts[("Toy", "reft")]["unparseable"] == 3
    assert len(server.requests) == 5  # an answer, even a bad one, is not retried


def test_silent_server_is_recorded_missing_within_bounded_time(serve):
    server = serve(lambda request: None)
    judge = Judge(server.url, "judge-x", **dict(FAST, timeout=0.3))
    start = time.monotonic()
    with pytest.warns(UserWarning, match=r"Toy/clas: 0 unparseable, 2 missing"):
        run = judge.score_many(items(2), progress=False)
    elapsed = time.monotonic() - start
    assert [r.status for r in run.results] == ["missing", "missing"]
    assert "timed out" in run.results[0].error and "after 3 attempts" in run.results[0].error
    assert len(server.requests) == 6  # 1 + 2 retries per item
    assert elapsed < 2 * 3 * (0.3 + FAST["max_backoff"]) + 1.5


def test_http_errors_are_retried_then_succeed(serve):
    calls = {"n": 0}

    def respond(request):
        calls["n"] += 1
        if calls["n"] == 1:
            return 500, {"error": {"message": "overloaded"}}, {}
        if calls["n"] == 2:
            return 429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}
        return scored_answer(request)

    server = serve(respond)
    result = Judge(server.url, "judge-x", **FAST).score("Toy", "clas", "r2", INSTRUCTIONS, items(3)[2].prompt)
    assert (result.status, result.score) == ("ok", 2.0)
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(serve):
    server = serve(lambda request: (400, {"error": {"message": "unknown model"}}, {}))
    result = Judge(server.url, "judge-x", **FAST).score("Toy", "clas", "r0", INSTRUCTIONS, "x")
    assert result.status == "missing"
    assert result.error.startswith("HTTP 400") and "unknown model" in result.error
    assert len(server.requests) == 1


def test_cache_prevents_a_second_request(serve, tmp_path):
    server = serve(scored_answer)
    cache = tmp_path / "out" / "judge_cache.jsonl"
    first = Judge(server.url, "judge-x", cache_path=cache, **FAST).score_many(items(4), progress=False)
    assert len(server.requests) == 4 and len(cache.read_text().splitlines()) == 4
    again = Judge(server.url, "judge-x", cache_path=cache, **FAST).score_many(items(4), workers=2,
                                                                               progress=False)
    assert len(server.requests) == 4  # nothing asked twice
    assert [r.score for r in again.results] == [r.score for r in first.results]
    assert all(r.cached for r in again.results) and again.counts[("Toy", "clas")]["cached"] == 4
    # another generation for the same row, or another judge model, is asked again
    changed = [items(4)[0]] + [JudgeItem("Toy", "clas", "r1", INSTRUCTIONS, "quality 2 (edited)")]
    Judge(server.url, "judge-x", cache_path=cache, **FAST).score_many(changed, progress=False)
    assert len(server.requests) == 5
    Judge(server.url, "judge-y", cache_path=cache, **FAST).score_many(items(1), progress=False)
    assert len(server.requests) == 6


def test_failing_judge_keeps_finished_answers_and_asks_only_for_missing_ones(serve, tmp_path):
    """A judge failing on some rows: no exception, answers kept and cached, missing asked again."""
    healthy = {"on": False}

    def respond(request):
        if "r1" in user_text(request) and not healthy["on"]:
            return 503, "unavailable", {}
        return scored_answer(request)

    server = serve(respond)
    cache = tmp_path / "judge_cache.jsonl"
    todo = [JudgeItem("Toy", "clas", f"r{i}", INSTRUCTIONS, f"r{i}: quality {i}") for i in range(3)]
    with pytest.warns(UserWarning, match="1 missing"):
        run = Judge(server.url, "judge-x", cache_path=cache, **FAST).score_many(todo, progress=False)
    assert [r.status for r in run.results] == ["ok", "missing", "ok"]
    assert "HTTP 503" in run.results[1].error
    n_before = len(server.requests)
    healthy["on"] = True
    rerun = Judge(server.url, "judge-x", cache_path=cache, **FAST).score_many(todo, progress=False)
    assert [r.score for r in rerun.results] == [0.0, 1.0, 2.0]
    assert [user_text(r) for r in server.requests[n_before:]] == [todo[1].prompt]


def test_api_key_comes_from_the_environment_and_never_reaches_the_cache(serve, tmp_path, monkeypatch):
    server = serve(scored_answer)
    cache = tmp_path / "judge_cache.jsonl"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fallback-key")
    Judge(server.url, "judge-x", **FAST).score("Toy", "clas", "r0", INSTRUCTIONS, "quality 0")
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer sk-fallback-key"
    monkeypatch.setenv("CLAS_LENS_JUDGE_API_KEY", "sk-secret-123")
    judge = Judge(server.url, "judge-x", cache_path=cache, **FAST)
    judge.score("Toy", "clas", "r1", INSTRUCTIONS, "quality 1")
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer sk-secret-123"
    assert cache.is_file() and "sk-secret" not in cache.read_text() and "sk-" not in repr(judge)
    assert "sk-" not in json.dumps([vars(r) for r in judge.score_many(items(2), progress=False).results])


def test_unreadable_cache_lines_are_ignored_with_a_warning(serve, tmp_path):
    server = serve(scored_answer)
    cache = tmp_path / "judge_cache.jsonl"
    Judge(server.url, "judge-x", cache_path=cache, **FAST).score_many(items(2), progress=False)
    cache.write_text(cache.read_text() + "{half a line\n")
    with pytest.warns(UserWarning, match="1 unreadable line"):
        judge = Judge(server.url, "judge-x", cache_path=cache, **FAST)
    assert all(r.cached for r in judge.score_many(items(2), progress=False).results)
