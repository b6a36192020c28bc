"""Store: search against exact NumPy search, filters, dimensions, and settings (embedsvc.store.milvus)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedsvc.store import DimensionMismatchError, Store
from tests.store.conftest import DIM, N, assert_hits_equal, numpy_topk


def test_search_equals_numpy_exact_search(store: Store, shared_filled: tuple[str, list[dict]]) -> None:
    index, rows = shared_filled
    assert store.count(index, "m") == N
    queries = np.random.default_rng(1).standard_normal((64, DIM)).astype(np.float32)
    hits = store.search(index, "m", queries, k=10)  # a batch of 64 in one call
    assert_hits_equal(hits, *numpy_topk(rows, queries, 10))
    # A stored vector finds itself at distance 0, with its metadata.
    [[first, *_]] = store.search(index, "m", rows[7]["vector"], k=3)
    assert first.id == rows[7]["id"] and first.distance == pytest.approx(0.0, abs=1e-4)
    assert (first.rel_path, first.label_id, first.label_name) == (rows[7]["rel_path"], 3, "class_3")
    assert (first.width, first.height, first.content_hash) == (47, 37, "h7")


def test_wrong_dimension_gives_clear_errors(store: Store, shared_filled: tuple[str, list[dict]]) -> None:
    index, rows = shared_filled
    with pytest.raises(DimensionMismatchError, match="dimension 16, the index expects 32"):
        store.search(index, "m", np.zeros((2, 16), np.float32), k=5)
    with pytest.raises(DimensionMismatchError, match="dimension 31"):
        store.upsert(index, "m", [{**rows[0], "vector": rows[0]["vector"][:31]}])
    with pytest.raises(ValueError, match="NaN"):
        store.search(index, "m", np.full(DIM, np.nan, np.float32), k=5)


def test_label_filter_and_exclude_ids(store: Store, shared_filled: tuple[str, list[dict]]) -> None:
    index, rows = shared_filled
    queries = np.random.default_rng(2).standard_normal((3, DIM)).astype(np.float32)
    label_rows = [r for r in rows if r["label_id"] == 2]
    hits = store.search(index, "m", queries, k=5, label_id=2)
    assert all(h.label_id == 2 for q in hits for h in q)
    assert_hits_equal(hits, *numpy_topk(label_rows, queries, 5))

    top_ids, _ = numpy_topk(rows, queries[:1], 3)
    excluded = top_ids[0].tolist()
    hits = store.search(index, "m", queries[:1], k=5, exclude_ids=excluded)
    kept = [r for r in rows if r["id"] not in excluded]
    assert_hits_equal(hits, *numpy_topk(kept, queries[:1], 5))

    hits = store.search(index, "m", queries[:1], k=5, label_id=2, exclude_ids=excluded)
    assert_hits_equal(hits, *numpy_topk([r for r in label_rows if r["id"] not in excluded], queries[:1], 5))


def test_timeouts_come_from_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Store.from_settings and the service's default store take EMBEDSVC_MILVUS_(CONNECT_)TIMEOUT_S."""
    from pydantic import ValidationError

    from embedsvc.core.config import Settings
    from embedsvc.main import default_store_factory
    from tests.support import make_settings

    assert (
        Settings.model_fields["milvus_timeout_s"].default,
        Settings.model_fields["milvus_connect_timeout_s"].default,
    ) == (30, 5)
    monkeypatch.setenv("EMBEDSVC_MILVUS_TIMEOUT_S", "12.5")
    monkeypatch.setenv("EMBEDSVC_MILVUS_CONNECT_TIMEOUT_S", "0.5")
    assert (Settings().milvus_timeout_s, Settings().milvus_connect_timeout_s) == (12.5, 0.5)
    with pytest.raises(ValidationError):
        Settings(milvus_timeout_s=0)
    settings = make_settings(tmp_path, milvus_timeout_s=7.5, milvus_connect_timeout_s=2.5)
    with Store.from_settings(settings, owner="pytest timeouts") as store:
        assert (store.timeout, store.connect_timeout) == (8, 2.5)  # calls take whole seconds (pymilvus)
    with default_store_factory(settings)() as store:
        assert (store.timeout, store.connect_timeout, store.owner) == (8, 2.5, "embedsvc serve")
