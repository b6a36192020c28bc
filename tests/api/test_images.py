"""GET /images/...: files by id only, thumbnails cached once, and no path from any parameter escapes."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from embedsvc.store import Store, row_id
from tests.api.conftest import INDEX, ApiEnv

GOSLING = "bird/erase_gosling.jpg"


def test_image_is_the_indexed_file(client: TestClient, api_env: ApiEnv) -> None:
    resp = client.get(f"/images/{INDEX}/{row_id(INDEX, GOSLING)}")
    assert resp.status_code == 200
    assert resp.content == (api_env.dataset / GOSLING).read_bytes()
    assert resp.headers["content-type"] == "image/jpeg"
    assert resp.headers["x-content-type-options"] == "nosniff"


def test_thumbnail_rendered_once_then_cached(client: TestClient, api_env: ApiEnv) -> None:
    rid = row_id(INDEX, "fish/categorization_fish1.jpg")
    thumbs = api_env.settings.data_dir / "thumbnails"
    before = set(thumbs.rglob("*.jpg")) if thumbs.exists() else set()
    first = client.get(f"/images/{INDEX}/{rid}/thumbnail", params={"size": 64})
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(first.content)).size) == 64
    created = set(thumbs.rglob("*.jpg")) - before
    assert len(created) == 1
    (cached,) = created
    assert cached.resolve().is_relative_to(thumbs.resolve())
    stamp = cached.stat().st_mtime_ns
    os.utime(cached, ns=(stamp - 10**9, stamp - 10**9))  # any re-render would bump it again
    second = client.get(f"/images/{INDEX}/{rid}/thumbnail", params={"size": 64})
    assert second.content == first.content
    assert cached.stat().st_mtime_ns == stamp - 10**9
    assert set(thumbs.rglob("*.jpg")) - before == created
    default = client.get(f"/images/{INDEX}/{rid}/thumbnail")  # first configured size
    assert max(Image.open(io.BytesIO(default.content)).size) == 32


# -- path traversal ---------------------------------------------------------------------------------


def _assert_no_leak(resp, api_env: ApiEnv) -> None:
    assert resp.status_code in (404, 405, 422), (resp.request.url, resp.status_code, resp.text[:200])
    assert b"TOP SECRET" not in resp.content
    assert (api_env.outside / "secret.jpg").read_bytes()[:400] not in resp.content
    assert resp.headers["content-type"].startswith("application/json")


TRAVERSAL_URLS = [
    "/images/../outside/secret.txt",
    "/images/%2e%2e/1",
    "/images/..%2F..%2Foutside/1",
    "/images/..%2f..%2f..%2fetc%2fpasswd/1",
    f"/images/{INDEX}/..%2F..%2Foutside%2Fsecret.txt",
    f"/images/{INDEX}/..%2F..%2Foutside%2Fsecret.jpg/thumbnail",
    f"/images/{INDEX}/%2e%2e",
    f"/images/{INDEX}/-1",
    f"/images/{INDEX}/1.5",
    f"/images/{INDEX}/1%00",
    f"/images/{INDEX}/{2**64}",
    f"/images/{INDEX}/{row_id(INDEX, GOSLING)}/thumbnail?size=../../secret",
    f"/images/{INDEX}/{row_id(INDEX, GOSLING)}/thumbnail?size=-32",
    f"/images/{INDEX}/{row_id(INDEX, GOSLING)}/thumbnail?size=0",
    f"/images/{INDEX}/{row_id(INDEX, GOSLING)}/thumbnail?size=32%00",
    f"/images/{INDEX}/{row_id(INDEX, GOSLING)}/thumbnail?size=1e9",
    "/images/%2Fetc/1",
    "/images/photos%00/1",
    "/indexes/..%2F..%2Foutside",
    "/indexes/../../outside/jobs/1",
    f"/indexes/{INDEX}/jobs/..%2F..%2Fsecret",
]


@pytest.mark.parametrize("url", TRAVERSAL_URLS)
def test_traversal_in_urls_reaches_no_file(client: TestClient, api_env: ApiEnv, url: str) -> None:
    _assert_no_leak(client.get(url), api_env)


@pytest.mark.parametrize("index", ["../outside", "..", "/etc", "photos/../../outside", "photos\x00", "ph*"])
def test_traversal_in_search_index_param(client: TestClient, api_env: ApiEnv, index: str) -> None:
    data = (api_env.dataset / GOSLING).read_bytes()
    resp = client.post("/search", params={"index": index}, files={"image": ("../../etc/passwd", data)})
    _assert_no_leak(resp, api_env)
    assert resp.json()["error"] in ("unknown_index", "validation_error")


@pytest.fixture(scope="module")
def evil_index(client: TestClient, store: Store, api_env: ApiEnv, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Rows a tampered or stale database could hold: paths that point outside the dataset root."""
    root = tmp_path_factory.mktemp("evilroot")
    (root / "link.jpg").symlink_to(api_env.outside / "secret.jpg")
    (root / "dirlink").symlink_to(api_env.outside, target_is_directory=True)
    (root / "ok.jpg").write_bytes((api_env.dataset / GOSLING).read_bytes())
    name = "evil"
    manifest = client.app.state.svc.embedders["efficientnet_lite0"].manifest() | {"dataset_root": str(root)}
    store.ensure_collection(name, "efficientnet_lite0", manifest)
    paths = [
        "../outside/secret.jpg",
        "../../" * 8 + "etc/passwd",
        str(api_env.outside / "secret.jpg"),  # absolute
        "link.jpg",
        "dirlink/secret.jpg",
        "dirlink/../../outside/secret.txt",
        "",
        ".",
        "ok.jpg",
    ]
    vec = np.ones(manifest["dim"], np.float32)
    store.upsert(
        name,
        "efficientnet_lite0",
        [
            {"id": row_id(name, p), "vector": vec, "rel_path": p, "content_hash": "../../../../../tmp/x" if i else ""}
            for i, p in enumerate(paths)
        ],
    )
    return name


@pytest.mark.parametrize(
    "rel_path",
    [
        "../outside/secret.jpg",
        "../../" * 8 + "etc/passwd",
        "ABSOLUTE",
        "link.jpg",
        "dirlink/secret.jpg",
        "dirlink/../../outside/secret.txt",
        "",
        ".",
    ],
)
def test_rows_pointing_outside_the_root_are_refused(
    client: TestClient, api_env: ApiEnv, evil_index: str, rel_path: str
) -> None:
    if rel_path == "ABSOLUTE":
        rel_path = str(api_env.outside / "secret.jpg")
    rid = row_id(evil_index, rel_path)
    for url in (f"/images/{evil_index}/{rid}", f"/images/{evil_index}/{rid}/thumbnail"):
        resp = client.get(url)
        _assert_no_leak(resp, api_env)
        assert resp.json()["error"] == "image_unavailable"


def test_hostile_content_hash_cannot_place_a_thumbnail_outside_the_cache(
    client: TestClient, api_env: ApiEnv, evil_index: str
) -> None:
    resp = client.get(f"/images/{evil_index}/{row_id(evil_index, 'ok.jpg')}/thumbnail")
    assert resp.status_code == 200
    thumbs = (api_env.settings.data_dir / "thumbnails").resolve()
    assert not Path("/tmp/x.jpg").exists()
    for path in thumbs.rglob("*"):
        assert path.resolve().is_relative_to(thumbs)
