"""Dependencies: the heavy objects the lifespan loaded, handed to routes by type.

Routes never build a store, a model or settings themselves; they declare ``store: StoreDep`` and get
the app's. Tests swap any of them through ``app.dependency_overrides``.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from embedsvc.api.errors import UnauthorizedError
from embedsvc.core.config import Settings
from embedsvc.embedder import BackgroundCompiler, Embedder
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
    #: compiles the CPU models after start-up under ``compile=auto`` (``embedsvc.embedder.compile_later``)
    compiler: BackgroundCompiler | None = None


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


# -- the API token ----------------------------------------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="EMBEDSVC_API_TOKEN, when the server sets one.")


def _check_token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    """401 unless the request carries the configured token (no token configured: open)."""
    token = request.app.state.settings.api_token
    expected = token.get_secret_value() if isinstance(token, SecretStr) else str(token or "")
    if not expected:
        return
    sent = credentials.credentials if credentials is not None else ""
    # Constant time on bytes: compare_digest refuses non-ASCII str, and a header can carry any latin-1.
    if not sent or not secrets.compare_digest(sent.encode("utf-8", "surrogateescape"), expected.encode()):
        raise UnauthorizedError("this route needs 'Authorization: Bearer <token>' with the server's API token")


def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Routes that change state (jobs): the token, whenever one is configured."""
    _check_token(request, credentials)


def require_token_to_read(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Routes that read data: the token only when the operator asked (EMBEDSVC_API_TOKEN_FOR_SEARCH)."""
    if request.app.state.settings.api_token_for_search:
        _check_token(request, credentials)


# -- paths shown to clients -------------------------------------------------------------------------
def public_path(path: str | FsPath | None, settings: Settings) -> str | None:
    """A server path as clients see it: relative to the allowed root or the data directory it lies
    under, else only its last component (absolute server paths are the operator's business)."""
    if path is None or str(path) == "":
        return None
    target = FsPath(os.path.abspath(path))
    for base in (*settings.allowed_roots, settings.data_dir):
        for candidate in (FsPath(os.path.abspath(base)), FsPath(base).resolve()):
            if target.is_relative_to(candidate):
                return target.relative_to(candidate).as_posix()
    return target.name


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
