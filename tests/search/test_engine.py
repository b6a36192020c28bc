"""SearchEngine called directly (no HTTP) on a real Milvus Lite index: results, timings, errors, row lookup."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from embedsvc.images import decode_image
from embedsvc.search import (
    BadQueryError,
    IncompatibleModelError,
    QueryNotFoundError,
    SearchResult,
    UnknownLabelError,
    UnknownModelError,
)
from embedsvc.store import IndexNotFoundError, row_id
from tests.search.conftest import INDEX, LABELS, MODELS, N_IMAGES, EngineEnv
from tests.support import png_bytes


def exact_top_k(env: EngineEnv, model: str, query: np.ndarray, k: int, exclude: int | None = None):
    """(ids, squared distances) of the k nearest stored rows, by NumPy."""
    ids, vectors, _ = env.store.fetch_all(INDEX, model)
    keep = ids != exclude
    ids, vectors = ids[keep], vectors[keep].astype(np.float64)
    d2 = ((vectors - query.astype(np.float64).reshape(1, -1)) ** 2).sum(1)
    order = np.argsort(d2, kind="stable")[:k]
    return ids[order].tolist(), d2[order]


def test_search_image_equals_exact_search_for_every_model(env: EngineEnv) -> None:
    data = png_bytes(seed=123)
    result = env.engine.search_image(INDEX, data, k=4)
    assert isinstance(result, SearchResult)
    assert [m.model_key for m in result.models] == MODELS and result.skipped == []
    q = result.query
    assert (q.kind, q.width, q.height, q.bytes) == ("upload", 48, 40, len(data))
    decoded = decode_image(data, name="q")
    for m in result.models:
        embedder = env.embedders[m.model_key]
        query = embedder.embed(embedder.preprocess(decoded.image).unsqueeze(0))[0]
        want_ids, want_d2 = exact_top_k(env, m.model_key, query, 4)
        assert [n.id for n in m.neighbours] == want_ids
        np.testing.assert_allclose([n.distance for n in m.neighbours], want_d2, rtol=1e-4, atol=1e-4)
        assert [n.rank for n in m.neighbours] == [1, 2, 3, 4]
        assert all(n.label_name in LABELS and n.same_label_as_query is None for n in m.neighbours)
        assert m.dim == embedder.dim and m.untrained == embedder.untrained
        assert m.provenance.sha256 == embedder.provenance.sha256
    pairs = {(p.a, p.b): p for p in result.overlap}
    a, b = (set(n.id for n in m.neighbours) for m in result.models)
    assert pairs[tuple(MODELS)].shared == len(a & b)
    assert pairs[tuple(MODELS)].jaccard == pytest.approx(len(a & b) / len(a | b))


def test_search_by_id_excludes_the_query_and_marks_same_labels(env: EngineEnv) -> None:
    rid = row_id(INDEX, "dogs/img_001.png")
    result = env.engine.search_by_id(INDEX, rid, k=N_IMAGES - 1)
    assert result.query.kind == "id" and result.query.rel_path == "dogs/img_001.png"
    assert result.query.label_name == "dogs" and result.query.label_id == LABELS.index("dogs")
    for m in result.models:
        [row] = env.store.get_rows(INDEX, m.model_key, [rid], with_vectors=True)
        want_ids, _ = exact_top_k(env, m.model_key, row["vector"], N_IMAGES - 1, exclude=rid)
        assert [n.id for n in m.neighbours] == want_ids and rid not in want_ids
        assert all(n.same_label_as_query == (n.label_name == "dogs") for n in m.neighbours)
        assert m.timings.forward_ms == 0.0 and m.timings.queue_ms == 0.0 and m.timings.search_ms > 0


def test_label_filter_by_name_or_id(env: EngineEnv) -> None:
    by_name = env.engine.search_image(INDEX, png_bytes(seed=5), k=10, label="cats", models=["deit3_small"])
    by_id = env.engine.search_image(INDEX, png_bytes(seed=5), k=10, label=str(LABELS.index("cats")))
    assert by_name.label_filter == by_id.label_filter == LABELS.index("cats")
    assert [m.model_key for m in by_name.models] == ["deit3_small"]
    assert {n.label_name for n in by_name.models[0].neighbours} == {"cats"}
    assert len(by_name.models[0].neighbours) == N_IMAGES // 2


def test_wait_for_the_gate_is_queue_not_forward(env: EngineEnv) -> None:
    """A search that waits for another forward reports the wait as ``queue``; ``forward`` stays compute."""
    embedder = env.embedders[MODELS[0]]
    lock = embedder.gate.lock_for(embedder)
    held = threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            time.sleep(0.6)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    env.stages.clear()
    result = env.engine.search_image(INDEX, png_bytes(seed=9), k=2, models=[MODELS[0]])
    holder.join()
    timings = result.models[0].timings
    assert timings.queue_ms >= 400, timings
    assert timings.forward_ms < timings.queue_ms, timings
    total = timings.decode_ms + timings.preprocess_ms + timings.queue_ms + timings.forward_ms + timings.search_ms
    assert timings.total_ms == pytest.approx(total, abs=0.01)
    observed = {stage: seconds for model, stage, seconds in env.stages if model == MODELS[0]}
    assert set(observed) == {"preprocess", "queue", "forward", "search"}
    assert observed["queue"] * 1000 == pytest.approx(timings.queue_ms, abs=0.01)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda e: e.search_image("no-such-index", png_bytes()), IndexNotFoundError, "no-such-index"),
        (lambda e: e.search_image(INDEX, png_bytes(), k=0), BadQueryError, "k must be"),
        (lambda e: e.search_image(INDEX, png_bytes(), k=21), BadQueryError, "k must be"),
        (lambda e: e.search_image(INDEX, png_bytes(), models=["resnet9000"]), UnknownModelError, "resnet9000"),
        (lambda e: e.search_image(INDEX, png_bytes(), label="horses"), UnknownLabelError, "horses"),
        (lambda e: e.search_by_id(INDEX, 12345), QueryNotFoundError, "12345"),
        (lambda e: e.find_row(INDEX, 12345), QueryNotFoundError, "12345"),
    ],
    ids=["unknown-index", "k-zero", "k-over-max", "unknown-model", "unknown-label", "unknown-id", "find-unknown-id"],
)
def test_errors(env: EngineEnv, call, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call(env.engine)


def _copy_index(env: EngineEnv, name: str, weights: dict | None = None, drop_first_rows: int = 0) -> None:
    """Index ``name``: the rows of the fixture index, with other manifest weights for the first model (in
    the index's model order) and that model missing its first ``drop_first_rows`` rows (added later, say)."""
    first = env.store.models_of(INDEX)[0]
    for key in MODELS:
        manifest = env.store.get_manifest(INDEX, key)
        for field in ("index", "model_key", "collection", "created_at", "updated_at"):
            manifest.pop(field)
        if key == first and weights is not None:
            manifest["weights"] = weights
        env.store.ensure_collection(name, key, manifest)
        ids = sorted(env.store.existing_rows(INDEX, key))
        rows = env.store.get_rows(INDEX, key, ids[drop_first_rows if key == first else 0 :], with_vectors=True)
        env.store.upsert(name, key, rows)


def test_search_uses_the_one_compatibility_rule(env: EngineEnv) -> None:
    first = env.embedders[env.store.models_of(INDEX)[0]]
    same_file_elsewhere = {**first.provenance.to_dict(), "source": "file:/somewhere/else.pth", "label": "moved"}
    _copy_index(env, "moved-weights", weights=same_file_elsewhere)
    result = env.engine.search_image("moved-weights", png_bytes(seed=1), k=2)  # same sha256: comparable
    assert [m.model_key for m in result.models] == MODELS
    other_seed = {"source": "random", "sha256": None, "trained": False, "seed": 7}
    _copy_index(env, "other-seed", weights=other_seed)
    with pytest.raises(IncompatibleModelError, match="weights"):
        env.engine.search_image("other-seed", png_bytes(seed=1), k=2)
    env.engine.search_by_id("other-seed", row_id(INDEX, "cats/img_000.png"), k=2)  # stored vectors still work


def test_a_listed_id_always_resolves_to_its_row(env: EngineEnv) -> None:
    """The listing reads the model with the most rows; an id it lists resolves even when the first
    model's collection lacks it (issue #10: it used to 404)."""
    _copy_index(env, "partial", drop_first_rows=3)
    listing = env.engine.list_images("partial", limit=50)
    first, fullest = env.store.models_of(INDEX)
    assert listing.model_key == fullest and listing.total == N_IMAGES
    missing_in_first = set(env.store.existing_rows("partial", fullest)) - set(env.store.existing_rows("partial", first))
    assert len(missing_in_first) == 3
    for row in listing.rows:
        found, manifest = env.engine.find_row("partial", row["id"])
        assert found["id"] == row["id"] and found["rel_path"] == row["rel_path"]
        assert Path(manifest["dataset_root"]) == env.dataset.resolve()


def test_forward_gate_owns_the_turns(env: EngineEnv) -> None:
    """On CPU every model waits for the same turn (searches and jobs alike); on a GPU each model has its own."""
    a, b = (env.embedders[key] for key in MODELS)
    assert a.gate is b.gate and a.gate.lock_for(a) is a.gate.lock_for(b)
    on_gpu = [dataclasses.replace(e, device=torch.device("cuda")) for e in (a, b)]  # never run: only their turns
    assert on_gpu[0].gate.lock_for(on_gpu[0]) is not on_gpu[1].gate.lock_for(on_gpu[1])
    assert on_gpu[0].gate.lock_for(on_gpu[0]) is on_gpu[0].gate.lock_for(on_gpu[0])
    assert on_gpu[0].gate.lock_for(on_gpu[0]) is not a.gate.lock_for(a)
