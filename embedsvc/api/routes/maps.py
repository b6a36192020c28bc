"""``GET /indexes/{name}/maps``: a 2-D map of every model's vectors on one seeded sample (``embedsvc.maps``).

Projecting thousands of points takes seconds, so the handler is a plain ``def``: FastAPI runs it in
its thread pool and the event loop keeps serving other requests (as the evaluation route does). Maps
are cached per (index, sample, seed, method) and index version, by one ``MapCache`` per app.
"""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from embedsvc.api.deps import IndexPath, StoreDep
from embedsvc.api.schemas import MapMethod, MapPoint, MapsResponse, ModelMap, error_responses
from embedsvc.maps import DEFAULT_SAMPLE, MAX_SAMPLE, MIN_POINTS, IndexMaps, MapCache

router = APIRouter(prefix="/indexes", tags=["maps"])

_cache_lock = threading.Lock()


def get_map_cache(request: Request) -> MapCache:
    """One cache per app, created on first use (the lifespan need not know about it)."""
    state = request.app.state
    with _cache_lock:
        if getattr(state, "map_cache", None) is None:
            state.map_cache = MapCache()
        return state.map_cache


MapCacheDep = Annotated[MapCache, Depends(get_map_cache)]


def to_response(maps: IndexMaps, cached: bool) -> MapsResponse:
    return MapsResponse(
        index=maps.index,
        method=maps.method,
        sample=maps.sample,
        seed=maps.seed,
        n_points=len(maps.rows),
        total_rows=maps.total_rows,
        points=[
            MapPoint(id=r["id"], label_id=r["label_id"], label=r["label_name"], rel_path=r["rel_path"])
            for r in maps.rows
        ],
        models=[
            ModelMap(
                model=m.model,
                display_name=m.display_name,
                method=m.method,
                x=m.x.round(5).tolist(),
                y=m.y.round(5).tolist(),
                seconds=m.seconds,
            )
            for m in maps.models
        ],
        computed_at=maps.computed_at,
        compute_seconds=maps.compute_seconds,
        cached=cached,
    )


@router.get(
    "/{name}/maps",
    response_model=MapsResponse,
    summary="2-D maps of every model's vectors",
    responses=error_responses(404, 409, 422, 503),
)
def maps(
    name: IndexPath,
    store: StoreDep,
    cache: MapCacheDep,
    sample: Annotated[
        int, Query(ge=MIN_POINTS, le=MAX_SAMPLE, description="Map a seeded sample of up to N rows.")
    ] = DEFAULT_SAMPLE,
    seed: Annotated[int, Query(ge=0, le=2**32 - 1, description="Seed of the sample and of UMAP.")] = 0,
    method: Annotated[
        MapMethod, Query(description="umap (umap-learn), pca, or auto: UMAP where umap-learn is installed.")
    ] = "auto",
) -> MapsResponse:
    """Each model's stored vectors of the same sampled images, L2-normalised and projected to 2-D (x, y)."""
    result, cached = store.call(lambda s: cache.get(s, name, sample=sample, seed=seed, method=method))
    return to_response(result, cached)
