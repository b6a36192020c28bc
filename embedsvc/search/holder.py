"""The service's Store connection, which heals itself after Milvus went away."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from embedsvc.store import DatabaseInUseError, Store, StoreError, StoreUnavailableError
from embedsvc.store.connection import retry_once

log = logging.getLogger(__name__)


class StoreHolder:
    """Owns the service's Store and reconnects after Milvus went away.

    A client whose server died is never cached forever: an unavailable error drops it, the call is
    retried once on a fresh connection (``retry_once``), and if that fails too the caller gets the error (503).
    """

    def __init__(self, factory: Callable[[], Store], *, retry_after_s: float = 2.0) -> None:
        self._factory = factory
        self._store: Store | None = None
        self._lock = threading.Lock()
        self.retry_after_s = retry_after_s
        self._failed_at = -float("inf")
        self._last_error: StoreUnavailableError | DatabaseInUseError | None = None

    def get(self) -> Store:
        """The live store, connecting if needed. While Milvus is down, connection attempts are spaced
        ``retry_after_s`` apart and calls in between fail fast with the last error (no pile-up of
        threads each waiting out a connect timeout)."""
        store = self._store
        if store is not None:
            return store
        with self._lock:
            if self._store is None:
                if self._last_error is not None and time.monotonic() - self._failed_at < self.retry_after_s:
                    # A fresh error of the same kind (the API reports database_in_use apart from down).
                    raise type(self._last_error)(str(self._last_error))
                try:
                    self._store = self._factory()
                except StoreError as exc:
                    self._failed_at = time.monotonic()
                    self._last_error = (
                        exc
                        if isinstance(exc, StoreUnavailableError | DatabaseInUseError)
                        else StoreUnavailableError(str(exc))
                    )
                    raise self._last_error from exc
                self._last_error = None
                log.info("connected to Milvus (%r)", self._store)
            return self._store

    def invalidate(self, store: Store | None = None, *, reason: str = "Milvus unavailable") -> None:
        """Drop (and close) the current store so that the next call connects afresh."""
        with self._lock:
            if self._store is None or (store is not None and store is not self._store):
                return
            old, self._store = self._store, None
        with contextlib.suppress(Exception):
            old.close()
        if reason:
            log.warning("dropped the Milvus connection (%s); the next call reconnects", reason)

    def call(self, fn: Callable[[Store], Any]) -> Any:
        """Run ``fn(store)``; on StoreUnavailableError drop the store and retry once on a fresh one (the
        store's one retry policy, ``retry_once``)."""

        def attempt() -> Any:
            store = self.get()
            try:
                return fn(store)
            except StoreUnavailableError:
                self.invalidate(store)
                raise

        return retry_once(attempt, lambda _: True)

    def close(self) -> None:
        self.invalidate(reason="")
