"""The models' store searches of one query run concurrently (and the first overlaps the next forward).

Each test makes every model's store search wait at a barrier that only opens when all of the query's
searches are inside the store at once: searches run one after another would break the barrier (its
timeout) and the query would fail. No timing is asserted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from embedsvc.store import Store
from tests.search.conftest import INDEX, MODELS, EngineEnv
from tests.support import png_bytes


@pytest.fixture
def searches_meet(env: EngineEnv, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every store search waits until all models' searches have started; yields the threads they ran on."""
    barrier = threading.Barrier(len(MODELS), timeout=20)
    threads: list[str] = []
    real_search: Callable[..., Any] = Store.search

    def meeting_search(self: Store, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        barrier.wait()
        return real_search(self, *args, **kwargs)

    monkeypatch.setattr(Store, "search", meeting_search)
    yield threads


def test_search_image_runs_the_models_store_searches_at_once(env: EngineEnv, searches_meet: list[str]) -> None:
    result = env.engine.search_image(INDEX, png_bytes(seed=3), k=3)
    assert [m.model_key for m in result.models] == MODELS
    assert all(len(m.neighbours) == 3 for m in result.models)
    assert len(searches_meet) == len(MODELS) and len(set(searches_meet)) == len(MODELS)
    # each model's own search time is still its own stage
    assert all(m.timings.search_ms > 0 for m in result.models)


def test_search_by_id_runs_the_models_store_searches_at_once(env: EngineEnv, searches_meet: list[str]) -> None:
    [rid, *_] = sorted(env.store.existing_rows(INDEX, MODELS[0]))
    result = env.engine.search_by_id(INDEX, rid, k=2, fuse="rrf")
    assert [m.model_key for m in result.models] == [*MODELS, "fused_rrf"]
    assert all(rid not in {n.id for n in m.neighbours} for m in result.models)
    assert len(set(searches_meet)) == len(MODELS)
