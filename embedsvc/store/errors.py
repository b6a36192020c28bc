"""Storage errors, and how pymilvus failures map onto them.

Every failure the store raises is a ``StoreError`` whose message is meant for the user;
``is_unavailable``/``is_not_found`` classify what pymilvus raised so ``Store`` can pick the subclass.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

from embedsvc.core.errors import DISK_FULL_ERRNOS, EmbedsvcError


class StoreError(EmbedsvcError, RuntimeError):
    """Base class for storage failures: the database's fault, not the client's (503).

    The message is for the operator (CLI, server log) and may name the URI, the file or the process
    holding it; HTTP clients get the class's ``public_message`` instead.
    """

    code = "store_error"
    http_status = 503
    public_message = "the vector database failed (details are in the server log)"


class DatabaseInUseError(StoreError):
    """A Milvus Lite file is held by another process that we cannot share; ``owner_info`` says who."""

    code = "database_in_use"
    public_message = "the vector database is in use by another process that does not share it"

    def __init__(
        self, message: str, owner_info: dict[str, Any] | None = None, *, log_detail: str | None = None
    ) -> None:
        super().__init__(message, log_detail=log_detail)
        self.owner_info = owner_info or {}


class ManifestMismatchError(StoreError):
    """New vectors would not be comparable with the stored ones; ``fields`` lists what differs."""

    code = "manifest_mismatch"
    http_status = 409
    public_message = None  # what differs is the client's business

    def __init__(self, message: str, fields: Sequence[str] = (), *, log_detail: str | None = None) -> None:
        super().__init__(message, log_detail=log_detail)
        self.fields = list(fields)


class IndexNotFoundError(StoreError):
    """No collection for this (index, model)."""

    code = "unknown_index"
    http_status = 404
    public_message = None


class StoreUnavailableError(StoreError):
    """Milvus cannot be reached (the message names the URI)."""

    code = "milvus_unavailable"
    public_message = "Milvus is unavailable; retry shortly"


class DimensionMismatchError(StoreError, ValueError):
    """A vector's length differs from the index's ``dim``."""


# -- mapping pymilvus failures ---------------------------------------------------------------
_UNAVAILABLE_HINTS = (
    "fail connecting",
    "failed to connect",
    "unavailable",
    "connection refused",
    "deadline exceeded",
    "deadline_exceeded",
    "retry timeout",
    "retry run out",
    "socket closed",
    "connection reset",
)
_NOT_FOUND_HINTS = ("collection not found", "can't find collection", "can not find collection")


def _exc_text(exc: BaseException) -> str:
    parts = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(str(cur))
        cur = cur.__cause__ or cur.__context__
    return " | ".join(parts).lower()


def is_unavailable(exc: BaseException) -> bool:
    import grpc

    cur: BaseException | None = exc
    seen: set[int] = set()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, grpc.RpcError) and hasattr(cur, "code"):
            with contextlib.suppress(Exception):
                if cur.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    return True
        cur = cur.__cause__ or cur.__context__
    text = _exc_text(exc)
    return any(hint in text for hint in _UNAVAILABLE_HINTS)


def is_not_found(exc: BaseException) -> bool:
    code = getattr(exc, "code", None)
    return code == 100 or any(hint in _exc_text(exc) for hint in _NOT_FOUND_HINTS)


def error_message(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc).strip()


# -- disk full -------------------------------------------------------------------------------
#: What pymilvus / Milvus Lite say when there is no space (the errnos are DISK_FULL_ERRNOS in core.errors).
_DISK_FULL_HINTS = ("no space left", "database or disk is full", "disk quota exceeded")


class DiskFullError(StoreError, EmbedsvcError):
    """No space left where embedsvc writes (Lite database, thumbnails, reports); nothing stored is lost.

    One line for the user naming the directory; HTTP clients get 507 and ``public_message``.
    """

    code = "disk_full"
    http_status = 507
    public_message = "the server's disk is full; nothing already stored was lost (free some space, then retry)"

    def __init__(self, directory: str | os.PathLike[str], what: str, *, log_detail: str | None = None) -> None:
        self.directory = str(directory)
        free = free_bytes(self.directory)
        left = f" ({free:,} bytes free)" if free is not None else ""
        message = (
            f"disk full: no space left in {self.directory}{left} while {what}; "
            "free some space and retry (nothing already stored was lost)"
        )
        EmbedsvcError.__init__(self, message, log_detail=log_detail)


def free_bytes(directory: str | os.PathLike[str]) -> int | None:
    """Bytes an unprivileged writer may still use under ``directory`` (None when it cannot be checked)."""
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the disk or the quota is full."""
    cur: BaseException | None = exc
    seen: set[int] = set()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in DISK_FULL_ERRNOS:
            return True
        cur = cur.__cause__ or cur.__context__
    return any(hint in _exc_text(exc) for hint in _DISK_FULL_HINTS)


@contextlib.contextmanager
def disk_full_as_error(directory: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT raised inside the block into ``DiskFullError`` naming ``directory``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(directory, what, log_detail=str(exc)) from exc
        raise
