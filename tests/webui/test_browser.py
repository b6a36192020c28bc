"""The page in a real browser: Debian's headless Chromium, driven by Playwright, against `streamlit run`.

Streamlit serves the page on localhost exactly as `embedsvc ui` starts it (same command line and
environment); the API is the package's running uvicorn. The browser uploads a photo, waits until
every model's column holds k loaded thumbnails, saves a screenshot in the test's tmp dir and checks
what is on screen: one header per model, k images under each, the untrained warning where weights
are random. The tracked docs/screenshot-ui.png (the README shows it) is refreshed only on request:
``EMBEDSVC_UPDATE_SCREENSHOT=1 pytest tests/webui/test_browser.py``.

Playwright's own browser download does not work offline, so it drives /usr/bin/chromium
(``make browser-deps`` installs it) with the flags this machine needs: no sandbox as root, no GPU,
and no background networking (the closed network refuses those connections).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from embedsvc.webui.cli import streamlit_command, ui_environment
from tests.webui.conftest import MODELS, RunningApi, free_port, wait_http

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "screenshot-ui.png"  # tracked: overwritten only with UPDATE_SCREENSHOT=1
UPDATE_SCREENSHOT = "EMBEDSVC_UPDATE_SCREENSHOT"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
K_DEFAULT = 8  # the page's default k
QUERY = "bird/erase_heron.jpg"


@pytest.fixture(scope="module")
def ui_url(running_api: RunningApi, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`streamlit run webui/app.py` on a free port, pointed at the running API, as `embedsvc ui` runs it."""
    port = free_port()
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            streamlit_command(port=port), env=ui_environment(running_api.url), cwd=REPO, stdout=out, stderr=out
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/_stcore/health", 90)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    """A fresh Chromium with an empty profile and a wide viewport (three model columns side by side)."""
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `make browser-deps` (apt-get install chromium)", pytrace=False)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000},
            device_scale_factor=1,
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def wait_for_columns(page: Page) -> None:
    """Until every model's column holds k thumbnails that have actually loaded (not only <img> tags)."""
    page.wait_for_function(
        """([keys, k]) => keys.every(key => {
            const imgs = [...document.querySelectorAll(`.st-key-model-${key} [data-testid="stImage"] img`)];
            return imgs.length === k && imgs.every(img => img.complete && img.naturalWidth > 0);
        })""",
        arg=[MODELS, K_DEFAULT],
        timeout=120_000,
    )


def test_upload_in_a_real_browser(page: Page, ui_url: str, running_api: RunningApi, tmp_path: Path) -> None:
    models = {m["key"]: m for m in httpx.get(f"{running_api.url}/models").json()["data"]}
    page.goto(ui_url, wait_until="domcontentloaded")
    page.get_by_text("Which model finds what?").wait_for(timeout=60_000)
    page.locator("input[type=file]").set_input_files(str(running_api.dataset / QUERY))

    wait_for_columns(page)
    # Streamlit scrolls inside its own container, so a "full page" shot is the viewport: grow the
    # viewport to the content's height instead, then let the layout settle.
    height = page.evaluate(
        """() => Math.max(...['[data-testid="stMain"]', '[data-testid="stAppViewContainer"]', 'body']
            .map(sel => document.querySelector(sel)).filter(Boolean).map(el => el.scrollHeight))"""
    )
    page.set_viewport_size({"width": 1600, "height": min(int(height) + 40, 4000)})
    page.wait_for_timeout(800)
    shot = tmp_path / "screenshot-ui.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get(UPDATE_SCREENSHOT) == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, SCREENSHOT)

    columns = page.locator("[class*='st-key-model-']")
    assert columns.count() == len(MODELS)
    for key in MODELS:
        column = page.locator(f".st-key-model-{key}")
        assert column.locator("h3").first.inner_text().strip() == models[key]["display_name"]
        assert column.locator("[data-testid='stImage'] img").count() == K_DEFAULT
        captions = column.locator("[data-testid='stImageCaption']").all_inner_texts()
        assert [c.split(" · ")[0] for c in captions] == [f"#{r}" for r in range(1, K_DEFAULT + 1)]
        assert column.get_by_role("button", name="Use as query").count() == K_DEFAULT
        untrained = column.get_by_text("UNTRAINED").count() > 0
        assert untrained == models[key]["untrained"], key
    assert page.get_by_text("uploaded: erase_heron.jpg").count() == 1  # the query beside the columns
    assert page.get_by_text("Overlap between models").count() == 1
    assert shot.stat().st_size > 20_000

    # Click a neighbour: it becomes the next query (by id), in the URL too, and same-label marks appear.
    button = page.locator(f"[class*='st-key-requery-{MODELS[0]}-2-']")
    target = next(c for c in button.get_attribute("class").split() if c.startswith("st-key-requery-"))
    target_id = target.rsplit("-", 1)[1]
    button.get_by_role("button").click()
    page.wait_for_url(f"**id={target_id}**", timeout=60_000)
    page.get_by_text(f"indexed image #{target_id}").wait_for(timeout=60_000)
    wait_for_columns(page)
    for key in MODELS:
        column = page.locator(f".st-key-model-{key}")
        marks = column.get_by_text(re.compile(r"^\W*\w*\W*(same|other) label$")).count()
        assert marks == K_DEFAULT, key  # the query's label is known now: every neighbour is marked
    page.screenshot(path=str(tmp_path / "screenshot-ui-requery.png"))
