"""Real-browser test of the review app: `curate ui` in a subprocess, Debian chromium driven by Playwright.

The test never downloads a browser: it uses /usr/bin/chromium (``make test`` installs it with
.ci/browser-deps.sh) and skips, saying why, when chromium or the ``playwright`` package is missing.
Screenshots of every page go to a temporary folder (printed), or to ``$CURATE_SCREENSHOTS``.

README screenshots of any project (nothing is clicked, nothing is changed)::

    python tests/test_ui_browser.py --project curate-project --out docs/screenshots
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# screenshot name, url path (the default page lives at /), heading shown on the page
PAGES = [("overview", "", "Overview"), ("clusters", "clusters", "Clusters"), ("search", "search", "Search"),
         ("label_issues", "label_issues", "Label issues"), ("duplicates", "duplicates", "Duplicates"),
         ("outliers", "outliers", "Outliers & image quality"), ("annotate", "annotate", "Annotate"),
         ("decisions", "decisions", "Decisions"), ("export", "export", "Export")]

pytestmark = pytest.mark.browser


def _why_no_browser() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not installed (`make test` installs it via .ci/browser-deps.sh)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install 'curate[test]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _curate_cmd() -> list[str]:
    script = Path(sys.executable).parent / "curate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "curate.engine.cli"]


@contextlib.contextmanager
def serve(project: Path, timeout_s: float = 60):
    """Run `curate ui` on a free local port; yields the base URL and stops the server afterwards."""
    port = _free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(_curate_cmd() + ["ui", "-p", str(project), "--port", str(port), "--host", "127.0.0.1"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"`curate ui` did not come up: {log.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def wait_idle(page, timeout_ms: int = 30_000) -> None:
    """Wait until Streamlit has finished running the script (no 'running' status widget for a moment)."""
    page.wait_for_selector("[data-testid='stApp']", timeout=timeout_ms)
    deadline = time.monotonic() + timeout_ms / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        busy = page.locator("[data-testid='stStatusWidget'], [data-testid='stSkeleton'], [data-stale='true']").count() > 0
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 0.3:
            return
        page.wait_for_timeout(100)
    raise TimeoutError("the app kept running")


def open_page(page, url: str, path: str, heading: str) -> None:
    """Go to a page: through the sidebar navigation once the app is loaded (no reload), else by URL."""
    nav = page.locator("[data-testid='stSidebarNav']")
    if page.url.startswith(url) and nav.count():
        nav.get_by_role("link", name=heading, exact=True).click()
    else:
        page.goto(f"{url}/{path}")
    page.get_by_role("heading", name=heading).first.wait_for(timeout=30_000)
    wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0, page.locator("[data-testid='stException']").first.inner_text()


def screenshot(page, out_dir: Path, name: str) -> Path:
    page.wait_for_timeout(300)  # charts finish drawing
    path = out_dir / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def poll(fn, timeout_s: float = 20):
    """``fn()`` until it returns something truthy (the server writes asynchronously to the click)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@contextlib.contextmanager
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# ------------------------------------------------------------------------------------------- the test
@pytest.fixture(scope="module")
def browser():
    """One chromium for the module (Playwright's sync API allows one running instance per thread)."""
    reason = _why_no_browser()
    if reason:
        print(f"skipping the browser test: {reason}")
        pytest.skip(reason)
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def browser_env(tmp_path_factory, browser):
    from tests.ui_fixtures import build_ui_project

    proj = build_ui_project(tmp_path_factory.mktemp("ui-browser"))
    shots = Path(os.environ.get("CURATE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots")).resolve()
    shots.mkdir(parents=True, exist_ok=True)
    print(f"browser screenshots: {shots}")
    with serve(proj.cat.root) as url:
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        yield proj, url, page, shots
        page.close()


def test_every_page_renders_in_chromium(browser_env):
    proj, url, page, shots = browser_env
    for name, path, heading in PAGES:
        open_page(page, url, path, heading)
        assert page.get_by_text("Page not found").count() == 0
        screenshot(page, shots, name)
    assert {f"{name}.png" for name, _, _ in PAGES} <= {p.name for p in shots.glob("*.png")}


def test_relabel_by_click_then_undo(browser_env):
    proj, url, page, shots = browser_env
    cat = proj.cat
    sid = proj.flagged[0]  # given bird, suggested cat
    open_page(page, url, "label_issues", "Label issues")
    page.locator(f".st-key-li-accept-{sid}").get_by_role("button").click()
    live = poll(lambda: (d := cat.live_decisions()).loc[d.sample_id == sid].to_dict("records"))
    assert live and live[0]["action"] == "relabel" and live[0]["new_label"] == "cat" and live[0]["who"] == "ui"
    assert cat.current_labels().set_index("sample_id").at[sid, "label"] == "cat"
    wait_idle(page)
    assert page.locator(f".st-key-li-card-{sid}").count() == 0  # reviewed: gone from the unreviewed view
    screenshot(page, shots, "label_issues-after-relabel")

    open_page(page, url, "decisions", "Decisions")
    page.locator(f".st-key-dec-undo-{int(live[0]['id'])}").get_by_role("button").click()
    assert poll(lambda: sid not in set(cat.live_decisions()["sample_id"]))
    assert cat.current_labels().set_index("sample_id").at[sid, "label"] == "bird"


def test_box_selection_on_the_map_lists_its_samples(browser_env):
    proj, url, page, shots = browser_env
    open_page(page, url, "clusters", "Clusters")
    plot = page.locator(".st-key-cl-map .js-plotly-plot .nsewdrag").first  # the plot area that takes drags
    plot.wait_for(timeout=15_000)
    box = plot.bounding_box()
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 3, box["y"] + box["height"] / 2, steps=8)
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] - 2, steps=8)
    page.mouse.up()
    page.get_by_role("heading", name="Selected region").wait_for(timeout=20_000)
    wait_idle(page)
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.locator("[class*='st-key-cl-card-']").count() > 0  # the samples inside the box, as cards
    screenshot(page, shots, "clusters-box-selection")


def test_annotate_with_a_keyboard_shortcut(browser_env):
    proj, url, page, shots = browser_env
    first = proj.pool[0]
    open_page(page, url, "annotate", "Annotate")
    page.get_by_text(f"Sample #{first}").wait_for()
    page.locator("body").press("3")  # classes: 1 bird, 2 cat, 3 dog
    assert poll(lambda: proj.cat.current_labels().set_index("sample_id").at[first, "label"] == "dog")
    wait_idle(page)
    page.get_by_text(f"Sample #{proj.pool[1]}").wait_for(timeout=15_000)


# ------------------------------------------------------------------------------------------- `curate report`
@pytest.fixture(scope="module")
def report_file(tmp_path_factory, browser):
    from tests.ui_fixtures import build_audited_project

    proj = build_audited_project(tmp_path_factory.mktemp("report-browser"))
    out = tmp_path_factory.mktemp("report-html") / "report.html"
    res = subprocess.run(_curate_cmd() + ["report", "-p", str(proj.cat.root), "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return proj, out


def test_report_opens_in_chromium_without_errors(report_file, browser, tmp_path):
    from curate.engine.html_report import SECTIONS

    proj, out = report_file
    errors: list[str] = []
    requests: list[str] = []
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(out.as_uri(), wait_until="load")
    page.wait_for_selector("#fig-semdedup .main-svg", timeout=30_000)
    for sid in SECTIONS:
        section = page.locator(f"section#{sid}")
        section.scroll_into_view_if_needed()
        assert section.is_visible(), sid
        assert section.locator("h2").inner_text().strip() == SECTIONS[sid]
    for fig in ("fig-health", "fig-class-balance", "fig-noise-matrix", "fig-label-hist", "fig-outlier-hist",
                "fig-map", "fig-semdedup"):
        assert page.locator(f"#{fig}.js-plotly-plot .main-svg").count() >= 1, fig  # drawn by plotly.js
    assert page.locator("#fig-noise-matrix .hm, #fig-noise-matrix image").count() >= 1  # the heatmap layer
    assert page.locator("#fig-map .scatterlayer .point").count() == len(proj.ids)  # every sample on the map
    # every thumbnail decoded (a broken data: URI has naturalWidth 0)
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
    assert widths and min(widths) > 0, widths
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    page.close()
    assert errors == [], errors
    assert all(u.startswith(("file:", "data:", "about:", "blob:")) for u in requests), requests  # offline


# ------------------------------------------------------------------------------------------- README screenshots
def capture(project: Path, out_dir: Path, width: int = 1440, height: int = 1000) -> list[Path]:
    """Screenshots of every page of ``project`` (read-only: nothing is clicked)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with serve(project) as url, chromium() as browser:
        page = browser.new_page(viewport={"width": width, "height": height})
        for name, path, heading in PAGES:
            open_page(page, url, path, heading)
            written.append(screenshot(page, out_dir, name))
    return written


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Screenshots of every page of a project's review app")
    ap.add_argument("--project", required=True, type=Path)
    ap.add_argument("--out", default=Path("docs/screenshots"), type=Path)
    args = ap.parse_args()
    if reason := _why_no_browser():
        raise SystemExit(f"cannot take screenshots: {reason}")
    for p in capture(args.project, args.out):
        print(p)
    shutil.rmtree(args.out / "__pycache__", ignore_errors=True)
