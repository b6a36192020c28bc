"""Dependencies: the heavy objects the lifespan loaded, handed to routes by type.

Routes never build a store, a model or settings themselves; they declare ``store: StoreDep`` and get
the app's. Tests swap any of them through ``app.dependency_overrides``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query, Request

from embedsvc.core.config import Settings
from embedsvc.embedder import Embedder
from embedsvc.jobs import JobManager
from embedsvc.metrics import Metrics
from embedsvc.search import SearchEngine, StoreHolder
from embedsvc.thumbnails import ThumbnailCache

INT64_MAX = 2**63 - 1


@dataclass
class AppState:
    """Everything the lifespan builds; one per app (``app.state.svc``)."""

    settings: Settings
    store: StoreHolder
    embedders: dict[str, Embedder]
    engine: SearchEngine
    jobs: JobManager
    thumbnails: ThumbnailCache
    metrics: Metrics


def get_state(request: Request) -> AppState:
    return request.app.state.svc


def get_settings(request: Request) -> Settings:
    return get_state(request).settings


def get_store(request: Request) -> StoreHolder:
    return get_state(request).store


def get_embedders(request: Request) -> dict[str, Embedder]:
    return get_state(request).embedders


def get_engine(request: Request) -> SearchEngine:
    return get_state(request).engine


def get_jobs(request: Request) -> JobManager:
    return get_state(request).jobs


def get_thumbnails(request: Request) -> ThumbnailCache:
    return get_state(request).thumbnails


def get_metrics(request: Request) -> Metrics:
    return get_state(request).metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[StoreHolder, Depends(get_store)]
EmbeddersDep = Annotated[dict[str, Embedder], Depends(get_embedders)]
EngineDep = Annotated[SearchEngine, Depends(get_engine)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
ThumbnailsDep = Annotated[ThumbnailCache, Depends(get_thumbnails)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

# Path/query parameters shared by several routes. Index names are free text for the store (it slugs
# and hashes them into collection names); anything that is not an existing index is a 404.
IndexPath = Annotated[str, Path(min_length=1, max_length=512, description="Index name.")]
IndexQuery = Annotated[str, Query(min_length=1, max_length=512, description="Index to search.")]
RowIdPath = Annotated[int, Path(ge=0, le=INT64_MAX, description="Image id (from search results).")]
