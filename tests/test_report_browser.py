"""The report in a real browser: headless Chromium (Debian package ``chromium``) driven by
playwright, every request that is not a local file aborted and recorded.

Set ``CLAS_LENS_REPORT_PNG=figures/report.png`` to also write the screenshot of
``figures/demo_report.html`` (made by ``make demo``) there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import random_directions, randomize

import clas_lens as cl

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="needs a Chromium binary: install the Debian package `chromium` "
                             "(apt-get install -y chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (pip)")


class Page:
    """An opened page with what it tried to fetch from outside and what it logged as errors."""

    def __init__(self, browser, url: str):
        self.external, self.errors, self.failed = [], [], []
        self.page = browser.new_page(viewport={"width": 1280, "height": 1000})
        self.page.route("**/*", self._route)
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.failed.append(r.url))
        self.page.goto(url)
        self.page.wait_for_load_state("load")

    def _route(self, route):
        url = route.request.url
        if url.startswith("file://"):
            route.continue_()
        else:
            self.external.append(url)
            route.abort()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def tiny_report(tiny, tmp_path_factory):
    dirs = random_directions(tiny)
    steerer = randomize(cl.CLASSteerer(dirs), scale=0.3)
    out = tmp_path_factory.mktemp("report") / "report.html"
    cl.report(tiny, steerer, ["Tell me about cats.", "Hello world"], out=out, directions=dirs,
              pairs=[("Hi", "Great day!")], other=randomize(cl.LayerwiseLASSteerer(dirs), seed=1),
              max_new_tokens=4, progress=False)
    return out


def test_blocking_sees_external_requests(browser, tmp_path):
    """The check below can fail: a page that loads a remote script is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><head><script src="https://cdn.example.org/plotly.min.js"></script></head>'
                   "<body>x</body></html>")
    page = Page(browser, bad.as_uri())
    assert page.external == ["https://cdn.example.org/plotly.min.js"]
    page.page.close()


def check_report(browser, path: Path, screenshot: Path | None = None) -> None:
    page = Page(browser, path.as_uri())
    p = page.page
    assert p.locator(".plotly-graph-div .main-svg").count() >= 5, "the plotly figures did not draw"
    toks = p.locator(".tok")
    assert toks.count() > 10
    colours = "els => els.map(e => e.style.background)"
    before = toks.evaluate_all(colours)
    assert all(before), "some token has no colour"
    options = p.locator("#layer option").evaluate_all("els => els.map(e => e.value)")
    assert options[0] == "mean" and len(options) > 2
    p.select_option("#layer", options[-1])
    after = toks.evaluate_all(colours)
    assert sum(a != b for a, b in zip(before, after)) > len(before) // 4, "the layer selector changed little"
    assert p.locator("#tip").is_hidden()
    # hover the last token of the first steered answer: its tip names alpha, h.v and components
    last = p.locator("#side-0-1 .tok").last
    last.hover()
    tip = p.locator("#tip")
    assert tip.is_visible()
    text = tip.inner_text()
    assert "alpha" in text and "h·v" in text and "largest components" in text, text
    assert text.splitlines()[1] == p.locator("#layer option").last.inner_text()  # the chosen layer
    if screenshot is not None:
        p.select_option("#layer", "mean")
        p.mouse.move(0, 0)
        p.screenshot(path=str(screenshot))
    assert page.external == [], f"requests outside the file: {page.external}"
    assert page.failed == [], f"failed requests: {page.failed}"
    assert page.errors == [], f"console errors: {page.errors}"
    p.close()


def test_tiny_report_in_chromium(browser, tiny_report, tmp_path):
    check_report(browser, tiny_report, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_demo_report_in_chromium(browser, tmp_path):
    demo = ROOT / "figures" / "demo_report.html"
    if not demo.exists():
        pytest.skip("figures/demo_report.html is made by `make demo`")
    png = Path(os.environ.get("CLAS_LENS_REPORT_PNG") or tmp_path / "report.png")
    check_report(browser, demo, png)
