"""``GET /indexes/{name}/eval``: leave-one-out retrieval metrics of an index, cached per index version.

An evaluation of a large index takes seconds to minutes, so its result is kept per (index, sample,
seed) together with the index version it was computed on (live rows, row_count and updated_at of
every model). A request first reads that version (cheap); only when it differs is the index
evaluated again. Evaluations run one at a time: two at once would only halve each one's CPU/GPU.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from cachetools import LRUCache
from fastapi import APIRouter, Depends, Query, Request

from embedsvc.api.deps import IndexPath, SettingsDep, StoreDep
from embedsvc.api.errors import CannotEvaluateError
from embedsvc.api.schemas import error_responses
from embedsvc.evaluation.runner import evaluate_index, index_version
from embedsvc.evaluation.schemas import EvalResponse

router = APIRouter(prefix="/indexes", tags=["evaluation"])

CacheKey = tuple[str, int | None, int]


class EvalCache:
    """Results per (index, sample, seed), each valid only for the index version it was computed on."""

    def __init__(self, max_entries: int = 32) -> None:
        self.max_entries = max_entries
        self.computations = 0  # how many evaluations actually ran (tests read it)
        self._entries: LRUCache[CacheKey, tuple[Any, dict[str, Any]]] = LRUCache(maxsize=max_entries)
        self._lock = threading.Lock()
        self._compute_lock = threading.Lock()

    def _lookup(self, key: CacheKey, version: Any) -> dict[str, Any] | None:
        with self._lock:
            hit = self._entries.get(key)  # a hit counts as a use: LRUCache keeps it longest
            if hit is None or hit[0] != version:
                return None
            return hit[1]

    def get_or_compute(
        self, key: CacheKey, version: Any, compute: Callable[[], dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        """(result, was_cached). ``compute`` returns a summary whose "version" says what it saw."""
        found = self._lookup(key, version)
        if found is not None:
            return found, True
        with self._compute_lock:
            found = self._lookup(key, version)  # someone else may have computed it meanwhile
            if found is not None:
                return found, True
            result = compute()
            self.computations += 1
            with self._lock:
                self._entries[key] = (_as_version(result["version"]), result)
            return result, False


def _as_version(value: Any) -> tuple[tuple[Any, ...], ...]:
    return tuple(tuple(v) for v in value)


_cache_lock = threading.Lock()


def get_eval_cache(request: Request) -> EvalCache:
    """One cache per app, created on first use (the lifespan need not know about it)."""
    state = request.app.state
    with _cache_lock:
        if getattr(state, "eval_cache", None) is None:
            state.eval_cache = EvalCache()
        return state.eval_cache


EvalCacheDep = Annotated[EvalCache, Depends(get_eval_cache)]


@router.get(
    "/{name}/eval",
    response_model=EvalResponse,
    summary="Retrieval evaluation of an index",
    responses=error_responses(404, 409, 422, 503),
)
def evaluate(
    name: IndexPath,
    store: StoreDep,
    settings: SettingsDep,
    cache: EvalCacheDep,
    sample: Annotated[
        int | None, Query(ge=1, description="Evaluate a seeded sample of N labelled queries (default: all).")
    ] = None,
    seed: Annotated[int, Query(ge=0, description="Seed of the query sample.")] = 0,
) -> EvalResponse:
    """Leave-one-out retrieval metrics of every model in the index, from its stored vectors (exact search)."""
    version = _as_version(store.call(lambda s: index_version(s, name)))  # 404 for an unknown index

    def compute() -> dict[str, Any]:
        start = time.perf_counter()
        try:
            ev = store.call(
                lambda s: evaluate_index(s, name, sample=sample, seed=seed, device=settings.resolved_device())
            )
        except ValueError as exc:  # e.g. fewer than 2 rows, models disagreeing on labels
            raise CannotEvaluateError(str(exc)) from None
        return ev.summary | {
            "computed_at": datetime.now(UTC),
            "compute_seconds": round(time.perf_counter() - start, 3),
        }

    result, cached = cache.get_or_compute((name, sample, seed), version, compute)
    return EvalResponse.model_validate(result | {"cached": cached})
