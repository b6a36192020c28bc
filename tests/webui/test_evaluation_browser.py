"""The Evaluation page in a real browser (Debian's Chromium via Playwright) on an index whose answer is known.

All 69 bundled photos at 64 px, two backbones: EfficientNet-Lite0 with its real weights and DeiT-III-S
with seeded random weights, served by their own API (the package's loaded embedders, a private Milvus
Lite) so that the 12-photo index of the other UI tests stays as they expect it. With 69 queries the
trained model is better on P@1 by a wide margin (McNemar, Holm-adjusted over the whole report), so the
matrix must say so; every other cell must match the report's own ``paired`` entries, fetched from the
API. The charts render as SVG, whose marks carry their data in ``aria-label`` (Vega's accessibility
text), which is what these checks read.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, sync_playwright

from embedsvc.client import FUSED_KEY, EmbedsvcClient, EvalResponse
from embedsvc.webui.cli import streamlit_command, ui_environment
from tests.support import SAMPLE_PHOTOS, make_settings
from tests.webui.conftest import RunningApi, free_port, serve, wait_http
from tests.webui.test_browser import CHROMIUM, CHROMIUM_FLAGS, REPO

pytestmark = pytest.mark.browser

INDEX = "known"
TRAINED, UNTRAINED = "efficientnet_lite0", "deit3_small"
METRIC = "precision@1"  # the page's default metric for both charts


@dataclass
class KnownIndex:
    api_url: str
    ui_url: str
    report: EvalResponse


@pytest.fixture(scope="module")
def known(running_api: RunningApi, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnownIndex]:
    """A second API over all sample photos (two of the package's loaded models) and the UI pointed at it."""
    from embedsvc.indexer.folder import folder_source
    from embedsvc.indexer.runner import run_index
    from embedsvc.main import create_app
    from embedsvc.store import Store

    base = tmp_path_factory.mktemp("eval-browser")
    models = [TRAINED, UNTRAINED]
    embedders = {k: running_api.embedders[k] for k in models}
    settings = make_settings(base, models=models, thumbnail_sizes=[128], max_image_pixels=4_000_000)
    with Store.from_settings(settings, owner="tests/webui eval browser") as store:
        source = folder_source(SAMPLE_PHOTOS, labels_csv=SAMPLE_PHOTOS / "labels.csv")
        run_index(source, index_name=INDEX, embedders=embedders, store=store, settings=settings, workers=0)
    with serve(create_app(settings, embedders=embedders)) as api_url:
        with EmbedsvcClient(api_url) as client:
            report = client.evaluation(INDEX)  # computed once; the page gets the API's cached copy
        port = free_port()
        log = base / "streamlit.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                streamlit_command(port=port), env=ui_environment(api_url), cwd=REPO, stdout=out, stderr=out
            )
            try:
                wait_http(f"http://127.0.0.1:{port}/_stcore/health", 90)
                yield KnownIndex(api_url, f"http://127.0.0.1:{port}", report)
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `make browser-deps` (apt-get install chromium)", pytrace=False)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            user_data_dir=str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1200},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def marks(chart: Locator, kind: str) -> list[dict[str, str]]:
    """The data of every mark of one kind ("rule mark", "point", "text mark"), parsed from its aria-label."""
    found_marks = chart.locator(f"[aria-roledescription='{kind}']")
    found_marks.first.wait_for(state="attached", timeout=60_000)  # "attached": a rule is 0 px high, never "visible"
    found = []
    for label in found_marks.evaluate_all(
        "els => els.map(el => el.getAttribute('aria-label'))"
    ):
        fields = (part.split(": ", 1) for part in label.split("; "))
        found.append({name.strip(): value.strip() for name, value in fields})
    return found


def expected_cell(a: str, b: str, diff: float, p_holm: float) -> str:
    """The report's rule, written out here: "better" only where the Holm-adjusted p is below 0.05."""
    if p_holm < 0.05 and diff != 0:
        return f"{a if diff > 0 else b} better"
    return "no significant difference"


def test_error_bars_matrix_fused_entry_and_maps_link(page: Page, known: KnownIndex, tmp_path: Path) -> None:
    report = known.report
    assert set(report.models) == {TRAINED, UNTRAINED, FUSED_KEY}
    page.goto(f"{known.ui_url}/Evaluation?index={INDEX}", wait_until="domcontentloaded")
    page.get_by_text("Significant wins").wait_for(timeout=120_000)

    # Error bars: one rule (95% CI) and one point per entry, at the report's numbers; the fusion marked.
    ci_chart = page.locator(".st-key-ci-chart")
    bars = {m["model"]: m for m in marks(ci_chart, "rule mark")}
    points = {m["model"]: m for m in marks(ci_chart, "point")}
    assert set(bars) == set(points) == set(report.models)
    for key, m in report.models.items():
        low, high = m.metrics_ci[METRIC]
        assert (bars[key]["95% CI low"], bars[key]["95% CI high"]) == (f"{low:.3f}", f"{high:.3f}"), key
        assert float(points[key]["value"]) == pytest.approx(m.metrics[METRIC], abs=1e-9)
        assert bars[key]["kind"] == ("fusion of the others (RRF)" if key == FUSED_KEY else "backbone")
    assert bars[FUSED_KEY]["entry"] == f"{FUSED_KEY} (RRF of 2)"
    assert page.get_by_text(re.compile(rf"{FUSED_KEY}.*is not a backbone")).count() == 1

    # The matrix: every off-diagonal cell is the report's verdict from the row's side.
    cells = {(m["A"], m["B"]): m for m in marks(page.locator(".st-key-win-matrix"), "text mark")}
    compared = [p for p in report.paired if p.metric == METRIC]
    assert len(compared) == 3  # the two backbones, and the fusion against each
    for p in compared:
        for a, b, diff in ((p.a, p.b, p.diff), (p.b, p.a, -p.diff)):
            cell = cells[(a, b)]
            assert " ".join(cell["text"].split()) == expected_cell(a, b, diff, p.p_holm), (a, b)  # shown in the cell
            assert cell["verdict"] == p.says()  # the tooltip: the report's sentence
            assert cell["A − B"].replace("−", "-") == f"{diff:+.3f}"
            assert cell["p (Holm)"] == f"{p.p_holm:.4f}"
    trained_vs = next(p for p in compared if {p.a, p.b} == {TRAINED, UNTRAINED})
    assert trained_vs.p_holm < 0.05 and trained_vs.says() == f"{TRAINED} better than {UNTRAINED}"  # the known answer
    assert {" ".join(cells[pair]["text"].split()) for pair in ((TRAINED, UNTRAINED), (UNTRAINED, TRAINED))} == {
        f"{TRAINED} better"
    }
    page.screenshot(path=str(tmp_path / "evaluation.png"), full_page=True)

    # A disagreement example opens on the maps, highlighted, with index and id in the URL.
    only = report.cross_model.agreement.examples.only_right[TRAINED]
    assert only, "the trained model is alone right at rank 1 on some queries"
    button = page.locator(f".st-key-map-{TRAINED}-{only[0]}").get_by_role("button")
    button.scroll_into_view_if_needed()
    button.click()
    page.wait_for_url(re.compile(rf"/Maps\?(.*&)?index={INDEX}(&.*)?$"), timeout=60_000)
    assert f"id={only[0]}" in page.url
    page.get_by_role("heading", name="Embedding maps").wait_for(timeout=60_000)
    page.get_by_text(re.compile(rf"^Marked: #{only[0]},")).wait_for(timeout=120_000)  # UMAP's first run compiles
    rings = page.locator(f"[aria-label='marked {only[0]}']")
    rings.first.wait_for(state="attached", timeout=60_000)
    assert rings.count() == 2  # the same image ringed in both models' maps
