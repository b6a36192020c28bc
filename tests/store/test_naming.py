"""Row ids (embedsvc.store.naming)."""

from __future__ import annotations

from embedsvc.store import row_id


def test_row_id_is_stable_positive_int64() -> None:
    a = row_id("photos", "birds/robin.jpg")
    assert a == row_id("photos", "birds/robin.jpg") and 0 < a < 2**63
    assert a != row_id("photos2", "birds/robin.jpg") and a != row_id("photos", "birds/robin2.jpg")
