"""The pages through Streamlit's own AppTest, against a running API (uvicorn) on a small real index.

What a user does, step by step: upload, look at each model's column, click a neighbour to requery,
pick or draw a random indexed image, filter by label; and what they see when things go wrong (API
down, upload rejected, no index). The expected results come from the API itself, asked directly.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Block

from embedsvc.client import EmbedsvcClient
from embedsvc.store import row_id
from embedsvc.webui import compare
from embedsvc.webui.common import INDEX_STATE, MAPS_HIGHLIGHT_STATE
from tests.webui.conftest import INDEX, MODELS, RunningApi, dead_url, serve

APP = Path(__file__).resolve().parents[2] / "webui" / "app.py"
TIMEOUT = 120
K = 4


@pytest.fixture
def api(running_api: RunningApi) -> Iterator[EmbedsvcClient]:
    with EmbedsvcClient(running_api.url) as client:
        yield client


@pytest.fixture
def at(running_api: RunningApi, ui_api_url: Callable[[str], None]) -> AppTest:
    """The comparison page pointed at the running API, with k set to K."""
    ui_api_url(running_api.url)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    at.sidebar.slider(key="k").set_value(K).run()
    return at


def photo(running_api: RunningApi, rel: str) -> bytes:
    return (running_api.dataset / rel).read_bytes()


def model_block(at: AppTest, key: str) -> Block:
    """The column of one model (the page keys its container ``model-<key>``)."""
    found = [b for b in at.container if b.key == f"model-{key}"]
    assert len(found) == 1, [b.key for b in at.container]
    return found[0]


def neighbour_ids(block: Block) -> list[int]:
    """Neighbour ids in rank order, read off the column's "Query with this" buttons."""
    keys = [b.key for b in block.button if b.key and b.key.startswith("requery-")]
    return [int(k.rsplit("-", 1)[1]) for k in keys]


def errors(at: AppTest) -> list[str]:
    """Error boxes other than the (expected) UNTRAINED notices."""
    return [e.value for e in at.error if "UNTRAINED" not in e.value]


def assert_clean(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not errors(at), errors(at)


def test_upload_shows_one_column_per_model(at: AppTest, running_api: RunningApi, api: EmbedsvcClient) -> None:
    data = photo(running_api, "bird/erase_gosling.jpg")
    at.file_uploader(key="upload").set_value(("gosling.jpg", data, "image/jpeg")).run()
    assert_clean(at)
    expected = api.search_upload(data, index=INDEX, k=K, models=MODELS)
    assert at.session_state["query"]["kind"] == "upload"
    assert "Query" in [h.value for h in at.subheader]
    for model in expected.models:
        block = model_block(at, model.model_key)
        assert [h.value for h in block.subheader] == [model.display_name]
        assert neighbour_ids(block) == [n.id for n in model.neighbours]
        images = [img for el in block.image for img in el.captions]
        assert images == [compare.caption(n) for n in model.neighbours]  # rank, distance, label
        assert len(images) == K
        timings = " ".join(c.value for c in block.caption)
        assert "forward" in timings and "ms" in timings and model.provenance.label in timings + " ".join(
            e.value for e in block.error
        )
        untrained_box = [e.value for e in block.error if "UNTRAINED" in e.value]
        assert bool(untrained_box) == model.untrained  # random weights are flagged where they are used
    assert any(m.untrained for m in expected.models) and not all(m.untrained for m in expected.models)
    # Upload: the query's label is unknown, so no same-label marks, but the shared marks are there.
    all_markdown = " ".join(m.value for m in at.markdown)
    assert compare.SAME_LABEL_MARK not in all_markdown
    shared = compare.shared_ids(expected.models)
    assert all_markdown.count(compare.SHARED_MARK) == len(shared) * len(MODELS)
    # Overlap: the heat map's table is the API's Jaccard per pair.
    frame = compare.jaccard_matrix(MODELS, expected.overlap)
    shown = [df.value for df in at.dataframe]
    assert any(getattr(v, "shape", None) == frame.shape for v in shown)
    heat = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert len(heat) == 1 and "jaccard" in heat[0]


def test_click_a_neighbour_to_requery_with_marks(at: AppTest, running_api: RunningApi, api: EmbedsvcClient) -> None:
    at.file_uploader(key="upload").set_value(("fish.jpg", photo(running_api, "fish/categorization_fish1.jpg"),
                                              "image/jpeg")).run()
    assert_clean(at)
    first = MODELS[0]
    target = neighbour_ids(model_block(at, first))[1]
    at.button(key=next(b.key for b in model_block(at, first).button if b.key.endswith(f"-{target}"))).click().run()
    assert_clean(at)
    assert at.session_state["query"] == {"kind": "id", "id": target}  # the neighbour is the next query
    assert at.query_params["id"] == str(target) and at.query_params["index"] == INDEX  # shareable URL
    expected = api.search_by_id(target, index=INDEX, k=K, models=MODELS)
    assert expected.query.label_name
    assert f"**Label:** {expected.query.label_name}" in [m.value for m in at.markdown]
    shared = compare.shared_ids(expected.models)
    for model in expected.models:
        block = model_block(at, model.model_key)
        ids = neighbour_ids(block)
        assert ids == [n.id for n in model.neighbours] and target not in ids  # "more like this" excludes itself
        text = " ".join(m.value for m in block.markdown)
        same = sum(bool(n.same_label_as_query) for n in model.neighbours)
        assert text.count(compare.SAME_LABEL_MARK) == same
        assert text.count(compare.OTHER_LABEL_MARK) == K - same
        assert text.count(compare.SHARED_MARK) == len(shared)
        assert f"**{same} of {K} share the query's label**" in text


def api_requests(url: str, method: str, route: str) -> float:
    """How many requests the running API has answered on a route (any status), from its /metrics."""
    text = httpx.get(f"{url}/metrics").text
    pattern = rf'^embedsvc_http_requests_total{{method="{method}",route="{re.escape(route)}",status="\d+"}} (\S+)$'
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE))


def test_pick_random_and_label_filter(at: AppTest, running_api: RunningApi, api: EmbedsvcClient) -> None:
    # k's bound is the API's max_k, read from the index list: loading the page runs no search at all
    # (the page used to probe k with noise-image searches to find images to pick).
    assert at.sidebar.slider(key="k").max == api.max_k() == 30
    searches = api_requests(running_api.url, "POST", "/search")
    at.run()
    assert api_requests(running_api.url, "POST", "/search") == searches

    pick = at.selectbox(key="pick")
    ids = sorted(row_id(INDEX, r) for r in running_api.rel_paths)
    assert list(pick.options) == [  # the API's list, in id order: a small index fits one page
        f"{running_api.labels[r]} · {r}" for r in sorted(running_api.rel_paths, key=lambda r: row_id(INDEX, r))
    ]
    assert [r.id for r in api.list_images(INDEX, limit=500).data] == ids
    assert f"Images 1–{len(ids)} of {len(ids)}, in id order." in [c.value for c in at.caption]
    rel = next(r for r in running_api.rel_paths if r.startswith("windmill/"))
    pick.select(row_id(INDEX, rel)).run()
    at.button(key="pick-go").click().run()
    assert_clean(at)
    assert at.session_state["query"] == {"kind": "id", "id": row_id(INDEX, rel)}
    assert "**Label:** windmill" in [m.value for m in at.markdown]

    # The list filtered by label; Random draws from the API (with that label) and queries by id.
    at.selectbox(key=f"pick-label-{INDEX}").select("fish").run()
    assert_clean(at)
    fish = sorted((r for r in running_api.rel_paths if r.startswith("fish/")), key=lambda r: row_id(INDEX, r))
    assert list(at.selectbox(key="pick").options) == [f"fish · {r}" for r in fish]
    draws = api_requests(running_api.url, "GET", "/indexes/{name}/images/random")
    at.button(key="random").click().run()
    assert_clean(at)
    assert api_requests(running_api.url, "GET", "/indexes/{name}/images/random") == draws + 1
    assert at.session_state["query"]["kind"] == "id"
    assert at.session_state["query"]["id"] in {row_id(INDEX, r) for r in fish}
    assert "**Label:** fish" in [m.value for m in at.markdown]

    # The sidebar's filter is on the neighbours (another label: the fish query has only 3 fellow fish).
    at.sidebar.selectbox(key=f"label-{INDEX}").select("bird").run()
    assert_clean(at)
    captions = [c for el in at.image for c in el.captions if c.startswith("#")]
    assert len(captions) == K * len(MODELS) and all(c.endswith("· bird") for c in captions)


def test_pick_pages_through_a_large_index(
    running_api: RunningApi, ui_api_url: Callable[[str], None], tmp_path: Path
) -> None:
    """More images than one page of the pick list: a page number picks which ones are listed."""
    import numpy as np

    from embedsvc.main import create_app
    from embedsvc.store import Store
    from tests.support import make_settings

    settings = make_settings(tmp_path, models=MODELS)
    emb = running_api.embedders[MODELS[0]]
    rels = [f"{'ab'[i % 2]}/img_{i:03d}.png" for i in range(230)]
    vectors = np.random.default_rng(0).standard_normal((len(rels), emb.dim)).astype(np.float32)
    rows = [
        {"id": row_id("many", rel), "vector": vec, "rel_path": rel, "content_hash": rel, "label_id": "ab".index(rel[0]),
         "label_name": rel[0], "width": 8, "height": 8}
        for rel, vec in zip(rels, vectors, strict=True)
    ]
    with Store.from_settings(settings, owner="tests/webui large index") as store:
        manifest = emb.manifest() | {"dataset_root": str(tmp_path), "label_names": ["a", "b"]}
        store.ensure_collection("many", emb.key, manifest)
        store.upsert("many", emb.key, rows)
    in_id_order = sorted(rels, key=lambda r: row_id("many", r))
    with serve(create_app(settings, embedders=running_api.embedders)) as url:
        ui_api_url(url)
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
        assert_clean(at)
        assert list(at.selectbox(key="pick").options) == [f"{r[0]} · {r}" for r in in_id_order[:100]]
        assert "Images 1–100 of 230, in id order." in [c.value for c in at.caption]
        at.number_input(key="pick-page-many-None").set_value(3).run()
        assert_clean(at)
        assert list(at.selectbox(key="pick").options) == [f"{r[0]} · {r}" for r in in_id_order[200:]]
        assert "Images 201–230 of 230, in id order." in [c.value for c in at.caption]
        at.selectbox(key="pick-label-many").select("b").run()
        assert_clean(at)
        b_rels = [r for r in in_id_order if r.startswith("b/")]
        assert list(at.selectbox(key="pick").options) == [f"b · {r}" for r in b_rels[:100]]
        at.number_input(key="pick-page-many-b").set_value(2).run()
        assert list(at.selectbox(key="pick").options) == [f"b · {r}" for r in b_rels[100:]]
        target = b_rels[107]
        at.selectbox(key="pick").select(row_id("many", target)).run()
        at.button(key="pick-go").click().run()
        assert at.session_state["query"] == {"kind": "id", "id": row_id("many", target)}


def test_api_down_shows_a_message(running_api: RunningApi, ui_api_url: Callable[[str], None]) -> None:
    url = dead_url()
    ui_api_url(url)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert len(at.error) == 1
    assert f"The embedsvc API at {url} is not reachable" in at.error[0].value
    assert "embedsvc serve" in at.error[0].value


def test_rejected_upload_shows_the_api_message(at: AppTest) -> None:
    at.file_uploader(key="upload").set_value(("notes.jpg", b"this is not an image", "image/jpeg")).run()
    assert not at.exception
    assert len(errors(at)) == 1
    message = errors(at)[0]
    assert message.startswith("The upload was rejected:") and "not a recognised image format" in message
    assert "Traceback" not in message and not [b for b in at.container if (b.key or "").startswith("model-")]


def test_too_large_upload_shows_the_api_message(at: AppTest) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (3000, 3000), "white").save(buf, "PNG")  # small file, too many pixels for the API
    at.file_uploader(key="upload").set_value(("huge.png", buf.getvalue(), "image/png")).run()
    assert not at.exception
    assert len(errors(at)) == 1 and errors(at)[0].startswith("The upload was rejected:")


def test_no_index_yet_then_an_empty_index(
    running_api: RunningApi, ui_api_url: Callable[[str], None], tmp_path: Path
) -> None:
    from embedsvc.main import create_app
    from embedsvc.store import Store
    from tests.support import make_settings

    settings = make_settings(tmp_path, models=MODELS)
    with serve(create_app(settings, embedders=running_api.embedders)) as url:
        ui_api_url(url)
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("No index yet" in w.value for w in at.warning)

    emb = running_api.embedders[MODELS[0]]
    with Store.from_settings(settings, owner="tests/webui empty index") as store:
        store.ensure_collection("empty", emb.key, emb.manifest() | {"dataset_root": str(tmp_path), "label_names": []})
    with serve(create_app(settings, embedders=running_api.embedders)) as url:
        ui_api_url(url)
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception and not at.error
    assert any("Index **empty** is empty" in i.value for i in at.info)


def test_index_overview_lists_and_starts_a_job(at: AppTest, running_api: RunningApi) -> None:
    at.switch_page("pages/1_Index_overview.py").run()
    assert_clean(at)
    assert "Index overview" in [t.value for t in at.title]
    table = at.dataframe[0].value
    assert list(table["index"]) == [INDEX] and int(table["rows"][0]) == len(running_api.rel_paths)
    assert any("UNTRAINED" in w.value for w in at.warning)
    # Refused folder: the API's message, no job.
    at.text_input(key="job-index").input("ui-job")
    at.text_input(key="job-root").input("/etc")
    at.button(key="FormSubmitter:bulk-index-Start indexing").click().run()
    assert not at.exception
    assert any(e.value.startswith("The API refused the job:") for e in at.error)
    # An allowed folder: a job starts and its progress shows.
    folder = running_api.allowed / "ui-job"
    (folder / "fish").mkdir(parents=True)
    (folder / "fish" / "a.jpg").write_bytes(photo(running_api, "fish/categorization_fish1.jpg"))
    at.text_input(key="job-root").input(str(folder))
    at.multiselect(key="job-models").select("efficientnet_lite0")
    at.button(key="FormSubmitter:bulk-index-Start indexing").click().run()
    assert not at.exception
    index, job_id = at.session_state["overview_job"]
    assert index == "ui-job" and job_id
    assert any(f"Job {job_id} on **ui-job**" in p.proto.text for p in at.get("progress"))


def test_evaluation_page_and_disagreement_opens_side_by_side(at: AppTest, api: EmbedsvcClient) -> None:
    at.switch_page("pages/2_Evaluation.py").run()
    assert_clean(at)
    report = api.evaluation(INDEX)
    table = at.dataframe[0].value
    scored = table[table["scored against"] == "labels"]
    assert list(scored["model"]) == list(report.models)
    for key, m in report.models.items():
        assert scored.set_index("model").loc[key, "precision@1"] == pytest.approx(m.metrics["precision@1"])
    charts = [c.proto.spec for c in at.get("vega_lite_chart")]
    assert len(charts) == 3  # the error bars, the matrix of significant wins, the precision@k curves
    assert "precision@1: 95% intervals" in charts[0] and '"rule"' in charts[0]
    assert "precision@1: paired comparisons (Holm-adjusted)" in charts[1] and "precision@k" in charts[2]
    assert [s.value for s in at.subheader][:6] == [
        "Metrics per model", "Metrics with 95% intervals", "Significant wins", "Precision@k", "Worst classes",
        "Where the models disagree",
    ]
    assert "fused_rrf" in list(scored["model"]) and report.fusion is not None
    fused_weights = scored.set_index("model").loc["fused_rrf", "weights"]
    assert fused_weights == f"fusion: RRF (k = 60) of {', '.join(report.fusion.of)}"
    at.selectbox(key="ci-metric").set_value("all metrics").run()  # small multiples of every metric
    assert_clean(at)
    assert '"facet"' in at.get("vega_lite_chart")[0].proto.spec
    opens = [b for b in at.button if b.key and b.key.startswith("open-")]
    maps = [b for b in at.button if b.key and b.key.startswith("map-")]
    examples = report.cross_model.agreement.examples
    expected = sum(min(len(v), 6) for v in examples.only_right.values()) + min(len(examples.none_right), 6)
    assert len(opens) == len(maps) == expected > 0
    assert [b.key.removeprefix("map-") for b in maps] == [b.key.removeprefix("open-") for b in opens]
    target = int(opens[0].key.rsplit("-", 1)[1])
    opens[0].click().run()
    assert_clean(at)
    assert at.session_state["query"] == {"kind": "id", "id": target}
    assert "Which model finds what?" in [t.value for t in at.title]  # back on the comparison page
    assert all(target not in neighbour_ids(model_block(at, key)) for key in MODELS)
    # The same example on the maps: highlighted there, index and id in the URL.
    at.switch_page("pages/2_Evaluation.py").run()
    maps = [b for b in at.button if b.key and b.key.startswith("map-")]
    target = int(maps[-1].key.rsplit("-", 1)[1])
    maps[-1].click().run()
    assert not at.exception, at.exception
    assert at.session_state[MAPS_HIGHLIGHT_STATE] == target and at.session_state[INDEX_STATE] == INDEX
    assert at.query_params["id"] == str(target) and at.query_params["index"] == INDEX
    assert "Evaluation" not in [t.value for t in at.title]  # on the maps page now


def test_every_page_says_when_the_api_is_down_and_imports_no_model_code(tmp_path: Path) -> None:
    """In a fresh process: each page shows the "not reachable" message, and torch/pymilvus never load
    (the UI image ships without them)."""
    script = tmp_path / "pages.py"
    script.write_text(
        "import json, sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"at = AppTest.from_file({str(APP)!r}, default_timeout=60).run()\n"
        "seen = [[e.value for e in at.error]]\n"
        "for page in ('pages/1_Index_overview.py', 'pages/2_Evaluation.py'):\n"
        "    seen.append([e.value for e in at.switch_page(page).run().error])\n"
        "    assert not at.exception, at.exception\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'pymilvus', 'milvus_lite') if m in sys.modules)\n"
        "print(json.dumps([seen, heavy]))\n"
    )
    env = {**os.environ, "EMBEDSVC_API_URL": dead_url()}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert heavy == []
    assert len(seen) == 3 and all(len(errs) == 1 and "is not reachable" in errs[0] for errs in seen), seen


def test_fused_checkbox_adds_a_labelled_fused_column(at: AppTest, running_api: RunningApi, api: EmbedsvcClient) -> None:
    data = photo(running_api, "bird/erase_gosling.jpg")
    at.file_uploader(key="upload").set_value(("gosling.jpg", data, "image/jpeg")).run()
    assert_clean(at)
    assert not [b for b in at.container if b.key == "model-fused_rrf"]  # off by default
    at.sidebar.checkbox(key="fuse").check().run()
    assert_clean(at)
    expected = api.search_upload(data, index=INDEX, k=K, models=MODELS, fuse="rrf")
    fused = expected.models[-1]
    assert fused.model_key == "fused_rrf"
    block = model_block(at, "fused_rrf")
    assert [h.value for h in block.subheader] == [fused.display_name]
    assert compare.FUSED_LABEL in " ".join(m.value for m in block.markdown)
    assert neighbour_ids(block) == [n.id for n in fused.neighbours]
    captions = [img for el in block.image for img in el.captions]
    assert captions == [compare.caption(n) for n in fused.neighbours] and all("RRF=" in c for c in captions)
    for model in expected.models[:-1]:  # the model columns are still there, unchanged
        assert neighbour_ids(model_block(at, model.model_key)) == [n.id for n in model.neighbours]
    # "found by all" means the models only (the fused column marks those of its neighbours too).
    shared = compare.shared_ids(expected.models[:-1])
    marks = " ".join(m.value for m in at.markdown).count(compare.SHARED_MARK)
    assert marks == len(shared) * len(MODELS) + sum(n.id in shared for n in fused.neighbours)
