"""GET /indexes and /indexes/{name}: what is indexed, with which models, row counts and manifests;
GET /indexes/{name}/images and .../images/random: the indexed images themselves, paged or drawn."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from embedsvc.api.deps import INT64_MAX, EmbeddersDep, EngineDep, IndexPath, SettingsDep, StoreDep, public_path
from embedsvc.api.routes.search import image_url, thumbnail_url
from embedsvc.api.schemas import (
    ImagePage,
    ImageRow,
    IndexInfo,
    IndexList,
    IndexModel,
    RandomImages,
    error_responses,
)
from embedsvc.core.config import Settings
from embedsvc.embedder import Embedder
from embedsvc.manifest import incompatibilities

MAX_PAGE = 500  # rows per page of GET /indexes/{name}/images
MAX_RANDOM = 100  # rows per draw of GET /indexes/{name}/images/random

LabelQuery = Annotated[
    str | None, Query(max_length=512, description="Only images with this label (id or name), as in /search.")
]

router = APIRouter(prefix="/indexes", tags=["indexes"])


def _row_count(manifest: Mapping[str, Any]) -> int | None:
    for key in ("live_row_count", "row_count"):
        if isinstance(manifest.get(key), int):
            return int(manifest[key])
    return None


def index_info(
    name: str, manifests: Mapping[str, Mapping[str, Any]], embedders: Mapping[str, Embedder], settings: Settings
) -> IndexInfo:
    """An index as clients see it: its manifests with ``dataset_root`` relative to where it came from."""
    models = []
    for key, manifest in manifests.items():
        embedder = embedders.get(key)
        models.append(
            IndexModel(
                model_key=key,
                row_count=_row_count(manifest),
                loaded=embedder is not None,
                compatible=(
                    None if embedder is None else not incompatibilities(manifest, embedder.query_manifest(manifest))
                ),
                manifest=dict(manifest) | {"dataset_root": public_path(manifest.get("dataset_root"), settings)},
            )
        )
    counts = [m.row_count for m in models if m.row_count is not None]
    return IndexInfo(name=name, models=models, row_count=max(counts) if counts else None)


@router.get("", response_model=IndexList, summary="Every index", responses=error_responses(503))
async def list_indexes(store: StoreDep, embedders: EmbeddersDep, settings: SettingsDep) -> IndexList:
    listing = await run_in_threadpool(store.call, lambda s: s.list_indexes())
    data = [index_info(name, manifests, embedders, settings) for name, manifests in listing.items()]
    return IndexList(data=data, count=len(data), max_k=settings.max_k)


@router.get("/{name}", response_model=IndexInfo, summary="One index", responses=error_responses(404, 422, 503))
def get_index(
    name: IndexPath, engine: EngineDep, store: StoreDep, embedders: EmbeddersDep, settings: SettingsDep
) -> IndexInfo:
    manifests = engine.index_manifests(name)
    for key, manifest in manifests.items():
        manifest["live_row_count"] = store.call(lambda s, key=key: s.count(name, key))
    return index_info(name, manifests, embedders, settings)


def image_rows(request: Request, index: str, rows: list[dict[str, Any]], thumb_size: int) -> list[ImageRow]:
    base = request.scope.get("root_path", "").rstrip("/")
    out = []
    for row in rows:
        label = row.get("label_id")
        out.append(
            ImageRow(
                id=int(row["id"]),
                rel_path=str(row.get("rel_path", "")),
                label_id=None if label is None or int(label) < 0 else int(label),
                label_name=row.get("label_name") or None,
                width=row.get("width"),
                height=row.get("height"),
                image_url=image_url(base, index, int(row["id"])),
                thumbnail_url=thumbnail_url(base, index, int(row["id"]), thumb_size),
            )
        )
    return out


@router.get(
    "/{name}/images",
    response_model=ImagePage,
    summary="A page of the index's images, in ascending id order",
    description=(
        "Rows `offset .. offset+limit-1` of the images matching `label`, sorted by id, with `total` for "
        "paging. Pages are consistent while the index does not change. Any offset works; past 16,384 "
        "(Milvus' query window) each page costs one extra database call per 16,384 rows skipped."
    ),
    responses=error_responses(404, 422, 503),
)
def list_index_images(
    request: Request,
    name: IndexPath,
    engine: EngineDep,
    settings: SettingsDep,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX, description="Rows to skip.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Rows per page (1..{MAX_PAGE}).")] = 50,
    label: LabelQuery = None,
) -> ImagePage:
    listing = engine.list_images(name, offset=offset, limit=limit, label=label)
    data = image_rows(request, name, listing.rows, settings.thumbnail_sizes[0])
    return ImagePage(
        index=name,
        model_key=listing.model_key,
        label_filter=listing.label_filter,
        offset=offset,
        limit=limit,
        total=listing.total,
        data=data,
        count=len(data),
    )


@router.get(
    "/{name}/images/random",
    response_model=RandomImages,
    summary="Distinct images of the index drawn at random",
    description="The same `seed` draws the same images while the index is unchanged; without one, each call differs.",
    responses=error_responses(404, 422, 503),
)
def random_index_images(
    request: Request,
    name: IndexPath,
    engine: EngineDep,
    settings: SettingsDep,
    count: Annotated[int, Query(ge=1, le=MAX_RANDOM, description=f"Images to draw (1..{MAX_RANDOM}).")] = 1,
    seed: Annotated[int | None, Query(ge=0, le=INT64_MAX, description="Makes the draw reproducible.")] = None,
    label: LabelQuery = None,
) -> RandomImages:
    listing = engine.random_images(name, count=count, seed=seed, label=label)
    data = image_rows(request, name, listing.rows, settings.thumbnail_sizes[0])
    return RandomImages(
        index=name,
        model_key=listing.model_key,
        label_filter=listing.label_filter,
        seed=seed,
        total=listing.total,
        data=data,
        count=len(data),
    )
