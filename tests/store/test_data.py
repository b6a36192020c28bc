"""Row data: upsert, read back, delete, and the one batching policy (embedsvc.store.data, rows)."""

from __future__ import annotations

import numpy as np
import pytest

from embedsvc.indexer import writer
from embedsvc.store import Store
from embedsvc.store.rows import (
    MAX_BATCH_BYTES,
    MAX_BATCH_ROWS,
    MAXLEN,
    batches,
    clean_row,
    row_bytes,
    rows_per_request,
)
from tests.store.conftest import N, make_rows, manifest


def test_upsert_same_id_twice_keeps_one_row(store: Store, index: str) -> None:
    store.ensure_collection(index, "m", manifest())
    [row] = make_rows(index, n=1)
    store.upsert(index, "m", [row])
    newer = {**row, "vector": row["vector"] + 1.0, "content_hash": "new"}
    store.upsert(index, "m", [newer])
    assert store.count(index, "m") == 1
    [got] = store.get_rows(index, "m", [row["id"]], with_vectors=True)
    assert got["content_hash"] == "new"
    np.testing.assert_allclose(got["vector"], newer["vector"], rtol=1e-6)


def known(rows: list[dict]) -> dict[int, tuple[str, int, str]]:
    """What ``existing_rows`` should say of ``rows``."""
    return {r["id"]: (r["content_hash"], r["label_id"], r["label_name"]) for r in rows}


def test_existing_rows_delete_get_rows_fetch_all(store: Store, filled: tuple[str, list[dict]]) -> None:
    index, rows = filled
    assert store.existing_rows(index, "m") == known(rows)
    gone = [r["id"] for r in rows[:10]]
    store.delete(index, "m", gone)
    assert store.count(index, "m") == N - 10
    existing = store.existing_rows(index, "m")
    assert len(existing) == N - 10 and not set(gone) & set(existing)
    asked = [rows[20]["id"], gone[0], rows[11]["id"]]
    got = store.get_rows(index, "m", asked)
    assert [g["id"] for g in got] == [rows[20]["id"], rows[11]["id"]]  # order kept, deleted left out
    assert got[0]["rel_path"] == rows[20]["rel_path"] and "vector" not in got[0]

    ids, vecs, labels = store.fetch_all(index, "m")
    kept = sorted(rows[10:], key=lambda r: r["id"])
    assert ids.dtype == np.int64 and vecs.dtype == np.float32 and labels.dtype == np.int64
    assert ids.tolist() == [r["id"] for r in kept]
    np.testing.assert_array_equal(vecs, np.stack([r["vector"] for r in kept]))
    assert labels.tolist() == [r["label_id"] for r in kept]


def test_existing_rows_pages_through_more_than_one_batch(store: Store, index: str) -> None:
    store.ensure_collection(index, "m", manifest(dim=4))
    rows = make_rows(index, n=2300, dim=4, seed=5)
    store.upsert(index, "m", rows)
    assert store.existing_rows(index, "m") == known(rows)
    ids, vecs, _ = store.fetch_all(index, "m")
    assert len(ids) == 2300 and len(set(ids.tolist())) == 2300 and vecs.shape == (2300, 4)


@pytest.mark.parametrize("dim", [4, 384, 768, 2048, 4096, 32768])
def test_one_batching_policy_for_the_store_and_the_writer(dim: int) -> None:
    """``batches`` (the store's upserts) and ``rows_per_request`` (the indexer's writer) keep one limit:
    at most MAX_BATCH_ROWS rows and MAX_BATCH_BYTES per request, and the writer's chunks are never split."""
    rng = np.random.default_rng(dim)
    n = 3 * MAX_BATCH_ROWS + 7
    rows = [clean_row({**r, "vector": rng.standard_normal(dim)}, dim) for r in make_rows("b", n=n, dim=1)]
    sent = list(batches(rows))
    assert [r["id"] for b in sent for r in b] == [r["id"] for r in rows]  # all, in order, once
    for b in sent:
        assert len(b) <= MAX_BATCH_ROWS
        assert len(b) == 1 or sum(row_bytes(dim, 64 + sum(len(r[f]) for f in MAXLEN)) for r in b) <= MAX_BATCH_BYTES
    chunk = rows_per_request(dim)
    assert 1 <= chunk <= MAX_BATCH_ROWS and (chunk == 1 or chunk * row_bytes(dim) <= MAX_BATCH_BYTES)
    assert len(list(batches(rows[:chunk]))) == 1  # a writer chunk is one request
    assert writer.rows_per_request is rows_per_request  # the writer has no limits of its own
