"""The HTML report and optuna-dashboard in a real browser: headless Chromium driven by Playwright.

Each test saves a screenshot as an artefact (under pytest's tmp dir; the path is printed). Without Playwright
(`pip install playwright`; no `playwright install`: Debian's chromium is used) or without /usr/bin/chromium
(`apt-get install chromium`), the tests skip and say why.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from test_report_html import HANDLER, make_hostile_run, make_run, make_study
from uhnas.report.html import render_html, write_html_report

CHROMIUM = os.environ.get("UHNAS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright); browser checks skip"
)
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium); browser checks skip", allow_module_level=True)


class Page:
    """A browser page that records console errors, page errors and dialogs."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def shot(self, path: Path, full_page: bool = True) -> Path:
        self.page.screenshot(path=str(path), full_page=full_page)
        print(f"screenshot: {path}")
        return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as error:  # a Chromium that cannot start here (missing libraries, sandbox rules)
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {str(error).splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, java_script_enabled=True)
    yield Page(context.new_page())
    context.close()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("browser")
    return {"run": make_run(base / "run"), "hostile": make_hostile_run(base / "hostile")}


def open_report(page: Page, html: Path) -> None:
    page.page.goto(html.resolve().as_uri())
    page.page.wait_for_load_state("load")


def hover_point(page: Page, selector: str) -> str:
    """Hover a plotted candidate; the text of the hover panel."""
    point = page.page.locator(selector).first
    point.evaluate("e => e.scrollIntoView({block: 'center'})")
    point.hover()
    tip = page.page.locator("#tip")
    tip.wait_for(state="visible", timeout=5000)
    return tip.inner_text()


def test_run_report_renders_its_figures_without_errors_and_hover_shows_a_candidate(
    page: Page, dirs: dict[str, Path], tmp_path: Path
):
    html = write_html_report(dirs["run"], tmp_path / "run.html").path
    open_report(page, html)
    figures = page.page.locator("svg.fig")
    assert figures.count() == 4
    for i in range(4):
        box = figures.nth(i).bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 150
    assert page.page.locator("svg a.pt title").count() == 0  # the script took over the tooltips: it ran (CSP hash)
    text = hover_point(page, "#pareto svg a.pt")
    assert "accuracy clean" in text and "energy per inference" in text and "flatten" in text
    page.shot(tmp_path / "run_report.png", full_page=False)
    page.page.locator("#candidates th", has_text="energy").click()  # sortable table
    assert page.errors == [] and page.dialogs == []
    page.shot(tmp_path / "run_report_full.png")


def test_hostile_run_report_raises_no_dialog_and_runs_no_injected_script(
    page: Page, dirs: dict[str, Path], tmp_path: Path
):
    html = write_html_report(dirs["hostile"], tmp_path / "hostile.html").path
    open_report(page, html)
    for details in page.page.locator("details").all():  # open everything: hidden text must stay inert too
        details.evaluate("d => d.open = true")
    target = page.page.locator("#pareto svg a.pt").all()
    for point in target[:40]:
        point.evaluate("e => e.dispatchEvent(new MouseEvent('mouseenter'))")
    text = hover_point(page, "#pareto svg a.pt")
    assert text
    assert page.dialogs == [], page.dialogs
    assert page.errors == [], page.errors
    assert page.page.evaluate("document.querySelectorAll('script').length") == 2
    assert page.page.evaluate("document.querySelectorAll('img, iframe, object, embed').length") == 0
    assert page.page.locator("svg svg").count() == 0  # no injected <svg onload> inside a figure or elsewhere
    assert page.page.title().startswith("uhnas run")
    body = page.page.locator("body").inner_text()
    assert "<script>alert('pwned')</script>" in body and HANDLER in body  # shown as text
    page.shot(tmp_path / "hostile_report.png")


def test_content_security_policy_blocks_a_script_that_escaping_had_missed(page: Page, dirs: dict[str, Path],
                                                                         tmp_path: Path):  # fmt: skip
    text, _, _ = render_html(dirs["run"])
    injected = text.replace("<main>", "<main><script>window.injected = 1; alert('csp')</script>", 1)
    injected = injected.replace("<main>", '<main><div onclick="alert(1)" id="handler">x</div>', 1)
    path = tmp_path / "injected.html"
    path.write_text(injected, encoding="utf-8")
    open_report(page, path)
    page.page.locator("#handler").click()
    assert page.page.evaluate("typeof window.injected") == "undefined"
    assert page.dialogs == []
    assert any("Content Security Policy" in e for e in page.errors)  # blocked, and the browser says so


def test_study_report_renders_without_errors(page: Page, tmp_path: Path):
    study = make_study(tmp_path / "study")
    html = write_html_report(study, tmp_path / "study.html").path
    open_report(page, html)
    assert page.page.locator("svg.fig").count() == 3
    assert page.page.locator("h3", has_text="Hypervolume by method").count() == 1
    assert page.errors == [] and page.dialogs == []
    page.shot(tmp_path / "study_report.png")


# ----------------------------------------------------------------------------------------- optuna-dashboard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dashboard(dirs: dict[str, Path]) -> Iterator[str]:
    exe = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("optuna-dashboard is not installed (pip install optuna-dashboard)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = (dirs["run"] / "study.db").resolve()
    proc = subprocess.Popen(
        [exe, f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/studies", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"optuna-dashboard did not start on {url}: {output[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_optuna_dashboard_shows_the_runs_study_and_trials(page: Page, dashboard: str, dirs: dict[str, Path],
                                                          tmp_path: Path):  # fmt: skip
    name = dirs["run"].resolve().name
    page.page.goto(dashboard + "/dashboard")
    listed = page.page.get_by_text(re.compile(rf"^\d+\. {re.escape(name)}$")).first  # "1. run"
    listed.wait_for(timeout=20000)
    page.shot(tmp_path / "dashboard_studies.png", full_page=False)
    listed.click()
    page.page.wait_for_url(re.compile(r".*/studies/\d+.*"), timeout=20000)
    for objective in ("error", "energy_nj"):
        page.page.get_by_text(objective).first.wait_for(timeout=20000)
    page.shot(tmp_path / "dashboard_study.png", full_page=False)
    page.page.locator("a[href$='/trials']").first.click()  # "Trials (List)"
    page.page.wait_for_url(re.compile(r".*/studies/\d+/trials.*"), timeout=20000)
    records = open_run_records(dirs["run"])
    last = max(r.number for r in records)
    page.page.get_by_text(f"Trial {last}", exact=False).first.wait_for(timeout=20000)
    page.page.get_by_text("energy_nj").first.wait_for(timeout=20000)
    page.shot(tmp_path / "dashboard_trials.png", full_page=False)
    assert page.dialogs == []


def open_run_records(out: Path) -> list[Any]:
    from uhnas.store import open_run

    return open_run(out).records()
