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
    OverlapPair,
    Provenance,
    QueryInfo,
    SearchByJson,
    SearchResponse,
    SkippedModel,
    StageTimings,
    error_responses,
)
from embedsvc.search import SearchOutcome, parse_model_list

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


def to_response(outcome: SearchOutcome, *, base: str, thumb_size: int) -> SearchResponse:
    """Domain result -> API schema, with image and thumbnail URLs relative to the API root."""
    index = outcome.index
    q = outcome.query
    query = QueryInfo(
        kind=q.kind,  # type: ignore[arg-type]
        width=q.width,
        height=q.height,
        format=q.format,
        bytes=q.bytes,
        id=q.id,
        rel_path=q.rel_path,
        label_id=q.label_id,
        label_name=q.label_name,
        image_url=image_url(base, index, q.id) if q.id is not None else None,
        thumbnail_url=thumbnail_url(base, index, q.id, thumb_size) if q.id is not None else None,
    )
    models = []
    for m in outcome.models:
        prov = m.provenance
        models.append(
            ModelResult(
                model_key=m.model_key,
                display_name=m.display_name,
                model_name=m.model_name,
                dim=m.dim,
                provenance=Provenance(
                    label=str(prov.get("label") or prov.get("source") or "unknown"),
                    trained=bool(prov.get("trained", False)),
                    untrained=m.untrained,
                    source=prov.get("source"),
                    sha256=prov.get("sha256"),
                    seed=prov.get("seed"),
                ),
                untrained=m.untrained,
                timings=StageTimings(
                    **{k: round(v, 3) for k, v in m.timings_ms.items() if k in StageTimings.model_fields}
                ),
                neighbours=[
                    Neighbour(
                        rank=n.rank,
                        id=n.id,
                        rel_path=n.rel_path,
                        label_id=n.label_id,
                        label_name=n.label_name,
                        distance=n.distance,
                        width=n.width,
                        height=n.height,
                        image_url=image_url(base, index, n.id),
                        thumbnail_url=thumbnail_url(base, index, n.id, thumb_size),
                        same_label_as_query=n.same_label_as_query,
                    )
                    for n in m.neighbours
                ],
            )
        )
    return SearchResponse(
        index=index,
        k=outcome.k,
        label_filter=outcome.label_filter,
        query=query,
        models=models,
        overlap=[OverlapPair(a=a, b=b, jaccard=round(j, 6), shared=s) for a, b, j, s in outcome.overlap()],
        skipped=[SkippedModel(model_key=k, reason=r) for k, r in outcome.skipped],
        decode_ms=round(outcome.decode_ms, 3),
        total_ms=round(outcome.total_ms, 3),
    )


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
) -> SearchResponse:
    engine.check_k(k)  # before reading the body: k's one owner is the search engine
    requested = parse_model_list(models)
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type == "multipart/form-data":
        data, name = await _read_upload(request)
        outcome = await run_in_threadpool(
            engine.search_image, index, data, k=k, models=requested, label=label, kind="upload", name=name
        )
    elif content_type in ("application/json", ""):
        body = await request.body()
        try:
            query = SearchByJson.model_validate_json(body or b"{}")
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
            ) from None
        if query.id is not None:
            outcome = await run_in_threadpool(engine.search_by_id, index, query.id, k=k, models=requested, label=label)
        else:
            data = decode_base64(query.image_base64 or "")
            outcome = await run_in_threadpool(
                engine.search_image, index, data, k=k, models=requested, label=label, kind="base64", name="image_base64"
            )
    else:
        raise UnsupportedMediaTypeError(
            f"send multipart/form-data with an 'image' file or application/json, not {content_type[:100]!r}"
        )
    metrics.searches.labels(kind=outcome.query.kind).inc()
    base = request.scope.get("root_path", "").rstrip("/")
    return to_response(outcome, base=base, thumb_size=settings.thumbnail_sizes[0])
