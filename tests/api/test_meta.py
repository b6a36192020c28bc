"""GET /indexes, /models, /health, /ready, /metrics, the OpenAPI document and CORS."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.conftest import INDEX, LABELS, MODELS, ApiEnv


def test_indexes_list_and_detail(client: TestClient, api_env: ApiEnv) -> None:
    listing = client.get("/indexes").json()
    assert listing["count"] == len(listing["data"])
    photos = next(i for i in listing["data"] if i["name"] == INDEX)
    assert photos["row_count"] == len(api_env.rel_paths)
    assert sorted(m["model_key"] for m in photos["models"]) == sorted(MODELS)
    for model in photos["models"]:
        assert model["row_count"] == len(api_env.rel_paths)
        assert model["loaded"] is True and model["compatible"] is True
        manifest = model["manifest"]
        # Outside the allowed roots and the data dir: only the folder's name, never the server path.
        assert manifest["dataset_root"] == api_env.dataset.name
        assert str(api_env.dataset.parent) not in str(listing)
        assert manifest["label_names"] == LABELS
        assert manifest["dim"] == api_env.embedders[model["model_key"]].dim
    detail = client.get(f"/indexes/{INDEX}").json()
    assert detail["name"] == INDEX and detail["row_count"] == len(api_env.rel_paths)
    assert [m["model_key"] for m in detail["models"]] == sorted(MODELS)


def test_models(client: TestClient, api_env: ApiEnv) -> None:
    body = client.get("/models").json()
    assert [m["key"] for m in body["data"]] == MODELS and body["count"] == 3
    by_key = {m["key"]: m for m in body["data"]}
    assert by_key["efficientnet_lite0"]["untrained"] is False
    assert by_key["efficientnet_lite0"]["provenance"]["sha256"]
    assert by_key["deit3_small"]["untrained"] is True and by_key["deit3_small"]["provenance"]["seed"] == 0
    for m in body["data"]:
        assert m["dim"] == api_env.embedders[m["key"]].dim and m["device"] == "cpu"
        assert m["preprocessing"]["input_size"] == [3, 64, 64]


def test_health_and_ready(client: TestClient) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"ready": True, "models_loaded": MODELS, "milvus": "ok", "reason": None}


def test_metrics_count_requests_and_stage_latency(client: TestClient, api_env: ApiEnv) -> None:
    data = (api_env.dataset / "bird/erase_heron.jpg").read_bytes()
    assert client.post("/search", params={"index": INDEX, "k": 2}, files={"image": ("q.jpg", data)}).status_code == 200
    client.get("/indexes/does-not-exist")
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert 'embedsvc_http_requests_total{method="POST",route="/search",status="200"}' in text
    assert 'embedsvc_http_requests_total{method="GET",route="/indexes/{name}",status="404"}' in text
    for model in MODELS:
        for stage in ("preprocess", "queue", "forward", "search"):
            assert f'embedsvc_search_stage_duration_seconds_count{{model="{model}",stage="{stage}"}}' in text
    assert 'embedsvc_search_stage_duration_seconds_count{model="*",stage="decode"}' in text
    assert 'embedsvc_errors_total{code="unknown_index"}' in text
    assert "does-not-exist" not in text  # route templates, never raw paths, as label values


def test_cors_only_for_configured_origins(client: TestClient) -> None:
    allowed = client.get("/health", headers={"Origin": "http://ui.example"})
    assert allowed.headers.get("access-control-allow-origin") == "http://ui.example"
    other = client.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    preflight = client.options(
        "/search", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 400 and "access-control-allow-origin" not in preflight.headers


def test_openapi_documents_every_endpoint(client: TestClient, api_env: ApiEnv) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/search",
        "/images/{index}/{row_id}",
        "/images/{index}/{row_id}/thumbnail",
        "/indexes",
        "/indexes/{name}",
        "/indexes/{name}/jobs",
        "/indexes/{name}/jobs/{job_id}",
        "/indexes/{name}/eval",
        "/models",
        "/health",
        "/ready",
        "/metrics",
    ):
        assert path in paths, path
    search = paths["/search"]["post"]
    assert set(search["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    k = next(p for p in search["parameters"] if p["name"] == "k")
    assert (k["schema"]["minimum"], k["schema"]["maximum"]) == (1, api_env.settings.max_k)
    size = next(p for p in paths["/images/{index}/{row_id}/thumbnail"]["get"]["parameters"] if p["name"] == "size")
    assert size["schema"]["enum"] == api_env.settings.thumbnail_sizes
    assert search["responses"]["415"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
