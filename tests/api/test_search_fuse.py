"""POST /search?fuse=rrf against the real index: the fused entry equals an RRF computed here from the
per-model rankings of the same query, read as deep as the service reads them (max_k: the index is smaller)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from embedsvc.client import EmbedsvcClient
from embedsvc.store import row_id
from tests.api.conftest import INDEX, LIMITS, MODELS, ApiEnv

DEEP = LIMITS["max_k"]  # the service reads min(100, max_k) = 20 per model, more than the 12 rows indexed


def _rrf(rankings: list[list[int]], k: int) -> list[tuple[int, float]]:
    """Reference RRF, written out: score(x) = sum over lists of 1 / (60 + rank), ties by id."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (60 + rank)
    return sorted(scores.items(), key=lambda item: (-round(item[1], 12), item[0]))[:k]


def _check_fused(fused: dict[str, Any], deep: dict[str, Any], k: int) -> None:
    want = _rrf([[n["id"] for n in m["neighbours"]] for m in deep["models"]], k)
    assert [n["id"] for n in fused["neighbours"]] == [doc for doc, _ in want]
    assert [n["score"] for n in fused["neighbours"]] == [round(s, 12) for _, s in want]
    assert [n["rank"] for n in fused["neighbours"]] == list(range(1, k + 1))
    assert all(n["distance"] == 0.0 for n in fused["neighbours"])


def test_upload_fused_entry_is_rrf_of_the_models_rankings(client: TestClient, api_env: ApiEnv) -> None:
    data = (api_env.dataset / "bird/erase_gosling.jpg").read_bytes()
    params = {"index": INDEX, "k": 5}
    plain = client.post("/search", params=params, files={"image": ("q.jpg", data)}).json()
    deep = client.post("/search", params={**params, "k": DEEP}, files={"image": ("q.jpg", data)}).json()
    resp = client.post("/search", params={**params, "fuse": "rrf"}, files={"image": ("q.jpg", data)})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [m["model_key"] for m in body["models"]] == [*MODELS, "fused_rrf"]
    *per_model, fused = body["models"]
    # The per-model entries are what a search without fuse returns (k each, read deeper only for fusion).
    for got, want in zip(per_model, plain["models"], strict=True):
        assert got["neighbours"] == want["neighbours"]
    assert body["overlap"] == plain["overlap"]  # the fused entry is never in the overlap
    assert {p["a"] for p in body["overlap"]} | {p["b"] for p in body["overlap"]} == set(MODELS)
    _check_fused(fused, deep, 5)
    assert fused["display_name"] == "Fused (RRF, k=60)" and fused["provenance"]["source"] == ", ".join(MODELS)
    assert fused["neighbours"][0]["id"] == row_id(INDEX, "bird/erase_gosling.jpg")  # first for every model
    assert all(n["same_label_as_query"] is None for n in fused["neighbours"])  # an upload's label is unknown
    assert fused["neighbours"][0]["thumbnail_url"].startswith(f"/images/{INDEX}/")
    # Without fuse nothing changes shape: no fused entry, no score field.
    assert all("score" not in n for m in plain["models"] for n in m["neighbours"])


def test_by_id_fused_sets_same_label_and_excludes_the_query(client: TestClient, api_env: ApiEnv) -> None:
    rel = next(p for p in api_env.rel_paths if p.startswith("fish/"))
    qid = row_id(INDEX, rel)
    deep = client.post("/search", params={"index": INDEX, "k": DEEP}, json={"id": qid}).json()
    by_query = client.post("/search", params={"index": INDEX, "k": 6, "fuse": "rrf"}, json={"id": qid})
    by_body = client.post("/search", params={"index": INDEX, "k": 6}, json={"id": qid, "fuse": "rrf"})
    assert by_query.status_code == 200 and by_body.status_code == 200, (by_query.text, by_body.text)
    for body in (by_query.json(), by_body.json()):
        fused = body["models"][-1]
        assert fused["model_key"] == "fused_rrf"
        _check_fused(fused, deep, 6)
        assert qid not in [n["id"] for n in fused["neighbours"]]
        assert [n["same_label_as_query"] for n in fused["neighbours"]] == [
            n["label_name"] == "fish" for n in fused["neighbours"]
        ]
    assert [n["id"] for n in by_query.json()["models"][-1]["neighbours"]] == [
        n["id"] for n in by_body.json()["models"][-1]["neighbours"]
    ]


def test_bad_fuse_is_422_with_its_code(client: TestClient, api_env: ApiEnv) -> None:
    data = (api_env.dataset / "bird/erase_gosling.jpg").read_bytes()
    qid = row_id(INDEX, api_env.rel_paths[0])
    answers = [
        client.post("/search", params={"index": INDEX, "fuse": "borda"}, files={"image": ("q.jpg", data)}),
        client.post("/search", params={"index": INDEX, "fuse": ""}, json={"id": qid}),
        client.post("/search", params={"index": INDEX}, json={"id": qid, "fuse": "RRF"}),
        client.post("/search", params={"index": INDEX, "fuse": "rrf"}, json={"id": qid, "fuse": "borda"}),
    ]
    for resp in answers:
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"] == "unknown_fusion", resp.text


def test_client_search_with_fuse(client: TestClient, api_env: ApiEnv) -> None:
    api = EmbedsvcClient(http=client)
    data = (api_env.dataset / "bird/erase_heron.jpg").read_bytes()
    typed = api.search_upload(data, index=INDEX, k=3, fuse="rrf")
    raw = client.post("/search", params={"index": INDEX, "k": 3, "fuse": "rrf"}, files={"image": ("q.jpg", data)})
    fused = typed.models[-1]
    assert fused.model_key == "fused_rrf"
    assert [(n.id, n.score) for n in fused.neighbours] == [
        (n["id"], n["score"]) for n in raw.json()["models"][-1]["neighbours"]
    ]
    by_id = api.search_by_id(fused.neighbours[0].id, index=INDEX, k=3, fuse="rrf")
    assert by_id.models[-1].model_key == "fused_rrf" and len(by_id.models[-1].neighbours) == 3
    assert all(n.score is None for m in api.search_upload(data, index=INDEX, k=3).models for n in m.neighbours)
