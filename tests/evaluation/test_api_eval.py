"""GET /indexes/{name}/eval: same numbers as evaluate_index, cached per index version, 404 when unknown."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from embedsvc.api.deps import get_settings, get_store
from embedsvc.api.errors import install_error_handlers
from embedsvc.api.routes import evaluation as route
from embedsvc.evaluation.runner import evaluate_index
from embedsvc.search import StoreHolder
from embedsvc.store import Store
from tests.evaluation.test_index_eval import fill, synthetic_rows
from tests.support import make_settings


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    data = tmp_path_factory.mktemp("evalapi")
    store = Store(str(data / "milvus.db"))
    ids, labels, vectors = synthetic_rows(seed=1)
    fill(store, "photos", ids, labels, vectors)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(route.router)
    settings = make_settings(data)
    holder = StoreHolder(lambda: store)
    app.dependency_overrides[get_store] = lambda: holder
    app.dependency_overrides[get_settings] = lambda: settings
    with TestClient(app) as client:
        yield client, app, store, (ids, labels, vectors)
    store.close()


def test_same_numbers_as_the_function_and_cached(api) -> None:
    client, app, store, _ = api
    first = client.get("/indexes/photos/eval", params={"sample": 12, "seed": 4})
    assert first.status_code == 200, first.text
    body = first.json()
    want = evaluate_index(store, "photos", sample=12, seed=4)
    for key, entry in want.summary["models"].items():
        assert body["models"][key]["metrics"] == pytest.approx(entry["metrics"])
        assert body["models"][key]["hubness"]["skewness"] == pytest.approx(entry["hubness"]["skewness"])
    assert body["cross_model"]["agreement"]["only_right"] == want.summary["cross_model"]["agreement"]["only_right"]
    assert body["queries"]["n_queries"] == 12 and body["cached"] is False
    cache = app.state.eval_cache
    runs = cache.computations
    second = client.get("/indexes/photos/eval", params={"sample": 12, "seed": 4})
    assert second.json()["cached"] is True
    assert cache.computations == runs  # served without evaluating again
    assert second.json()["models"] == body["models"]
    other = client.get("/indexes/photos/eval", params={"sample": 12, "seed": 5})  # another sample: its own entry
    assert other.json()["cached"] is False and cache.computations == runs + 1


def test_cache_is_invalidated_when_the_index_changes(api) -> None:
    client, app, store, (ids, labels, vectors) = api
    fill(store, "growing", ids[:12], labels[:12], {k: v[:12] for k, v in vectors.items()})
    before = client.get("/indexes/growing/eval").json()
    assert client.get("/indexes/growing/eval").json()["cached"] is True
    runs = app.state.eval_cache.computations
    fill(store, "growing", ids[:20], labels[:20], {k: v[:20] for k, v in vectors.items()})
    after = client.get("/indexes/growing/eval").json()
    assert after["cached"] is False and app.state.eval_cache.computations == runs + 1
    assert (before["queries"]["n_rows"], after["queries"]["n_rows"]) == (12, 20)
    assert after["version"] != before["version"]


def test_unknown_index_is_404(api) -> None:
    client, *_ = api
    response = client.get("/indexes/nope/eval")
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_index"
    assert client.get("/indexes/photos/eval", params={"sample": 0}).status_code == 422


def test_cache_evicts_least_recently_used() -> None:
    cache = route.EvalCache(max_entries=2)
    version = (("m", 1, 1, "t"),)

    def result() -> dict:
        return {"version": [list(v) for v in version]}

    for seed in (1, 2, 1, 3):  # 1 is used again, so 2 is the one evicted when 3 arrives
        cache.get_or_compute(("i", None, seed), version, result)
    assert cache.computations == 3
    assert cache.get_or_compute(("i", None, 1), version, result)[1] is True
    assert cache.get_or_compute(("i", None, 2), version, result)[1] is False


def test_served_by_the_real_app(api) -> None:
    """The route is mounted in create_app's router list and shares the store the lifespan holds."""
    from embedsvc.main import create_app

    _, _, store, _ = api
    app = create_app(make_settings(Path(store.uri).parent), embedders={}, store_factory=lambda: Store(store.uri))
    with TestClient(app) as client:
        body = client.get("/indexes/photos/eval", params={"sample": 12, "seed": 4}).json()
        assert client.get("/indexes/nope/eval").status_code == 404
    want = evaluate_index(store, "photos", sample=12, seed=4)
    assert body["models"]["wide"]["metrics"] == pytest.approx(want.summary["models"]["wide"]["metrics"])
    assert "/indexes/{name}/eval" in app.openapi()["paths"]


def test_served_with_cis_pairs_and_the_fused_entry(api) -> None:
    client, *_ = api
    body = client.get("/indexes/photos/eval", params={"sample": 12, "seed": 4}).json()
    assert set(body["models"]) == {"wide", "narrow", "fused_rrf"}
    for entry in body["models"].values():
        assert set(entry["metrics_ci"]) == set(entry["metrics"])
    assert body["fusion"]["of"] == ["narrow", "wide"] and body["fusion"]["k"] == 60
    assert len(body["paired"]) == body["uncertainty"]["n_comparisons"] == 3 * len(body["models"]["wide"]["metrics"])
    for p in body["paired"]:
        assert p["verdict"] == ("no significant difference" if p["p_holm"] >= 0.05 else p["verdict"])
        assert p["test"] in ("mcnemar_exact", "permutation") and p["p_value"] <= p["p_holm"] <= 1
