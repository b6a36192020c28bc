"""GET /indexes and /indexes/{name}: what is indexed, with which models, row counts and manifests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from embedsvc.api.deps import EmbeddersDep, EngineDep, IndexPath, StoreDep
from embedsvc.api.schemas import IndexInfo, IndexList, IndexModel, error_responses
from embedsvc.embedder import Embedder
from embedsvc.search import manifest_differences

router = APIRouter(prefix="/indexes", tags=["indexes"])


def _row_count(manifest: Mapping[str, Any]) -> int | None:
    for key in ("live_row_count", "row_count"):
        if isinstance(manifest.get(key), int):
            return int(manifest[key])
    return None


def index_info(name: str, manifests: Mapping[str, Mapping[str, Any]], embedders: Mapping[str, Embedder]) -> IndexInfo:
    models = []
    for key, manifest in manifests.items():
        embedder = embedders.get(key)
        models.append(
            IndexModel(
                model_key=key,
                row_count=_row_count(manifest),
                loaded=embedder is not None,
                compatible=None if embedder is None else not manifest_differences(manifest, embedder.manifest()),
                manifest=dict(manifest),
            )
        )
    counts = [m.row_count for m in models if m.row_count is not None]
    return IndexInfo(name=name, models=models, row_count=max(counts) if counts else None)


@router.get("", response_model=IndexList, summary="Every index", responses=error_responses(503))
async def list_indexes(store: StoreDep, embedders: EmbeddersDep) -> IndexList:
    listing = await run_in_threadpool(store.call, lambda s: s.list_indexes())
    data = [index_info(name, manifests, embedders) for name, manifests in listing.items()]
    return IndexList(data=data, count=len(data))


@router.get("/{name}", response_model=IndexInfo, summary="One index", responses=error_responses(404, 422, 503))
def get_index(name: IndexPath, engine: EngineDep, store: StoreDep, embedders: EmbeddersDep) -> IndexInfo:
    manifests = engine.index_manifests(name)
    for key, manifest in manifests.items():
        manifest["live_row_count"] = store.call(lambda s, key=key: s.count(name, key))
    return index_info(name, manifests, embedders)
