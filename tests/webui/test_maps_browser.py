"""The Embedding maps page in a real browser (Debian's headless Chromium via Playwright, `streamlit run`
as `embedsvc ui` starts it, the package's running API): one map per model, hovering an image
highlights it in every map, ``?id=`` marks it in every map, and a click opens it as the comparison
page's query. Small maps are drawn as SVG, one element per point labelled with its image id, so the
test finds, hovers and clicks real points."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Locator, Page

from tests.webui.conftest import INDEX, MODELS, RunningApi
from tests.webui.test_browser import page, ui_url  # noqa: F401 (fixtures: the browser and the UI server)

pytestmark = pytest.mark.browser


POINTS = "[data-testid='stVegaLiteChart'] svg g.mark-symbol.role-mark:has(path[aria-roledescription='circle'])"


def map_groups(tab: Page) -> Locator:
    """Each model's scatter (Vega's mark group of the points, not the legend or the marker ring)."""
    return tab.locator(POINTS)


def point(group: Locator, row_id: int) -> Locator:
    return group.locator(f"path[aria-label='{row_id}']")


def open_maps(tab: Page, url: str, extra: str = "") -> None:
    tab.goto(f"{url}/Maps?index={INDEX}{extra}", wait_until="domcontentloaded")
    tab.get_by_text("Embedding maps").first.wait_for(timeout=60_000)
    tab.wait_for_function(
        """n => document.querySelectorAll(
            "[data-testid='stVegaLiteChart'] svg g.mark-symbol.role-mark path[aria-roledescription='circle']"
        ).length >= n""",
        arg=len(MODELS) * 12,
        timeout=180_000,
    )


def test_one_map_per_model_hover_everywhere_click_opens_the_query(
    page: Page,  # noqa: F811
    ui_url: str,  # noqa: F811
    running_api: RunningApi,
) -> None:
    maps = httpx.get(f"{running_api.url}/indexes/{INDEX}/maps", params={"sample": 5000}, timeout=300).json()
    ids = [p["id"] for p in maps["points"]]
    assert len(ids) == 12
    open_maps(page, ui_url)
    groups = map_groups(page)
    assert groups.count() == len(MODELS)
    titles = page.locator("[data-testid='stVegaLiteChart'] svg text").evaluate_all("ts => ts.map(t => t.textContent)")
    for m in maps["models"]:
        assert any(t.startswith(m["display_name"] or m["model"]) for t in titles), (m["model"], titles)
    for i in range(len(MODELS)):
        assert sorted(
            int(a) for a in groups.nth(i).locator("path").evaluate_all("ps => ps.map(p => p.ariaLabel)")
        ) == sorted(ids)

    # Hover one image in the first map: the same image is stroked in every map, the others are not.
    target = ids[3]
    point(groups.nth(0), target).hover()
    page.wait_for_function(
        """([id, n]) => [...document.querySelectorAll(`path[aria-label='${id}']`)]
            .filter(p => p.getAttribute('stroke') === 'black').length === n""",
        arg=[str(target), len(MODELS)],
        timeout=30_000,
    )
    for i in range(len(MODELS)):
        assert point(groups.nth(i), target).get_attribute("stroke") == "black"
        assert point(groups.nth(i), ids[4]).get_attribute("stroke") != "black"

    # Click it: the comparison page opens with that image as the query (in the URL too).
    point(groups.nth(1), target).click()
    page.wait_for_url(f"**id={target}**", timeout=60_000)
    page.get_by_text("Which model finds what?").wait_for(timeout=60_000)
    page.get_by_text(f"indexed image #{target}").wait_for(timeout=60_000)


def test_id_in_the_url_is_marked_in_every_map(page: Page, ui_url: str, running_api: RunningApi) -> None:  # noqa: F811
    maps = httpx.get(f"{running_api.url}/indexes/{INDEX}/maps", params={"sample": 5000}, timeout=300).json()
    target = maps["points"][5]["id"]
    open_maps(page, ui_url, f"&id={target}")
    rings = page.locator(f"[data-testid='stVegaLiteChart'] svg path[aria-label='marked {target}']")
    rings.first.wait_for(timeout=60_000)
    assert rings.count() == len(MODELS)
    assert page.get_by_text(f"Marked: #{target}").count() == 1
