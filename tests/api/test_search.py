"""POST /search against the real index: results equal in-process embedding + exact NumPy search."""

from __future__ import annotations

import base64
import itertools

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from embedsvc.images import decode_image
from embedsvc.store import Store, row_id
from tests.api.conftest import INDEX, LABELS, MODELS, ApiEnv, exact_search


def _query_bytes(env: ApiEnv, rel_path: str = "bird/erase_gosling.jpg") -> bytes:
    return (env.dataset / rel_path).read_bytes()


def _reference(env: ApiEnv, store: Store, model_key: str, data: bytes, k: int) -> tuple[list[int], np.ndarray]:
    """Embed in this process the way a client would expect, then brute-force over the stored vectors."""
    emb = env.embedders[model_key]
    image = decode_image(data).image
    with torch.inference_mode():
        query = emb.embed(emb.preprocess(image).unsqueeze(0))[0]
    ids, vectors, _ = store.fetch_all(INDEX, model_key)
    order, dist = exact_search(vectors, query, k)
    return [int(ids[i]) for i in order], dist


def _check_against_reference(env: ApiEnv, store: Store, body: dict, data: bytes, k: int) -> None:
    assert [m["model_key"] for m in body["models"]] == MODELS
    for result in body["models"]:
        want_ids, want_dist = _reference(env, store, result["model_key"], data, k)
        got_ids = [n["id"] for n in result["neighbours"]]
        got_dist = np.array([n["distance"] for n in result["neighbours"]])
        assert got_ids == want_ids, result["model_key"]
        np.testing.assert_allclose(got_dist, want_dist, rtol=1e-4, atol=1e-5)
        assert [n["rank"] for n in result["neighbours"]] == list(range(1, k + 1))


def test_upload_equals_inprocess_exact_search(client: TestClient, api_env: ApiEnv, store: Store) -> None:
    data = _query_bytes(api_env)
    resp = client.post("/search", params={"index": INDEX, "k": 5}, files={"image": ("q.jpg", data, "image/jpeg")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    _check_against_reference(api_env, store, body, data, 5)
    assert body["query"]["kind"] == "upload"
    assert (body["query"]["width"], body["query"]["height"]) == decode_image(data).image.size
    # The query file itself is indexed: every model finds it first, at distance ~0.
    gosling = row_id(INDEX, "bird/erase_gosling.jpg")
    for result in body["models"]:
        first = result["neighbours"][0]
        assert first["id"] == gosling and first["distance"] < 1e-4
        assert first["rel_path"] == "bird/erase_gosling.jpg" and first["label_name"] == "bird"
        assert first["image_url"] == f"/images/{INDEX}/{gosling}"
        assert first["thumbnail_url"] == f"/images/{INDEX}/{gosling}/thumbnail?size=32"
        assert first["same_label_as_query"] is None  # an upload's label is unknown


def test_base64_json_gives_the_upload_result(client: TestClient, api_env: ApiEnv) -> None:
    data = _query_bytes(api_env, "fish/categorization_fish1.jpg")
    upload = client.post("/search", params={"index": INDEX, "k": 4}, files={"image": ("q.jpg", data)}).json()
    for text in (base64.b64encode(data).decode(), "data:image/jpeg;base64," + base64.b64encode(data).decode()):
        resp = client.post("/search", params={"index": INDEX, "k": 4}, json={"image_base64": text})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["query"]["kind"] == "base64"
        for a, b in zip(upload["models"], body["models"], strict=True):
            assert [n["id"] for n in a["neighbours"]] == [n["id"] for n in b["neighbours"]]


def test_more_like_this_uses_stored_vectors_and_excludes_itself(
    client: TestClient, api_env: ApiEnv, store: Store
) -> None:
    rel = "windmill/" + next(p.split("/")[1] for p in api_env.rel_paths if p.startswith("windmill/"))
    qid = row_id(INDEX, rel)
    resp = client.post("/search", params={"index": INDEX, "k": 6}, json={"id": qid})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["query"] | {"thumbnail_url": None} == {
        "kind": "id",
        "id": qid,
        "rel_path": rel,
        "label_name": "windmill",
        "label_id": LABELS.index("windmill"),
        "width": body["query"]["width"],
        "height": body["query"]["height"],
        "format": None,
        "bytes": None,
        "image_url": f"/images/{INDEX}/{qid}",
        "thumbnail_url": None,
    }
    for result in body["models"]:
        ids, vectors, _ = store.fetch_all(INDEX, result["model_key"])
        own = vectors[list(ids).index(qid)]
        order, dist = exact_search(vectors, own, len(ids))
        want = [(int(ids[i]), d) for i, d in zip(order, dist, strict=True) if ids[i] != qid][:6]
        assert [n["id"] for n in result["neighbours"]] == [i for i, _ in want]
        np.testing.assert_allclose([n["distance"] for n in result["neighbours"]], [d for _, d in want], atol=1e-5)
        assert qid not in [n["id"] for n in result["neighbours"]]
        for n in result["neighbours"]:
            assert n["same_label_as_query"] is (n["label_name"] == "windmill")
        assert result["timings"]["forward_ms"] == 0.0  # no re-embedding


def test_models_subset_repeatable_and_comma(client: TestClient, api_env: ApiEnv) -> None:
    data = _query_bytes(api_env)
    for params in (
        [("index", INDEX), ("models", "convnext_tiny,efficientnet_lite0")],
        [("index", INDEX), ("models", "convnext_tiny"), ("models", "efficientnet_lite0")],
    ):
        body = client.post("/search", params=params, files={"image": ("q.jpg", data)}).json()
        assert [m["model_key"] for m in body["models"]] == ["convnext_tiny", "efficientnet_lite0"]
        assert len(body["overlap"]) == 1


def test_label_filter_by_name_and_id(client: TestClient, api_env: ApiEnv) -> None:
    data = _query_bytes(api_env)
    for label in ("fish", str(LABELS.index("fish"))):
        body = client.post(
            "/search", params={"index": INDEX, "k": 10, "label": label}, files={"image": ("q.jpg", data)}
        ).json()
        assert body["label_filter"] == LABELS.index("fish")
        for result in body["models"]:
            assert len(result["neighbours"]) == 4  # only four fish are indexed
            assert {n["label_name"] for n in result["neighbours"]} == {"fish"}


def test_overlap_provenance_timings(client: TestClient, api_env: ApiEnv) -> None:
    body = client.post(
        "/search", params={"index": INDEX, "k": 5}, files={"image": ("q.jpg", _query_bytes(api_env))}
    ).json()
    sets = {m["model_key"]: {n["id"] for n in m["neighbours"]} for m in body["models"]}
    pairs = {(p["a"], p["b"]): p for p in body["overlap"]}
    assert set(pairs) == set(itertools.combinations(MODELS, 2))
    for (a, b), pair in pairs.items():
        assert pair["shared"] == len(sets[a] & sets[b])
        assert pair["jaccard"] == pytest.approx(len(sets[a] & sets[b]) / len(sets[a] | sets[b]))
    by_key = {m["model_key"]: m for m in body["models"]}
    lite = by_key["efficientnet_lite0"]
    assert lite["untrained"] is False and lite["provenance"]["trained"] is True
    assert lite["provenance"]["label"].startswith("package:")
    for key in ("deit3_small", "convnext_tiny"):
        assert by_key[key]["untrained"] is True
        assert by_key[key]["provenance"]["label"].startswith("untrained")
    for m in body["models"]:
        t = m["timings"]
        assert t["decode_ms"] == body["decode_ms"] > 0  # decoded once, shared by all models
        assert t["forward_ms"] > 0 and t["preprocess_ms"] > 0 and t["search_ms"] > 0
        assert t["total_ms"] == pytest.approx(
            t["decode_ms"] + t["preprocess_ms"] + t["forward_ms"] + t["search_ms"], abs=0.01
        )


def test_k_larger_than_the_index_returns_every_row(client: TestClient, api_env: ApiEnv) -> None:
    body = client.post(
        "/search", params={"index": INDEX, "k": 20}, files={"image": ("q.jpg", _query_bytes(api_env))}
    ).json()
    for result in body["models"]:
        assert len(result["neighbours"]) == len(api_env.rel_paths)


def test_same_label_marks_on_real_weights(client: TestClient, api_env: ApiEnv) -> None:
    """With real weights the nearest other photo of a bird is mostly a bird (sanity, not a benchmark)."""
    agree = 0
    for rel in api_env.rel_paths:
        body = client.post(
            "/search",
            params={"index": INDEX, "k": 1, "models": "efficientnet_lite0"},
            json={"id": row_id(INDEX, rel)},
        ).json()
        agree += body["models"][0]["neighbours"][0]["same_label_as_query"]
    assert agree >= len(api_env.rel_paths) * 2 // 3, agree


def test_concurrent_requests_give_the_sequential_answers(client: TestClient, api_env: ApiEnv) -> None:
    from concurrent.futures import ThreadPoolExecutor

    queries = [("upload", rel) for rel in api_env.rel_paths[:3]] + [("id", rel) for rel in api_env.rel_paths[3:6]]

    def run(query: tuple[str, str]) -> list[list[int]]:
        kind, rel = query
        if kind == "upload":
            resp = client.post(
                "/search", params={"index": INDEX, "k": 4}, files={"image": ("q.jpg", _query_bytes(api_env, rel))}
            )
        else:
            resp = client.post("/search", params={"index": INDEX, "k": 4}, json={"id": row_id(INDEX, rel)})
        assert resp.status_code == 200, resp.text
        return [[n["id"] for n in m["neighbours"]] for m in resp.json()["models"]]

    sequential = [run(q) for q in queries]
    with ThreadPoolExecutor(6) as pool:
        parallel = list(pool.map(run, queries * 2))
    assert parallel == sequential * 2


@pytest.fixture(scope="module")
def partial_index(client: TestClient, store: Store, api_env: ApiEnv) -> str:
    """An index with one model this service runs and one it does not (gresnet50 is not loaded)."""
    name = "partial"
    lite = client.app.state.svc.embedders["efficientnet_lite0"]
    rels = api_env.rel_paths[:4]
    rng = np.random.default_rng(3)
    for key, manifest in (
        ("efficientnet_lite0", lite.manifest()),
        ("gresnet50", {"model_name": "gresnet50.fl_in1k", "dim": 16, "normalize": True, "display_name": "GResNet-50"}),
    ):
        store.ensure_collection(name, key, manifest | {"dataset_root": str(api_env.dataset)})
        store.upsert(
            name,
            key,
            [
                {"id": row_id(name, r), "vector": rng.standard_normal(manifest["dim"]).astype(np.float32),
                 "rel_path": r, "content_hash": ""}
                for r in rels
            ],
        )  # fmt: skip
    return name


def test_index_models_the_service_does_not_run(client: TestClient, api_env: ApiEnv, partial_index: str) -> None:
    data = _query_bytes(api_env)
    body = client.post("/search", params={"index": partial_index, "k": 2}, files={"image": ("q.jpg", data)}).json()
    assert [m["model_key"] for m in body["models"]] == ["efficientnet_lite0"]
    assert body["skipped"] == [{"model_key": "gresnet50", "reason": "model not loaded by this service"}]
    explicit = client.post(
        "/search", params={"index": partial_index, "models": "gresnet50"}, files={"image": ("q.jpg", data)}
    )
    assert explicit.status_code == 404 and explicit.json()["error"] == "model_not_loaded"
    # By id, stored vectors suffice: both models answer.
    by_id = client.post(
        "/search", params={"index": partial_index, "k": 2}, json={"id": row_id(partial_index, api_env.rel_paths[0])}
    ).json()
    assert [m["model_key"] for m in by_id["models"]] == ["efficientnet_lite0", "gresnet50"]
    assert by_id["models"][1]["display_name"] == "GResNet-50" and by_id["models"][1]["dim"] == 16
    assert by_id["models"][1]["untrained"] is True  # no weights provenance recorded: never claimed trained
