"""GET /images/{index}/{id} and its thumbnail: files are found by id, never by a path from the request.

The id resolves to a stored row; the row's relative path is joined to the index's dataset root and
resolved (symlinks and ``..`` included). Anything that lands outside that root is refused, so a
crafted or stale row can never expose another file on the server.
"""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from embedsvc.api.deps import EngineDep, IndexPath, RowIdPath, SettingsDep, ThumbnailsDep
from embedsvc.api.errors import BadThumbnailSizeError, ImageUnavailableError
from embedsvc.api.schemas import error_responses
from embedsvc.images import ImageDecodeError
from embedsvc.paths import resolve_rel_path

log = logging.getLogger(__name__)

router = APIRouter(prefix="/images", tags=["images"])

_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'",
    "Cache-Control": "public, max-age=3600",
}
_IMAGE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}, "description": "The image."}
}


def resolve_image(engine: Any, index: str, row_id: int) -> tuple[FsPath, dict[str, Any]]:
    """(file path inside the dataset root, row) for an id; a 404 (unknown_id, image_unavailable) otherwise."""
    row, manifest = engine.find_row(index, row_id)  # the search core's rule; 404 unknown_index / unknown_id
    root_text = manifest.get("dataset_root")
    if not root_text:
        raise ImageUnavailableError(f"index {index!r} does not record where its images are")
    root = FsPath(root_text).resolve()
    path = resolve_rel_path(root, str(row.get("rel_path", ""))).resolve()  # names that are not UTF-8 too
    if not path.is_relative_to(root) or path == root:
        log.warning("refusing id %d of %r: %r resolves outside %s", row_id, index, row.get("rel_path"), root)
        raise ImageUnavailableError(f"image {row_id} of index {index!r} is not available")
    if not path.is_file():
        raise ImageUnavailableError(f"image {row_id} of index {index!r} is no longer on the server")
    return path, row


def _media_type(path: FsPath) -> str:
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed if guessed and guessed.startswith("image/") else "application/octet-stream"


@router.get(
    "/{index}/{row_id}",
    summary="The original image file of an indexed id",
    response_class=FileResponse,
    responses={**_IMAGE_RESPONSE, **error_responses(404, 422, 503)},
)
def get_image(index: IndexPath, row_id: RowIdPath, engine: EngineDep) -> FileResponse:
    path, _ = resolve_image(engine, index, row_id)
    return FileResponse(path, media_type=_media_type(path), headers=_HEADERS)


@router.get(
    "/{index}/{row_id}/thumbnail",
    summary="A JPEG thumbnail of an indexed id (rendered once, then cached)",
    response_class=FileResponse,
    responses={**_IMAGE_RESPONSE, **error_responses(404, 422, 503)},
)
def get_thumbnail(
    index: IndexPath,
    row_id: RowIdPath,
    engine: EngineDep,
    thumbnails: ThumbnailsDep,
    settings: SettingsDep,
    size: Annotated[int | None, Query(ge=1, le=4096, description="Longest side; one of the configured sizes.")] = None,
) -> FileResponse:
    sizes = settings.thumbnail_sizes
    size = sizes[0] if size is None else size
    if size not in sizes:
        raise BadThumbnailSizeError(f"size must be one of {', '.join(map(str, sizes))}, got {size}")
    path, row = resolve_image(engine, index, row_id)
    try:
        thumb = thumbnails.get(
            path, size=size, content_hash=row.get("content_hash") or None, index=index, row_id=row_id
        )
    except (ImageDecodeError, OSError) as exc:
        log.warning("cannot thumbnail id %d of %r (%s): %s", row_id, index, path, exc)
        raise ImageUnavailableError(f"image {row_id} of index {index!r} cannot be decoded") from exc
    return FileResponse(thumb, media_type="image/jpeg", headers=_HEADERS)
