"""The Embedding maps page through Streamlit's AppTest against the package's running API: one view per
model in one chart, a row id handed over in the session (as the Evaluation page does) marked in every
map, and one clear message when the API is down."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from embedsvc.client import EmbedsvcClient
from embedsvc.webui.common import MAPS_HIGHLIGHT_STATE, MAPS_PAGE
from tests.webui.conftest import INDEX, MODELS, RunningApi, dead_url

APP = Path(__file__).resolve().parents[2] / "webui" / "app.py"  # pages run from the entrypoint's folder


@pytest.fixture
def maps_page(running_api: RunningApi, ui_api_url: Callable[[str], None]) -> AppTest:
    ui_api_url(running_api.url)
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    assert not at.exception, at.exception
    return at


def chart_views(at: AppTest) -> list[dict]:
    charts = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    assert len(charts) == 1, charts
    return charts[0]["hconcat"]


def test_one_view_per_model_and_the_handed_over_id_is_marked(maps_page: AppTest, running_api: RunningApi) -> None:
    with EmbedsvcClient(running_api.url) as api:
        maps = api.maps(INDEX, sample=5000)
    target = maps.points[2].id
    maps_page.session_state[MAPS_HIGHLIGHT_STATE] = target  # what the Evaluation page sets before switching
    maps_page.switch_page(MAPS_PAGE).run()
    assert not maps_page.exception, maps_page.exception
    assert not maps_page.error, [e.value for e in maps_page.error]
    views = chart_views(maps_page)
    assert len(views) == len(MODELS)
    titles = [v["title"] for v in views]
    assert titles == [f"{m.display_name or m.model} ({m.method.upper()})" for m in maps.models]
    for view in views:  # the points, then the ring around the marked image
        assert [layer["mark"]["type"] for layer in view["layer"]] == ["circle", "point"]
        assert view["layer"][1]["encoding"]["description"]["value"] == f"marked {target}"
    assert any(f"Marked: **#{target}**" in m.value for m in maps_page.markdown)
    maps_page.button(key="maps-clear-mark").click().run()
    assert MAPS_HIGHLIGHT_STATE not in maps_page.session_state
    assert all("layer" not in v and v["mark"]["type"] == "circle" for v in chart_views(maps_page))  # no ring


def test_api_down_shows_one_message(ui_api_url: Callable[[str], None]) -> None:
    ui_api_url(dead_url())
    at = AppTest.from_file(str(APP), default_timeout=60).run().switch_page(MAPS_PAGE).run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and "is not reachable" in at.error[0].value
