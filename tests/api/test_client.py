"""embedsvc.client: the typed client the web UI uses, against the app (TestClient as transport)."""

from __future__ import annotations

import socket
import sys
import time

import pytest
from fastapi.testclient import TestClient

from embedsvc.client import ApiError, ApiUnavailableError, EmbedsvcClient
from embedsvc.store import row_id
from tests.api.conftest import INDEX, MODELS, ApiEnv
from tests.support import write_images


@pytest.fixture(scope="module")
def api(client: TestClient) -> EmbedsvcClient:
    return EmbedsvcClient(http=client)


def test_catalogue(api: EmbedsvcClient, api_env: ApiEnv) -> None:
    assert api.health().status == "ok"
    ready = api.ready()
    assert ready.ready and ready.models_loaded == MODELS
    assert [m.key for m in api.models().data] == MODELS
    assert INDEX in [i.name for i in api.indexes().data]
    assert api.index(INDEX).row_count == len(api_env.rel_paths)


def test_searches(api: EmbedsvcClient, client: TestClient, api_env: ApiEnv) -> None:
    data = (api_env.dataset / "bird/erase_heron.jpg").read_bytes()
    typed = api.search_upload(data, index=INDEX, k=3, models=["deit3_small", "efficientnet_lite0"])
    raw = client.post(
        "/search",
        params={"index": INDEX, "k": 3, "models": "deit3_small,efficientnet_lite0"},
        files={"image": ("q.jpg", data)},
    ).json()
    assert [[n.id for n in m.neighbours] for m in typed.models] == [
        [n["id"] for n in m["neighbours"]] for m in raw["models"]
    ]
    as_b64 = api.search_base64(data, index=INDEX, k=3, models=["deit3_small", "efficientnet_lite0"])
    assert [[n.id for n in m.neighbours] for m in as_b64.models] == [[n.id for n in m.neighbours] for m in typed.models]
    rid = row_id(INDEX, "bird/erase_heron.jpg")
    similar = api.search_by_id(rid, index=INDEX, k=2, label="bird")
    assert similar.query.id == rid and similar.query.label_name == "bird"
    assert all(n.label_name == "bird" and n.same_label_as_query for m in similar.models for n in m.neighbours)
    # URLs in results are API-relative; the client makes them absolute and fetches them.
    thumb = typed.models[0].neighbours[0].thumbnail_url
    assert api.absolute(thumb) == f"http://testserver{thumb}"
    assert api.fetch(thumb)[:3] == b"\xff\xd8\xff"
    assert api.thumbnail_url(INDEX, rid, 64) == f"http://testserver/images/{INDEX}/{rid}/thumbnail?size=64"
    assert api.image_bytes(INDEX, rid) == (api_env.dataset / "bird/erase_heron.jpg").read_bytes()
    assert api.thumbnail_bytes(INDEX, rid, 32)[:3] == b"\xff\xd8\xff"


def test_errors_carry_the_api_message(api: EmbedsvcClient) -> None:
    with pytest.raises(ApiError) as err:
        api.search_upload(b"not an image", index=INDEX)
    assert err.value.status == 415 and err.value.code == "not_an_image"
    assert "not a recognised image format" in err.value.detail
    with pytest.raises(ApiError) as err:
        api.index("nope")
    assert err.value.status == 404 and err.value.code == "unknown_index"


def test_unreachable_api() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with EmbedsvcClient(f"http://127.0.0.1:{port}", timeout=2) as api, pytest.raises(ApiUnavailableError):
        api.health()


def test_jobs_and_evaluation(api: EmbedsvcClient, api_env: ApiEnv) -> None:
    root = api_env.allowed / "via-client"
    write_images(root, 2, start_seed=100)
    job = api.start_job("client-job", str(root), models=["efficientnet_lite0"])
    deadline = time.monotonic() + 120
    while job.state not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = api.job("client-job", job.id)
    assert job.state == "succeeded", job.error
    assert [j.id for j in api.jobs("client-job")] == [job.id]
    report = api.evaluation(INDEX)
    assert report.model_dump()  # typed EvalResponse from the evaluation route


def test_client_imports_no_model_or_database_code() -> None:
    import subprocess

    code = "import sys, embedsvc.client; print(sorted(m for m in ('torch', 'pymilvus', 'timm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_listing_random_and_max_k(api: EmbedsvcClient, api_env: ApiEnv) -> None:
    assert api.max_k() == api_env.settings.max_k == api.indexes().max_k
    page = api.list_images(INDEX, offset=2, limit=3)
    ids = sorted(row_id(INDEX, r) for r in api_env.rel_paths)
    assert page.total == len(ids) and [r.id for r in page.data] == ids[2:5]
    assert api.fetch(page.data[0].thumbnail_url)[:3] == b"\xff\xd8\xff"
    birds = api.list_images(INDEX, label="bird", limit=500)
    assert birds.label_filter == 0 and {r.label_name for r in birds.data} == {"bird"}
    drawn = api.random_images(INDEX, count=4, seed=3, label=0)
    assert drawn == api.random_images(INDEX, count=4, seed=3, label="bird")
    assert {r.id for r in drawn.data} <= {r.id for r in birds.data} and drawn.count == 4
    assert api.random_images(INDEX).count == 1
    with pytest.raises(ApiError) as err:
        api.list_images(INDEX, limit=0)
    assert err.value.status == 422 and err.value.code == "validation_error"
    with pytest.raises(ApiError) as err:
        api.random_images("nope")
    assert err.value.status == 404 and err.value.code == "unknown_index"
