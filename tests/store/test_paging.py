"""Listing rows in id order at any offset (embedsvc.store.paging)."""

from __future__ import annotations

import pytest

from embedsvc.store import Store
from tests.store.conftest import make_rows, manifest


def test_list_rows_pages_in_id_order_across_segments(store: Store, index: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of ``list_rows`` cover every row once in id order, over several flushed segments, with a
    label filter, and past the query window (shrunk to 64 rows here; Milvus' own is 16,384)."""
    import embedsvc.store.paging as store_mod

    store.ensure_collection(index, "m", manifest(dim=4))
    rows = make_rows(index, n=700, dim=4, seed=9)
    for start in range(0, len(rows), 250):  # one sealed segment per batch
        store.upsert(index, "m", rows[start : start + 250])
        store.flush(index, "m")
    ids = sorted(r["id"] for r in rows)
    label2 = sorted(r["id"] for r in rows if r["label_id"] == 2)

    def pages(limit: int, label_id: int | None = None) -> list[int]:
        out: list[int] = []
        offset = 0
        while True:
            page, total = store.list_rows(index, "m", offset=offset, limit=limit, label_id=label_id)
            assert total == (len(ids) if label_id is None else len(label2))
            if not page:
                return out
            out += [r["id"] for r in page]
            offset += limit

    assert pages(250) == ids and pages(33, label_id=2) == label2
    first, _ = store.list_rows(index, "m", offset=0, limit=1)
    assert set(first[0]) >= {"id", "rel_path", "label_id", "label_name", "width", "height"}
    drawn, total = store.sample_rows(index, "m", 20, seed=4)
    assert total == len(ids) and len({r["id"] for r in drawn}) == 20 and {r["id"] for r in drawn} <= set(ids)
    monkeypatch.setattr(store_mod, "_QUERY_WINDOW", 64)
    assert pages(50) == ids and pages(7, label_id=2) == label2
    assert store.list_rows(index, "m", offset=650, limit=60)[0] == store.list_rows(index, "m", offset=650, limit=50)[0]
    assert store.sample_rows(index, "m", 20, seed=4) == (drawn, total)  # same draw through the seek path
    assert store.list_rows(index, "m", offset=len(ids), limit=5) == ([], len(ids))
