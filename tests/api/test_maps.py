"""GET /indexes/{name}/maps on the package's real index (Milvus Lite, twelve photos, three models at 64 px):
one map per model over the same sampled images, the same coordinates as the library computes, cached per
index version, and one clear error for an unknown index, bad parameters and an index too small to map."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from embedsvc import maps
from embedsvc.client import EmbedsvcClient
from embedsvc.store import Store, row_id
from tests.api.conftest import INDEX, LABELS, MODELS, ApiEnv


def test_one_map_per_model_over_the_same_sample(client: TestClient, api_env: ApiEnv, store: Store) -> None:
    resp = client.get(f"/indexes/{INDEX}/maps", params={"sample": 8, "seed": 3, "method": "pca"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["n_points"] == len(body["points"]) == 8 and body["total_rows"] == len(api_env.rel_paths)
    assert sorted(m["model"] for m in body["models"]) == sorted(MODELS)
    stored = {row_id(INDEX, rel): rel for rel in api_env.rel_paths}
    ids = [p["id"] for p in body["points"]]
    assert len(set(ids)) == 8 and set(ids) <= set(stored)
    for point in body["points"]:
        assert point["rel_path"] == stored[point["id"]] and point["label"] == api_env.labels[point["rel_path"]]
        assert point["label"] in LABELS and point["label_id"] >= 0
    want = maps.compute_maps(store, INDEX, sample=8, seed=3, method="pca")
    assert [r["id"] for r in want.rows] == ids
    for got, ref in zip(body["models"], want.models, strict=True):
        assert got["method"] == "pca" and len(got["x"]) == len(got["y"]) == 8
        np.testing.assert_allclose(got["x"], ref.x, atol=1e-4)
        np.testing.assert_allclose(got["y"], ref.y, atol=1e-4)
    assert body["cached"] is False


def test_cached_per_version_and_through_the_client(client: TestClient) -> None:
    api = EmbedsvcClient(http=client, token="")
    first = api.maps(INDEX, sample=12, seed=0, method="umap")
    runs = client.app.state.map_cache.computations
    second = api.maps(INDEX, sample=12, seed=0, method="umap")
    assert second.cached and client.app.state.map_cache.computations == runs
    assert [m.x for m in second.models] == [m.x for m in first.models]
    assert {m.method for m in first.models} == {"umap"} and first.n_points == 12
    assert first.model_map(MODELS[0]).model == MODELS[0]


def test_unknown_index_bad_parameters_and_too_small_index(client: TestClient, store: Store) -> None:
    missing = client.get("/indexes/nope/maps")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_index"
    for params in ({"sample": 2}, {"sample": maps.MAX_SAMPLE + 1}, {"method": "tsne"}, {"seed": -1}):
        bad = client.get(f"/indexes/{INDEX}/maps", params=params)
        assert bad.status_code == 422 and bad.json()["error"] == "validation_error", (params, bad.text)
    rows = [
        {
            "id": row_id("tiny", f"a/{i}.png"),
            "vector": np.full(4, i + 1, np.float32),
            "rel_path": f"a/{i}.png",
            "content_hash": str(i),
            "label_id": 0,
            "label_name": "a",
            "width": 1,
            "height": 1,
        }
        for i in range(2)
    ]
    store.ensure_collection("tiny", "m", {"model_name": "m.v1", "weights": {}, "dim": 4, "normalize": True})
    store.upsert("tiny", "m", rows)
    small = client.get("/indexes/tiny/maps")
    assert small.status_code == 409 and small.json()["error"] == "too_few_points"
    assert "'tiny' has 2 row(s)" in small.json()["detail"] and "at least 3" in small.json()["detail"]
    assert "/tmp" not in small.text
    store.drop_index("tiny")
