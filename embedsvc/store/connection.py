"""The store's connection: one ``MilvusClient`` (a server, or a Milvus Lite file through ``lite``), and
the one retry policy of every store call (``retry_once``), used by ``Store._call`` and ``StoreHolder``."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Self, TypeVar
from urllib.parse import urlparse

from embedsvc.store.errors import (
    DiskFullError,
    IndexNotFoundError,
    StoreError,
    StoreUnavailableError,
    error_message,
    is_not_found,
    is_unavailable,
)
from embedsvc.store.lite import (
    check_lite_path,
    describe_owner,
    failed_for_lack_of_space,
    open_lite,
    owner_gone,
    release_lite,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_REMOTE_SCHEMES = ("http", "https", "tcp", "grpc", "unix")


def retry_once(attempt: Callable[[], T], reconnect: Callable[[StoreUnavailableError], bool]) -> T:
    """The one retry policy of the store: an operation that found Milvus unavailable runs once more,
    after ``reconnect`` (which returns whether a fresh connection can help). Every store operation is
    idempotent, so a retry is safe; a second failure is the caller's error."""
    try:
        return attempt()
    except StoreUnavailableError as exc:
        if not reconnect(exc):
            raise
    return attempt()


class Connection:
    """A thread-safe connection to Milvus (one gRPC channel; reconnection is locked)."""

    def __init__(
        self,
        uri: str,
        token: str = "",
        *,
        owner: str = "embedsvc",
        share_lite: bool = True,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        lite_wait: float = 10.0,
    ) -> None:
        """Connect now (errors surface here, not on first use).

        ``timeout`` bounds every call (pymilvus otherwise retries an unreachable server for minutes);
        ``connect_timeout`` bounds the initial connection; ``lite_wait`` is how long to wait for a
        locked Lite file to get a shareable owner before raising ``DatabaseInUseError``.
        """
        if not uri:
            raise StoreError("empty Milvus URI")
        self.uri = uri
        self.token = token
        self.owner = owner
        self.share_lite = share_lite
        self.timeout = max(1, math.ceil(timeout))  # pymilvus bounds its retry loop only for int timeouts
        self.connect_timeout = connect_timeout
        self.lite_wait = lite_wait
        scheme = urlparse(uri).scheme.lower()
        self.is_lite = scheme not in _REMOTE_SCHEMES
        self.lite_role: Literal["owner", "guest"] | None = None
        self._db: Path | None = None
        self._owner_info: dict[str, Any] | None = None
        self._conn_lock = threading.RLock()
        self._client: Any = None
        self._closed = False
        # The catalog's caches live here: a call that finds a collection gone clears them (``_store_error``).
        self._manifests_ready = False
        self._manifest_cache: dict[str, dict[str, Any]] = {}
        self._loaded: set[str] = set()
        if self.is_lite:
            self._db = check_lite_path(uri)
        self._connect()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        role = f", lite_role={self.lite_role}" if self.is_lite else ""
        return f"Store(uri={self.uri!r}{role})"

    # -- connection and retries -----------------------------------------------------------------
    def _connect(self) -> None:
        from embedsvc.store.pymilvus_import import import_pymilvus

        import_pymilvus()  # first import with MILVUS_URI hidden: pymilvus would reject a Lite path in it
        from pymilvus import MilvusClient

        grpc_uri = self.uri
        if self._db is not None:
            grpc_uri, self.lite_role, self._owner_info = open_lite(
                self._db, self.owner, self.share_lite, self.lite_wait
            )
        try:
            # A private alias: pymilvus otherwise shares one connection per URI, and close() of one
            # client would cut off every other Store in this process.
            self._client = MilvusClient(
                uri=grpc_uri,
                token=self.token,
                timeout=self.connect_timeout,
                alias=f"embedsvc-{os.getpid()}-{id(self)}-{time.monotonic_ns()}",
            )
        except Exception as exc:
            self._drop_lite_ref()
            if self.is_lite and self.lite_role == "guest":
                raise StoreUnavailableError(
                    f"cannot reach the Milvus Lite server of {self.uri} shared by "
                    f"{describe_owner(self._owner_info or {})} at {grpc_uri}: {error_message(exc)}"
                ) from exc
            raise StoreUnavailableError(f"cannot connect to Milvus at {self.uri}: {error_message(exc)}") from exc

    def _drop_lite_ref(self) -> None:
        if self._db is not None and self.lite_role == "owner":
            release_lite(self._db)
        self.lite_role = None

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        self._drop_lite_ref()

    def _owner_gone(self) -> bool:
        info = self._owner_info
        if self.lite_role != "guest" or not info:
            return False
        return owner_gone(info)

    def _reconnect(self) -> None:
        log.info("Milvus Lite owner of %s went away; reconnecting", self.uri)
        self._disconnect()
        self._connect()
        self._loaded.clear()

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one pymilvus call, mapping failures to StoreError subclasses.

        ``retry_once`` runs it again when Milvus was unavailable and a new connection can help: a Lite
        guest whose owner went away reconnects (joining a new owner or becoming one).
        """
        if self._closed:
            raise StoreError(f"Store for {self.uri} is closed")
        kwargs.setdefault("timeout", self.timeout)
        used: list[Any] = []

        def attempt() -> T:
            with self._conn_lock:
                if self._owner_gone():
                    self._reconnect()
                client = self._client
            used.append(client)
            try:
                return fn(client, *args, **kwargs)
            except StoreError:
                raise
            except Exception as exc:
                raise self._store_error(what, exc) from exc

        def reconnect(_: StoreUnavailableError) -> bool:
            if self.lite_role != "guest":
                return False  # a server or our own Lite server: a new channel would not help
            with self._conn_lock:
                if self._client is used[-1]:
                    self._reconnect()
            return True

        return retry_once(attempt, reconnect)

    def _store_error(self, what: str, exc: Exception) -> StoreError:
        """The StoreError subclass a pymilvus failure means."""
        if self._db is not None and failed_for_lack_of_space(self._db, exc):
            return DiskFullError(self._db.parent, what, log_detail=error_message(exc))
        if is_not_found(exc):
            self._manifest_cache.clear()  # dropped behind our back: forget what we knew
            self._loaded.clear()
            return IndexNotFoundError(f"{what}: {error_message(exc)}")
        if is_unavailable(exc):
            return StoreUnavailableError(f"Milvus at {self.uri} unavailable ({what}): {error_message(exc)}")
        return StoreError(f"{what} failed: {error_message(exc)}")

    def ping(self) -> None:
        """Raise StoreUnavailableError unless Milvus answers."""
        self._call("ping", lambda c, **kw: c.list_collections(**kw), timeout=min(self.timeout, 10))

    def close(self) -> None:
        """Idempotent. For the Lite owner this stops the embedded server once no Store uses it."""
        with self._conn_lock:
            if self._closed:
                return
            self._closed = True
            self._disconnect()
