"""Connecting, failing fast, and the one retry policy (embedsvc.store.connection)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from embedsvc.store import IndexNotFoundError, Store, StoreUnavailableError
from embedsvc.store.connection import retry_once


def test_ping(store: Store) -> None:
    store.ping()


def test_unreachable_server_fails_fast() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    uri = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=uri):
        Store(uri, connect_timeout=1)
    assert time.monotonic() - t0 < 10


def test_lite_file_name_is_checked(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="36 characters"):
        Store(str(tmp_path / ("x" * 40 + ".db")))


class Flaky:
    """An operation that finds Milvus unavailable its first ``failures`` times, then answers."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures, self.calls = failures, 0
        self.error = error or StoreUnavailableError("Milvus went away")

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "answer"


@pytest.mark.parametrize(
    ("failures", "can_help", "error", "outcome", "calls", "reconnects"),
    [
        (0, True, None, "answer", 1, 0),  # no failure: no retry
        (1, True, None, "answer", 2, 1),  # unavailable once: reconnect, retry once
        (1, False, None, StoreUnavailableError, 1, 1),  # a new connection cannot help: no retry
        (2, True, None, StoreUnavailableError, 2, 1),  # unavailable twice: the caller's error
        (1, True, IndexNotFoundError("gone"), IndexNotFoundError, 1, 0),  # other errors are never retried
    ],
    ids=["ok", "retried-once", "no-help", "twice", "not-unavailable"],
)
def test_retry_once_is_the_one_retry_policy(failures, can_help, error, outcome, calls, reconnects) -> None:
    op = Flaky(failures, error)
    asked: list[Exception] = []

    def reconnect(exc: StoreUnavailableError) -> bool:
        asked.append(exc)
        return can_help

    if isinstance(outcome, str):
        assert retry_once(op, reconnect) == outcome
    else:
        with pytest.raises(outcome):
            retry_once(op, reconnect)
    assert (op.calls, len(asked)) == (calls, reconnects)


def test_store_holder_retries_through_the_same_policy(lite_uri: str) -> None:
    """StoreHolder.call: an unavailable store is dropped and the call runs once more on a fresh one."""
    from embedsvc.search import StoreHolder

    made: list[Store] = []

    def factory() -> Store:
        made.append(Store(lite_uri, owner="pytest holder"))
        return made[-1]

    holder = StoreHolder(factory)
    try:
        seen: list[Store] = []

        def first_store_is_dead(store: Store) -> list[str]:
            seen.append(store)
            if len(seen) == 1:
                raise StoreUnavailableError("the first connection died")
            return store.models_of("nothing")

        assert holder.call(first_store_is_dead) == []
        assert len(made) == 2 and seen == made  # a fresh store for the retry
        with pytest.raises(StoreUnavailableError):
            holder.call(lambda store: (_ for _ in ()).throw(StoreUnavailableError("down for good")))
    finally:
        holder.close()
