"""Write stage: coalesced engine-sized requests off the compute thread, latency bound, errors surface."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from embedsvc.indexer.writer import StoreWriter, WriterError, rows_per_request


class FakeStore:
    def __init__(self, fail_after: int | None = None, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, str, list[int]]] = []
        self.fail_after = fail_after
        self.delay = delay
        self.threads: set[str] = set()

    def upsert(self, index: str, key: str, rows: list[dict]) -> None:
        self.threads.add(threading.current_thread().name)
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("disk full")
        time.sleep(self.delay)
        self.calls.append((index, key, [r["id"] for r in rows]))


def rows(start: int, n: int, dim: int = 8) -> list[dict]:
    return [{"id": i, "vector": np.zeros(dim, np.float32)} for i in range(start, start + n)]


def test_coalesces_into_engine_sized_requests() -> None:
    store = FakeStore()
    writer = StoreWriter(store, "idx", max_latency_s=60)
    for start in range(0, 600, 64):
        writer.put("m", rows(start, min(64, 600 - start)))
    writer.close()
    sizes = [len(ids) for _, _, ids in store.calls]
    assert sizes == [250, 250, 100]
    assert [i for _, _, ids in store.calls for i in ids] == list(range(600))
    assert writer.written == {"m": 600}
    assert store.threads == {"store-writer-idx"}, "writes happen off the calling thread"
    assert rows_per_request(768) == 250
    assert rows_per_request(4096) < 250 and rows_per_request(4096) * 4096 * 4 <= 3_000_000


def test_latency_bound_writes_small_batches_early() -> None:
    store = FakeStore()
    writer = StoreWriter(store, "idx", max_latency_s=0.2)
    writer.put("a", rows(0, 4))
    deadline = time.monotonic() + 5
    while not store.calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.calls == [("idx", "a", [0, 1, 2, 3])], "written before close, within the latency bound"
    writer.close()


def test_latency_bound_holds_while_rows_keep_arriving() -> None:
    """Rows put more often than the bound still go out within it: the oldest row's age counts, not the last put's
    (a kill mid-run then loses at most the bound's worth of work)."""
    store = FakeStore()
    writer = StoreWriter(store, "idx", max_latency_s=0.3)
    start = time.monotonic()
    for i in range(20):  # 2 s of puts, one every 0.1 s, far below the engine-sized request of 250 rows
        writer.put("a", rows(i, 1))
        time.sleep(0.1)
        if store.calls:
            break
    first_write = time.monotonic() - start
    writer.close()
    assert store.calls and first_write < 1.0, f"first write after {first_write:.1f} s with a 0.3 s bound"
    written = [i for _, _, ids in store.calls for i in ids]
    assert written == list(range(len(written))), "every row once, in order"


def test_store_error_surfaces_in_producer() -> None:
    writer = StoreWriter(FakeStore(fail_after=0), "idx", max_latency_s=0.0)
    writer.put("m", rows(0, 3))
    with pytest.raises(WriterError, match="disk full"):
        for _ in range(100):
            writer.put("m", rows(0, 3))
            time.sleep(0.02)
        writer.close()


def test_a_product_error_in_the_writer_keeps_its_code_and_public_message() -> None:
    """A disk-full (or Milvus-down) failure in the writer thread still reads as that to users and clients."""
    from embedsvc.store.errors import DiskFullError

    class FullStore(FakeStore):
        def upsert(self, index: str, key: str, rows: list[dict]) -> None:
            raise DiskFullError("/data", "writing rows")

    writer = StoreWriter(FullStore(), "idx", max_latency_s=0.0)
    writer.put("m", rows(0, 3))
    with pytest.raises(WriterError) as caught:
        for _ in range(100):
            writer.put("m", rows(0, 3))
            time.sleep(0.02)
        writer.close()
    assert caught.value.code == "disk_full" and caught.value.http_status == 507
    assert "/data" not in caught.value.client_message()
    assert isinstance(caught.value.__cause__, DiskFullError)
