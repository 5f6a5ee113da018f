"""LLM-judge scores through any OpenAI-compatible chat-completions endpoint.

Each generation is scored with its benchmark CSV's own rubric: the
``label_instructions_template`` is sent as the system message and the
``label_prompt_template`` (with ``{prompt}`` the row's ``base_input`` and ``{completion}``
the generation) as the user message, at temperature 0, as the reference implementation
does (:func:`judge_item`). The rubric asks for a bare number from 0 to ``max_score``;
:func:`parse_score` reads it. Benchmarks without templates (GSM8K, MMLU) are scored by
rule elsewhere and give no item.

The endpoint is ``POST {url}/chat/completions`` (or ``url`` itself when it already ends
in ``/chat/completions``): a hosted API, or a local vLLM, llama.cpp or Ollama server. The
API key is read from the environment (:data:`API_KEY_ENVS`, first set wins) when the
:class:`Judge` is made and is sent only as an ``Authorization: Bearer`` header: it is
never written to the cache, a result or a ``repr``. Without a key no header is sent.

Every answer ends in one of three statuses (:data:`STATUSES`):

* ``ok``: a score was read;
* ``unparseable``: the server answered, but with no score in range or with a body that is
  not a chat-completions response (kept in ``raw`` and counted, never dropped);
* ``missing``: no answer after the retries. Timeouts, connection errors, HTTP 408/409/425/
  429 and 5xx are retried up to ``retries`` times, waiting ``backoff * 2**k`` seconds
  (at most ``max_backoff``, or the server's ``Retry-After`` if shorter), so one item
  takes at most ``(retries + 1)`` requests of ``timeout`` seconds per socket operation plus
  the waits. Other HTTP errors (400, 401, 404) are not retried.

Nothing raises out of :meth:`Judge.score` or :meth:`Judge.score_many`: a failing judge
gives ``missing`` results. Answers (``ok`` and ``unparseable`` content) are cached by
(benchmark, method, row id, SHA-256 of the judge input - rubric plus generation - and judge
model) in a JSON-lines file rewritten atomically, so a rerun asks nothing twice;
``missing`` results and malformed bodies are not cached, so a rerun asks for them again.

Example:
    >>> judge = Judge("http://127.0.0.1:8000/v1", "my-judge",
    ...               cache_path="out/judge_cache.jsonl")  # doctest: +SKIP
    >>> items = [judge_item("Alpaca", "clas", r["id"], r, text) for r, text in rows]  # doctest: +SKIP
    >>> run = judge.score_many([i for i in items if i is not None], workers=4)  # doctest: +SKIP
    >>> run.results[0].score, run.count_rows()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from clas_lens.io import atomic_write_text

API_KEY_ENVS = ("CLAS_LENS_JUDGE_API_KEY", "OPENAI_API_KEY")
STATUSES = ("ok", "unparseable", "missing")
CACHE_NAME = "judge_cache.jsonl"
#: benchmarks whose generations are judged on their fenced code blocks only, as in the reference
CODE_ONLY = ("leetcode",)
RETRY_HTTP = frozenset({408, 409, 425, 429})
_RAW_CHARS = 2000  # raw answers and error bodies are kept up to this length

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_MARKUP = r"[\s*_#>`\"'\[(]*"
_LEADING = re.compile(rf"^{_MARKUP}(?:(?:final\s+)?score\s*(?:is\b|[:=])?{_MARKUP})?(\d+(?:\.\d+)?)(?!\w)",
                      re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_OUT_OF = re.compile(r"^\s*(?:/|out\s+of)\s*\d+(?:\.\d+)?", re.IGNORECASE)
_FENCED = re.compile(r"```[^\n`]*\n.*?```", re.DOTALL)
_PLACEHOLDER = re.compile(r"\{(prompt|completion)\}")


@dataclass(frozen=True)
class JudgeItem:
    """One generation to score: its cell, its row, and the two messages for the judge."""

    benchmark: str
    method: str
    row_id: str | int
    instructions: str
    prompt: str


@dataclass(frozen=True)
class JudgeResult:
    """The judge's verdict on one generation.

    Attributes:
        score: the score read from the answer (``None`` unless ``status == "ok"``).
        status: ``ok``, ``unparseable`` or ``missing``.
        raw: the judge's answer text (or the malformed body), ``None`` when missing.
        error: what went wrong, for ``missing`` results and malformed bodies.
        cached: whether the result came from the cache instead of a request.
    """

    score: float | None
    status: str
    raw: str | None
    error: str | None = None
    cached: bool = False


@dataclass
class JudgeRun:
    """Results of :meth:`Judge.score_many` (in the order of the items) and counts per cell."""

    results: list[JudgeResult]
    counts: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)

    def count_rows(self) -> list[dict]:
        """One row per (benchmark, method): ``judge_ok``, ``judge_unparseable``, ``judge_missing``,
        ``judge_cached``."""
        return [{"benchmark": b, "method": m, **{f"judge_{k}": v for k, v in c.items()}}
                for (b, m), c in self.counts.items()]


def endpoint_url(url: str) -> str:
    """The chat-completions URL for a base URL (``.../v1``) or a full one.

    Raises:
        ValueError: ``url`` is not an http(s) URL with a host.
    """
    parts = urllib.parse.urlsplit(str(url).strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"judge url {url!r} must be an http(s) URL such as http://127.0.0.1:8000/v1 "
                         "or https://api.openai.com/v1/chat/completions")
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def parse_score(text: str | None, max_score: float = 2) -> float | None:
    """The score in a judge's answer, or ``None``.

    Reasoning in ``<think>`` tags is dropped. The answer must then start with the score,
    optionally after markdown and a ``Score:`` label (``"2"``, ``"1\\n\\nExplanation..."``,
    ``"**Score:** 2"``, ``"2/2"``) and no other number on its line; failing that, an answer
    holding exactly one number is read as that number (``"The response deserves a 2."``).
    The score must lie in ``[0, max_score]``.

    Examples:
        >>> parse_score("2"), parse_score("Score: 1. The response..."), parse_score("**0**")
        (2.0, 1.0, 0.0)
        >>> parse_score("10"), parse_score("1 or 2"), parse_score("good"), parse_score(None)
        (None, None, None, None)
    """
    if not isinstance(text, str):
        return None
    text = _THINK.sub("", text)
    text = text.rsplit("</think>", 1)[-1].strip()
    m = _LEADING.match(text)
    if m:
        rest = _OUT_OF.sub("", text[m.end():].split("\n", 1)[0])
        if _NUMBER.search(rest):  # "1 or 2": no single score
            return None
        value = float(m.group(1))
    else:
        numbers = _NUMBER.findall(text)
        if len(numbers) != 1:
            return None
        value = float(numbers[0])
    return value if 0 <= value <= max_score else None


def fill_template(template: str, prompt: str, completion: str) -> str:
    """Fill ``{prompt}`` and ``{completion}`` in one pass (braces in the texts stay as they are)."""
    values = {"prompt": prompt, "completion": completion}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def code_blocks(text: str) -> str:
    """The fenced code blocks of ``text`` joined by blank lines, or ``text`` when it has none."""
    blocks = _FENCED.findall(text)
    return "\n\n".join(blocks) if blocks else text


def judge_item(benchmark: str, method: str, row_id: str | int, csv_row: Mapping, generation: str, *,
               prompt_column: str = "base_input") -> JudgeItem | None:
    """The judge request for one generation, from its benchmark CSV row's templates.

    Args:
        benchmark: benchmark name (a LeetCode benchmark is judged on its code blocks only).
        method: steering method that produced the generation.
        row_id: the test row's id.
        csv_row: the CSV row (``label_instructions_template``, ``label_prompt_template`` and
            ``prompt_column``).
        generation: the generated text, end-of-turn markers already removed.
        prompt_column: the column filled into ``{prompt}`` (the reference uses the raw input).

    Returns:
        The item, or ``None`` when the CSV has no judge prompt template.
    """
    template = str(csv_row.get("label_prompt_template") or "")
    if not template.strip():
        return None
    if prompt_column not in csv_row:
        raise ValueError(f"the CSV row has no {prompt_column!r} column to fill {{prompt}}; pass "
                         f"prompt_column= one of {sorted(csv_row)}")
    completion = code_blocks(generation) if benchmark.lower() in CODE_ONLY else generation
    return JudgeItem(benchmark, method, row_id, str(csv_row.get("label_instructions_template") or ""),
                     fill_template(template, str(csv_row[prompt_column]), completion))


class Judge:
    """Client for an OpenAI-compatible chat-completions judge, with a score cache.

    Args:
        url: base URL (``http://host:port/v1``) or full chat-completions URL.
        model: model name sent in every request (also part of the cache key).
        timeout: seconds per socket operation of one request.
        retries: further attempts after a timeout, connection error, 408/409/425/429 or 5xx.
        backoff: first wait between attempts in seconds, doubled after each.
        max_backoff: longest wait between attempts.
        cache_path: JSON-lines cache file (e.g. ``<out>/judge_cache.jsonl``); ``None``: no cache.
        max_score: highest score the rubric allows (the reference rubrics use 0-2).
        temperature: sampling temperature; ``None`` leaves it out (some reasoning models refuse it).
        max_tokens: answer length limit; ``None`` leaves it out.
        extra: further request fields (e.g. ``{"reasoning_effort": "low"}``).
        flush_every: new cache entries gathered before :meth:`score_many` rewrites the file.
    """

    def __init__(self, url: str, model: str, *, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 1.0, max_backoff: float = 30.0, cache_path: str | os.PathLike | None = None,
                 max_score: float = 2, temperature: float | None = 0.0, max_tokens: int | None = None,
                 extra: Mapping | None = None, flush_every: int = 25):
        if not isinstance(model, str) or not model.strip():
            raise ValueError("judge model must be a non-empty name (e.g. --judge-model gpt-4o-mini)")
        if not timeout > 0 or retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("judge timeout must be > 0 and retries, backoff, max_backoff >= 0")
        self.url = endpoint_url(url)
        self.model, self.timeout, self.retries = model, float(timeout), int(retries)
        self.backoff, self.max_backoff, self.max_score = float(backoff), float(max_backoff), max_score
        self.temperature, self.max_tokens, self.extra = temperature, max_tokens, dict(extra or {})
        self.flush_every = max(1, int(flush_every))
        self._api_key = next((os.environ[k] for k in API_KEY_ENVS if os.environ.get(k)), None)
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._lock = threading.Lock()
        self._pending = 0
        self._cache: dict[tuple, dict] = self._load_cache()
        # the proxy settings of the environment apply, as for any HTTP client
        self._opener = urllib.request.build_opener()

    def __repr__(self) -> str:
        return (f"Judge(url={self.url!r}, model={self.model!r}, timeout={self.timeout}, "
                f"retries={self.retries}, api_key={'set' if self._api_key else 'none'})")

    # --- cache -------------------------------------------------------------------------------
    def _key(self, item: JudgeItem) -> tuple:
        digest = hashlib.sha256(json.dumps([item.instructions, item.prompt]).encode("utf-8")).hexdigest()
        return (item.benchmark, item.method, str(item.row_id), digest, self.model)

    def _load_cache(self) -> dict[tuple, dict]:
        if self.cache_path is None or not self.cache_path.is_file():
            return {}
        cache, bad = {}, 0
        for line in self.cache_path.read_text(encoding="utf-8").splitlines():
            try:
                e = json.loads(line)
                cache[(e["benchmark"], e["method"], e["row_id"], e["sha256"], e["model"])] = e
            except (ValueError, KeyError, TypeError):
                bad += line.strip() != ""
        if bad:
            warnings.warn(f"judge cache {self.cache_path}: {bad} unreadable line(s) ignored; those "
                          "answers will be asked again", stacklevel=3)
        return cache

    def flush(self) -> None:
        """Write the cache file (atomically) if it has new entries."""
        with self._lock:
            if self.cache_path is None or self._pending == 0:
                return
            lines = [json.dumps(e, ensure_ascii=False, sort_keys=True) for e in self._cache.values()]
            atomic_write_text(self.cache_path, "".join(line + "\n" for line in lines))
            self._pending = 0

    def _remember(self, key: tuple, result: JudgeResult) -> None:
        if result.status == "missing" or result.error is not None:
            return
        entry = dict(zip(("benchmark", "method", "row_id", "sha256", "model"), key),
                     score=result.score, status=result.status, raw=result.raw)
        with self._lock:
            self._cache[key] = entry
            self._pending += 1

    # --- requests ----------------------------------------------------------------------------
    def _payload(self, item: JudgeItem) -> bytes:
        messages = [{"role": "system", "content": item.instructions}] if item.instructions else []
        messages.append({"role": "user", "content": item.prompt})
        body = {"model": self.model, "messages": messages, **self.extra}
        if self.temperature is not None:
            body.setdefault("temperature", self.temperature)
        if self.max_tokens is not None:
            body.setdefault("max_tokens", self.max_tokens)
        return json.dumps(body).encode("utf-8")

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        wait = min(self.max_backoff, self.backoff * 2 ** attempt)
        try:
            return min(wait, max(0.0, float(retry_after))) if retry_after else wait
        except ValueError:  # an HTTP date: keep the backoff
            return wait

    def _read(self, body: bytes) -> JudgeResult:
        text = body.decode("utf-8", errors="replace")
        try:
            content = json.loads(text)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return JudgeResult(None, "unparseable", text[:_RAW_CHARS],
                               error="not a chat-completions response")
        if not isinstance(content, str):
            return JudgeResult(None, "unparseable", None, error="the answer has no text content")
        score = parse_score(content, self.max_score)
        return JudgeResult(score, "ok" if score is not None else "unparseable", content[:_RAW_CHARS])

    def _request(self, item: JudgeItem) -> JudgeResult:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data, error = self._payload(item), "no attempt"
        for attempt in range(self.retries + 1):
            retry_after = None
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with self._opener.open(req, timeout=self.timeout) as resp:
                    return self._read(resp.read())
            except urllib.error.HTTPError as err:
                try:
                    detail = err.read(300).decode("utf-8", errors="replace") if err.fp else ""
                except (OSError, http.client.HTTPException):
                    detail = ""
                error = f"HTTP {err.code} {err.reason}: {detail}".strip()
                if err.code not in RETRY_HTTP and err.code < 500:
                    return JudgeResult(None, "missing", None, error=error)
                retry_after = err.headers.get("Retry-After") if err.headers else None
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
                # timeouts are OSErrors; a connection cut mid-answer is an HTTPException
                error = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            if attempt < self.retries:
                time.sleep(self._wait(attempt, retry_after))
        return JudgeResult(None, "missing", None, error=f"{error} (after {self.retries + 1} attempts)")

    def _score(self, item: JudgeItem) -> JudgeResult:
        key = self._key(item)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return JudgeResult(hit["score"], hit["status"], hit["raw"], cached=True)
        try:
            result = self._request(item)
        except Exception as err:  # a judge failure must never stop the scoring loop
            result = JudgeResult(None, "missing", None, error=f"{type(err).__name__}: {err}")
        self._remember(key, result)
        return result

    # --- public ------------------------------------------------------------------------------
    def score(self, benchmark: str, method: str, row_id: str | int, instructions: str,
              prompt: str) -> JudgeResult:
        """Score one generation (cached answers are reused; the cache file is updated at once)."""
        result = self._score(JudgeItem(benchmark, method, row_id, instructions, prompt))
        self._safe_flush()
        return result

    def score_many(self, items: Sequence[JudgeItem], *, workers: int = 1, progress: bool = True) -> JudgeRun:
        """Score many generations, ``workers`` requests at a time, with a progress bar.

        The cache file is rewritten every ``flush_every`` new answers and at the end (also
        when interrupted), so finished answers are kept. Unparseable and missing answers are
        counted per (benchmark, method) in the returned :class:`JudgeRun` and summed up in a
        warning.
        """
        items = list(items)
        results: list[JudgeResult | None] = [None] * len(items)
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for it in items:
            counts.setdefault((it.benchmark, it.method), dict.fromkeys((*STATUSES, "cached"), 0))
        bar = tqdm(total=len(items), desc=f"judge {self.model}", disable=not progress or not items)

        def work(i: int) -> None:
            results[i] = res = self._score(items[i])
            with self._lock:
                cell = counts[(items[i].benchmark, items[i].method)]
                cell[res.status] += 1
                cell["cached"] += res.cached
                flush = self._pending >= self.flush_every
            bar.update(1)
            if flush:
                self._safe_flush()

        try:
            if workers <= 1:
                for i in range(len(items)):
                    work(i)
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    list(pool.map(work, range(len(items))))
        finally:
            bar.close()
            self._safe_flush()
        bad = {k: (c["unparseable"], c["missing"]) for k, c in counts.items()
               if c["unparseable"] or c["missing"]}
        if bad:
            cells = "; ".join(f"{b}/{m}: {u} unparseable, {x} missing" for (b, m), (u, x) in bad.items())
            warnings.warn(f"judge {self.model}: not every answer gave a score ({cells})", stacklevel=2)
        return JudgeRun(list(results), counts)

    def _safe_flush(self) -> None:
        try:
            self.flush()
        except OSError as err:
            warnings.warn(f"judge cache {self.cache_path} could not be written ({err}); answers "
                          "stay in memory and are written at the next flush", stacklevel=3)
