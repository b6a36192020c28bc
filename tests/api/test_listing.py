"""GET /indexes/{name}/images (paged, in id order) and .../images/random (seeded draws), and max_k."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

import embedsvc.store.paging
from embedsvc.store import Store, row_id
from tests.api.conftest import INDEX, LABELS, MODELS, ApiEnv


def all_ids(api_env: ApiEnv) -> list[int]:
    return sorted(row_id(INDEX, rel) for rel in api_env.rel_paths)


def page_through(client: TestClient, limit: int, **params: object) -> list[dict]:
    """Every row, page by page; each page checked against the totals it reports."""
    rows: list[dict] = []
    offset = 0
    while True:
        resp = client.get(f"/indexes/{INDEX}/images", params={"offset": offset, "limit": limit, **params})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (body["offset"], body["limit"], body["count"]) == (offset, limit, len(body["data"]))
        assert body["count"] == max(0, min(limit, body["total"] - offset))
        if not body["data"]:
            return rows
        rows += body["data"]
        offset += limit


@pytest.mark.parametrize("limit", [1, 5, 12, 500])
def test_pages_cover_every_row_once_in_id_order(client: TestClient, api_env: ApiEnv, store: Store, limit: int) -> None:
    rows = page_through(client, limit)
    ids = [r["id"] for r in rows]
    assert ids == all_ids(api_env)  # every row exactly once, ascending ids
    body = client.get(f"/indexes/{INDEX}/images", params={"limit": 1}).json()
    assert body["total"] == len(api_env.rel_paths) and body["label_filter"] is None
    assert body["model_key"] in MODELS
    # The API's rows are the store's rows (for the collection it read from).
    stored = {r["id"]: r for r in store.get_rows(INDEX, body["model_key"], ids)}
    for row in rows:
        want = stored[row["id"]]
        assert row["rel_path"] == want["rel_path"] and row["id"] == row_id(INDEX, row["rel_path"])
        assert (row["label_id"], row["label_name"]) == (want["label_id"], want["label_name"])
        assert (row["width"], row["height"]) == (want["width"], want["height"]) and row["width"] > 0
        assert row["label_name"] == api_env.labels[row["rel_path"]]
        assert row["image_url"] == f"/images/{INDEX}/{row['id']}"
        assert row["thumbnail_url"] == f"/images/{INDEX}/{row['id']}/thumbnail?size=32"
    assert client.get(rows[0]["thumbnail_url"]).headers["content-type"] == "image/jpeg"


def test_store_lists_every_model_the_same(store: Store, api_env: ApiEnv) -> None:
    for model in MODELS:
        rows, total = store.list_rows(INDEX, model, offset=0, limit=100)
        assert total == len(api_env.rel_paths) and [r["id"] for r in rows] == all_ids(api_env)
        middle, _ = store.list_rows(INDEX, model, offset=4, limit=3)
        assert [r["id"] for r in middle] == all_ids(api_env)[4:7]


def test_offsets_past_the_query_window_seek_by_id(
    client: TestClient, api_env: ApiEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Milvus refuses offset + limit > 16384; the store seeks past it. A window of 5 rows exercises
    that path on twelve rows: the pages must be the same as in one window."""
    direct = page_through(client, 3)
    seeded = client.get(f"/indexes/{INDEX}/images/random", params={"count": 7, "seed": 11}).json()
    monkeypatch.setattr(embedsvc.store.paging, "_QUERY_WINDOW", 5)
    assert page_through(client, 3) == direct
    assert page_through(client, 5) == direct
    fish = page_through(client, 2, label="fish")
    assert [r["rel_path"] for r in fish] == sorted(
        (r for r in api_env.rel_paths if r.startswith("fish/")), key=lambda r: row_id(INDEX, r)
    )
    # The same seed draws the same rows whichever way the ids are read.
    assert client.get(f"/indexes/{INDEX}/images/random", params={"count": 7, "seed": 11}).json() == seeded


@pytest.mark.parametrize("label", ["fish", "1"])
def test_label_filter_by_name_or_id(client: TestClient, api_env: ApiEnv, label: str) -> None:
    body = client.get(f"/indexes/{INDEX}/images", params={"label": label, "limit": 500}).json()
    fish = sorted(row_id(INDEX, r) for r, lab in api_env.labels.items() if lab == "fish")
    assert body["label_filter"] == LABELS.index("fish")
    assert body["total"] == len(fish) and [r["id"] for r in body["data"]] == fish
    assert {r["label_name"] for r in body["data"]} == {"fish"}
    drawn = client.get(f"/indexes/{INDEX}/images/random", params={"label": label, "count": 3}).json()
    assert drawn["total"] == len(fish) and drawn["count"] == 3
    assert {r["id"] for r in drawn["data"]} <= set(fish)


def test_label_filter_with_no_rows(client: TestClient) -> None:
    body = client.get(f"/indexes/{INDEX}/images", params={"label": "7"}).json()
    assert body["total"] == 0 and body["data"] == [] and body["label_filter"] == 7
    drawn = client.get(f"/indexes/{INDEX}/images/random", params={"label": "7", "count": 5}).json()
    assert drawn["total"] == 0 and drawn["data"] == []


def test_random_is_reproducible_with_a_seed(client: TestClient, api_env: ApiEnv) -> None:
    url = f"/indexes/{INDEX}/images/random"
    first = client.get(url, params={"count": 5, "seed": 42}).json()
    again = client.get(url, params={"count": 5, "seed": 42}).json()
    assert first == again and first["seed"] == 42 and first["total"] == len(api_env.rel_paths)
    ids = [r["id"] for r in first["data"]]
    assert len(ids) == len(set(ids)) == first["count"] == 5 and set(ids) <= set(all_ids(api_env))
    others = {tuple(r["id"] for r in client.get(url, params={"count": 5, "seed": s}).json()["data"]) for s in range(8)}
    assert len(others) > 1  # seeds matter
    everything = client.get(url, params={"count": 100, "seed": 1}).json()
    assert sorted(r["id"] for r in everything["data"]) == all_ids(api_env)  # capped at the index, no repeats
    unseeded = client.get(url).json()
    assert unseeded["seed"] is None and unseeded["count"] == 1 and unseeded["data"][0]["id"] in all_ids(api_env)
    row = unseeded["data"][0]
    assert row["label_name"] == api_env.labels[row["rel_path"]]


def test_listing_reads_the_model_with_the_most_rows(client: TestClient, store: Store, api_env: ApiEnv) -> None:
    """An index whose models hold different rows (one was indexed later, or partly) lists them all."""
    index = "listing-partial"
    rng = np.random.default_rng(0)
    counts = {"efficientnet_lite0": 2, "deit3_small": 5}
    try:
        for key, n in counts.items():
            emb = api_env.embedders[key]
            manifest = emb.manifest() | {"dataset_root": str(api_env.dataset), "label_names": LABELS}
            store.ensure_collection(index, key, manifest)
            rows = [
                {
                    "id": row_id(index, rel),
                    "vector": rng.standard_normal(emb.dim).astype(np.float32),
                    "rel_path": rel,
                    "content_hash": "x",
                    "label_id": LABELS.index(api_env.labels[rel]),
                    "label_name": api_env.labels[rel],
                    "width": 1,
                    "height": 1,
                }
                for rel in api_env.rel_paths[:n]
            ]
            store.upsert(index, key, rows)
        body = client.get(f"/indexes/{index}/images").json()
        assert body["model_key"] == "deit3_small" and body["total"] == 5
        assert [r["id"] for r in body["data"]] == sorted(row_id(index, r) for r in api_env.rel_paths[:5])
    finally:
        store.drop_index(index)


@pytest.mark.parametrize("suffix", ["images", "images/random"])
def test_unknown_index_is_404(client: TestClient, suffix: str) -> None:
    resp = client.get(f"/indexes/no-such-index/{suffix}")
    assert resp.status_code == 404
    assert resp.json()["error"] == "unknown_index" and resp.json()["detail"]


@pytest.mark.parametrize("suffix", ["images", "images/random"])
def test_unknown_label_is_404(client: TestClient, suffix: str) -> None:
    resp = client.get(f"/indexes/{INDEX}/{suffix}", params={"label": "zebra"})
    assert resp.status_code == 404 and resp.json()["error"] == "unknown_label"
    assert "zebra" in resp.json()["detail"]


@pytest.mark.parametrize(
    ("suffix", "params", "field"),
    [
        ("images", {"limit": 0}, "limit"),
        ("images", {"limit": 501}, "limit"),
        ("images", {"offset": -1}, "offset"),
        ("images", {"offset": "x"}, "offset"),
        ("images", {"label": "x" * 513}, "label"),
        ("images/random", {"count": 0}, "count"),
        ("images/random", {"count": 101}, "count"),
        ("images/random", {"seed": -1}, "seed"),
        ("images/random", {"seed": "abc"}, "seed"),
    ],
)
def test_bad_parameters_are_422(client: TestClient, suffix: str, params: dict, field: str) -> None:
    resp = client.get(f"/indexes/{INDEX}/{suffix}", params=params)
    assert resp.status_code == 422
    body = resp.json()
    assert body["error"] == "validation_error" and field in body["detail"]
    assert [e["loc"] for e in body["errors"]] == [["query", field]]


def test_max_k_is_published(client: TestClient, api_env: ApiEnv) -> None:
    assert client.get("/indexes").json()["max_k"] == api_env.settings.max_k
