"""Write stage: a background thread that upserts rows through ``embedsvc.store`` while models compute.

Rows are coalesced per model into requests the engine handles well (the store's ``rows_per_request``: Milvus
Lite slows ~40x once one request passes ~4 MB) and written at most ``max_latency_s`` after they
arrive, so a killed run loses only the last few seconds of work. The queue is bounded: if the store
falls behind, compute waits instead of piling vectors up in memory. No flush per batch: the runner
flushes once at the end.

The one switch between row upserts and Milvus bulk import is here too (``bulk_models``): a model whose run writes at
least ``bulk_threshold`` rows (settings, ``--bulk-threshold``; 1,000,000 when unset) into a Milvus server goes through
``embedsvc.store.bulk.BulkImporter`` (parquet files and import jobs, verified counts) in the same writer thread;
everything else, and everything on Milvus Lite, is upserted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from embedsvc.core.errors import EmbedsvcError
from embedsvc.store import Store
from embedsvc.store.bulk import BulkConfig, BulkImporter, S3Staging, check_bulk_capable
from embedsvc.store.rows import MAX_BATCH_ROWS, rows_per_request  # the store owns request sizes

if TYPE_CHECKING:
    from embedsvc.core.config import Settings
    from embedsvc.indexer.plan import RunPlan

log = logging.getLogger(__name__)

_STOP = object()

#: Rows per model and run from which a Milvus server gets them by bulk import (when ``bulk_threshold`` is unset).
DEFAULT_BULK_THRESHOLD = 1_000_000


def bulk_models(store: Store, expected_rows: Mapping[str, int], settings: Settings) -> dict[str, BulkConfig]:
    """Which models of a run go by bulk import (model key -> staging config); the others are upserted.

    ``expected_rows``: rows each model will write in this run. Milvus Lite always upserts, but a threshold that was
    set explicitly and is reached there raises ``BulkImportUnsupportedError`` (before anything is written).
    """
    threshold = settings.bulk_threshold
    limit = DEFAULT_BULK_THRESHOLD if threshold is None else threshold
    reached = [key for key, n in expected_rows.items() if n > 0 and n >= limit]
    if store.is_lite:
        if threshold is not None and reached:
            check_bulk_capable(store)
        return {}
    remote = None
    if settings.bulk_s3_bucket:  # object-store staging: the server's own bucket (settings check the endpoint)
        remote = S3Staging(
            endpoint=settings.bulk_s3_endpoint,
            bucket=settings.bulk_s3_bucket,
            access_key=settings.bulk_s3_access_key,
            secret_key=settings.bulk_s3_secret_key.get_secret_value(),
            secure=settings.bulk_s3_secure,
            prefix=settings.bulk_s3_prefix,
        )
    config = BulkConfig(
        staging_dir=settings.resolved_bulk_dir,
        server_dir=settings.bulk_server_dir,
        timeout_s=settings.bulk_timeout_s,
        remote=remote,
    )
    return {key: config for key in reached}


def rows_to_write(plan: RunPlan) -> dict[str, int]:
    """Rows each model of a planned run will write: its files that have no reusable stored row (a file whose
    content changed since is found only when read, so this is the lower bound the threshold is compared with)."""
    return {key: sum(1 for i in plan.ids if i not in plan.reusable.get(key, {})) for key in plan.keys}


class WriterError(EmbedsvcError):
    """The writer thread failed; the original error is the ``__cause__``, and a product error's code,
    status and public message (disk full, Milvus unavailable) carry over so users still see what it was."""

    code = "write_failed"
    http_status = 503
    public_message = "writing to the index failed (details in the server log)"

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        if isinstance(cause, EmbedsvcError):
            self.code, self.http_status = cause.code, cause.http_status
            self.public_message = cause.client_message()


class StoreWriter:
    """Upserts ``(model_key, rows)`` into one index from a daemon thread; ``close()`` drains and re-raises."""

    def __init__(
        self,
        store: Store,
        index: str,
        *,
        max_rows: int = MAX_BATCH_ROWS,
        max_latency_s: float = 2.0,
        queue_size: int = 8,
        on_written: Callable[[str, int], None] | None = None,
        bulk: Mapping[str, BulkConfig] | None = None,
    ) -> None:
        """``bulk``: models whose rows go by bulk import instead of upserts (``bulk_models`` decides)."""
        self.store = store
        self.index = index
        self.max_rows = max_rows
        self.max_latency_s = max_latency_s
        self.on_written = on_written
        self.written: dict[str, int] = {}
        self.requests = 0
        self.seconds = 0.0  # time spent inside store.upsert (and bulk import jobs)
        self.bulk = dict(bulk or {})
        self.importers: dict[str, BulkImporter] = {}
        self.error: BaseException | None = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._buffers: dict[str, list[dict[str, Any]]] = {}
        self._since: dict[str, float] = {}
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"store-writer-{index}", daemon=True)
        self._thread.start()

    @classmethod
    def for_plan(cls, store: Store, plan: RunPlan, settings: Settings, **kwargs: Any) -> StoreWriter:
        """The writer of a planned run (either engine): bulk import for the models ``bulk_models`` picks."""
        return cls(store, plan.index_name, bulk=bulk_models(store, rows_to_write(plan), settings), **kwargs)

    # ------------------------------------------------------------------------------------ producer side
    def put(self, model_key: str, rows: list[dict[str, Any]]) -> None:
        """Queue rows; blocks while the queue is full, raises at once if the writer has failed."""
        if not rows:
            return
        while True:
            self._check()
            try:
                self._queue.put((model_key, rows), timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Write everything still buffered, stop the thread, and raise if any write failed."""
        while self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=0.5)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._check()

    def abort(self) -> None:
        """Stop without writing what is still queued (the run is failing anyway)."""
        self._abort.set()
        self._thread.join(timeout=30)
        for importer in self.importers.values():
            importer.abort()

    def _check(self) -> None:
        if self.error is not None:
            raise WriterError(f"writing to index {self.index!r} failed: {self.error}", self.error) from self.error

    # ------------------------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        try:
            while not self._abort.is_set():
                try:
                    item = self._queue.get(timeout=0.2)
                except queue.Empty:
                    self._flush_stale()
                    continue
                if item is _STOP:
                    for key in list(self._buffers):
                        self._drain(key, everything=True)
                    for key, importer in self.importers.items():
                        start = time.perf_counter()
                        imported = importer.imported
                        self._count(key, importer.close() - imported)
                        self.seconds += time.perf_counter() - start
                    return
                key, rows = item
                if not self._buffers.get(key):
                    self._since[key] = time.monotonic()
                self._buffers.setdefault(key, []).extend(rows)
                self._drain(key, everything=False)
                self._flush_stale()
        except BaseException as exc:  # surfaced to the producer by put()/close()
            log.debug("writer thread failed", exc_info=True)
            self.error = exc

    def _flush_stale(self) -> None:
        now = time.monotonic()
        for key, rows in self._buffers.items():
            if rows and now - self._since.get(key, now) >= self.max_latency_s:
                self._drain(key, everything=True)

    def _drain(self, key: str, *, everything: bool) -> None:
        rows = self._buffers.get(key, [])
        if not rows:
            return
        chunk = rows_per_request(len(rows[0]["vector"]), self.max_rows)
        while len(rows) >= chunk or (everything and rows):
            if self._abort.is_set():
                return
            part, rows = rows[:chunk], rows[chunk:]
            self._buffers[key] = rows
            start = time.perf_counter()
            if key in self.bulk:
                importer = self.importers.get(key)
                if importer is None:
                    importer = self.importers[key] = BulkImporter(self.store, self.index, key, self.bulk[key])
                before = importer.imported
                importer.add(part)  # buffered; a full file is imported (and verified) here
                self.seconds += time.perf_counter() - start
                self._count(key, importer.imported - before)
                continue
            self.store.upsert(self.index, key, part)
            self.seconds += time.perf_counter() - start
            self.requests += 1
            self._count(key, len(part))
            # what is left arrived before now: its age restarts no later than this (a put alone never restarts it)
            self._since[key] = time.monotonic()

    def _count(self, key: str, n: int) -> None:
        """``n`` more rows of ``key`` are stored (upserted, or imported and verified)."""
        if n <= 0:
            return
        first = key not in self.written
        self.written[key] = self.written.get(key, 0) + n
        (log.info if first else log.debug)("wrote %d rows to %s/%s (%d so far)", n, self.index, key, self.written[key])
        if self.on_written is not None:
            self.on_written(key, n)
