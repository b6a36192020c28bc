"""POST /search: one query image (upload, base64 or indexed id) through every model of an index."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from embedsvc.api.deps import EngineDep, IndexQuery, MetricsDep, SettingsDep
from embedsvc.api.errors import (
    BadBase64Error,
    BadMultipartError,
    MissingFieldError,
    RequestError,
    UnsupportedMediaTypeError,
)
from embedsvc.api.schemas import (
    ModelResult,
    Neighbour,
    QueryInfo,
    SearchByJson,
    SearchResponse,
    error_responses,
)
from embedsvc.search import SearchResult, parse_model_list
from embedsvc.search.errors import UnknownFusionError

router = APIRouter(prefix="/search", tags=["search"])

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w-]+=[\w.-]+)*;base64,", re.IGNORECASE)

_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"image": {"type": "string", "format": "binary", "description": "Image file."}},
                    "required": ["image"],
                }
            },
            "application/json": {"schema": SearchByJson.model_json_schema()},
        },
    }
}


def image_url(base: str, index: str, row_id: int) -> str:
    return f"{base}/images/{quote(index, safe='')}/{row_id}"


def thumbnail_url(base: str, index: str, row_id: int, size: int) -> str:
    return f"{image_url(base, index, row_id)}/thumbnail?size={size}"


def to_response(outcome: SearchResult, *, base: str, thumb_size: int) -> SearchResponse:
    """The search core's result plus image and thumbnail URLs (relative to the API root): nothing else."""

    def urls(row_id: int | None) -> dict[str, str]:
        if row_id is None:
            return {}
        return {
            "image_url": image_url(base, outcome.index, row_id),
            "thumbnail_url": thumbnail_url(base, outcome.index, row_id, thumb_size),
        }

    models = [
        ModelResult(
            **m.model_dump(exclude={"neighbours"}),
            neighbours=[Neighbour(**n.model_dump(), **urls(n.id)) for n in m.neighbours],
        )
        for m in outcome.models
    ]
    query = QueryInfo(**outcome.query.model_dump(), **urls(outcome.query.id))
    return SearchResponse(**outcome.model_dump(exclude={"query", "models"}), query=query, models=models)


async def _read_upload(request: Request) -> tuple[bytes, str]:
    """The uploaded file's bytes and name (BodySizeLimit bounds the body; the engine checks the image's size)."""
    try:
        form = await request.form(max_files=1, max_fields=16)
    except RequestError:
        raise
    except Exception as exc:  # malformed multipart: python-multipart's own message
        if getattr(exc, "status_code", None) == 400:
            raise BadMultipartError(f"malformed multipart body: {getattr(exc, 'detail', exc)}") from exc
        raise
    upload = form.get("image")
    if upload is None:
        raise MissingFieldError("multipart field 'image' (the image file) is required")
    if not isinstance(upload, UploadFile):
        raise MissingFieldError("multipart field 'image' must be a file, not a text value")
    data = await upload.read()
    await form.close()
    return data, (upload.filename or "upload")[:200]


def decode_base64(text: str) -> bytes:
    """Image bytes from base64 text (standard or URL-safe alphabet, optional data: URL prefix)."""
    text = _DATA_URL.sub("", text.strip(), count=1)
    text = "".join(text.split())
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadBase64Error(f"image_base64 is not valid base64 ({exc})") from exc


@router.post(
    "",
    response_model=SearchResponse,
    summary="Nearest indexed images for one query, per model",
    description=(
        'The query is a multipart upload (field `image`), JSON `{"image_base64": ...}`, or JSON '
        '`{"id": ...}` of an indexed image ("more like this": its stored vectors are used and it is '
        "excluded from the results). The image is decoded once and run through every selected model."
    ),
    responses=error_responses(400, 404, 409, 413, 415, 422, 503),
    openapi_extra=_REQUEST_BODY,
)
async def search(
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    index: IndexQuery,
    k: Annotated[int, Query(description="Neighbours per model (1..max_k).")] = 10,
    models: Annotated[
        list[str] | None,
        Query(description="Model keys (repeatable or comma-separated). Default: all of the index's models."),
    ] = None,
    label: Annotated[
        str | None, Query(max_length=512, description="Only neighbours with this label (id or name).")
    ] = None,
    fuse: Annotated[
        str | None,
        Query(
            max_length=64,
            description=(
                "'rrf': after the per-model entries, add one with model_key fused_rrf, the models' rankings "
                "(each read max(k, 100) deep, capped by max_k) fused by reciprocal rank fusion (k=60); its "
                "neighbours carry `score` (distance is 0.0). The overlap never includes it."
            ),
        ),
    ] = None,
) -> SearchResponse:
    engine.check_k(k)  # before reading the body: k's and fuse's one owner is the search engine
    engine.check_fuse(fuse)
    requested = parse_model_list(models)
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type == "multipart/form-data":
        data, name = await _read_upload(request)
        outcome = await run_in_threadpool(
            engine.search_image, index, data, k=k, models=requested, label=label, kind="upload", name=name, fuse=fuse
        )
    elif content_type in ("application/json", ""):
        body = await request.body()
        try:
            query = SearchByJson.model_validate_json(body or b"{}")
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
            ) from None
        if query.fuse is not None and fuse is not None and query.fuse != fuse:
            raise UnknownFusionError(f"fuse given twice and differently: {fuse[:50]!r} and {query.fuse[:50]!r}")
        fuse = fuse if fuse is not None else query.fuse
        engine.check_fuse(fuse)
        if query.id is not None:
            outcome = await run_in_threadpool(
                engine.search_by_id, index, query.id, k=k, models=requested, label=label, fuse=fuse
            )
        else:
            data = decode_base64(query.image_base64 or "")
            outcome = await run_in_threadpool(
                engine.search_image,
                index,
                data,
                k=k,
                models=requested,
                label=label,
                kind="base64",
                name="image_base64",
                fuse=fuse,
            )
    else:
        raise UnsupportedMediaTypeError(
            f"send multipart/form-data with an 'image' file or application/json, not {content_type[:100]!r}"
        )
    metrics.searches.labels(kind=outcome.query.kind).inc()
    base = request.scope.get("root_path", "").rstrip("/")
    return to_response(outcome, base=base, thumb_size=settings.thumbnail_sizes[0])
