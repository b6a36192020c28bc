"""Storage errors, and how pymilvus failures map onto them.

Every failure the store raises is a ``StoreError`` whose message is meant for the user;
``is_unavailable``/``is_not_found`` classify what pymilvus raised so ``Store`` can pick the subclass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any


class StoreError(RuntimeError):
    """Base class for storage failures; the message is meant for the user."""


class DatabaseInUseError(StoreError):
    """A Milvus Lite file is held by another process that we cannot share; ``owner_info`` says who."""

    def __init__(self, message: str, owner_info: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.owner_info = owner_info or {}


class ManifestMismatchError(StoreError):
    """New vectors would not be comparable with the stored ones; ``fields`` lists what differs."""

    def __init__(self, message: str, fields: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.fields = list(fields)


class IndexNotFoundError(StoreError):
    """No collection for this (index, model)."""


class StoreUnavailableError(StoreError):
    """Milvus cannot be reached (the message names the URI)."""


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
