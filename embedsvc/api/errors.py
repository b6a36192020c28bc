"""Every error leaves the API as ``{"detail": message, "error": code}`` with a fitting status.

Domain exceptions (bad images, unknown indexes, Milvus down, ...) are mapped here in one table, so
route code raises what it means and never builds error responses by hand. Anything unmapped is a bug:
it is logged with its traceback and the client gets a generic 500 without one.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedsvc.api.schemas import ErrorResponse
from embedsvc.images import ImageDecodeError
from embedsvc.jobs import (
    BadRootError,
    IndexRootMismatchError,
    JobConflictError,
    JobError,
    JobNotFoundError,
    RootNotAllowedError,
)
from embedsvc.search import (
    BadQueryError,
    IncompatibleModelError,
    ModelNotLoadedError,
    NoSearchableModelError,
    QueryNotFoundError,
    SearchError,
    UnknownLabelError,
    UnknownModelError,
)
from embedsvc.store import (
    DatabaseInUseError,
    IndexNotFoundError,
    ManifestMismatchError,
    StoreError,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Raised by route code for a client error that has no domain exception of its own."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


# reason of ImageDecodeError -> (status, code)
IMAGE_ERRORS: dict[str, tuple[int, str]] = {
    "empty": (400, "empty_image"),
    "not_an_image": (415, "not_an_image"),
    "too_many_pixels": (413, "too_many_pixels"),
    "too_large": (413, "too_large"),
    "truncated": (400, "truncated_image"),
    "corrupt": (400, "corrupt_image"),
    "unreadable": (400, "unreadable_image"),
}

# exception class -> status; the most specific class in the MRO wins
STATUS_BY_CLASS: dict[type[BaseException], int] = {
    UnknownModelError: 404,
    ModelNotLoadedError: 404,
    QueryNotFoundError: 404,
    UnknownLabelError: 404,
    IncompatibleModelError: 409,
    NoSearchableModelError: 409,
    BadQueryError: 422,
    SearchError: 400,
    RootNotAllowedError: 403,
    JobConflictError: 409,
    IndexRootMismatchError: 409,
    JobNotFoundError: 404,
    BadRootError: 400,
    JobError: 400,
    IndexNotFoundError: 404,
    ManifestMismatchError: 409,
    StoreUnavailableError: 503,
    DatabaseInUseError: 503,
}

CODE_BY_CLASS: dict[type[BaseException], str] = {
    IndexNotFoundError: "unknown_index",
    ManifestMismatchError: "manifest_mismatch",
    StoreUnavailableError: "milvus_unavailable",
    DatabaseInUseError: "database_in_use",
}

HTTP_CODES = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "unavailable",
}


def error_response(status: int, code: str, detail: str, errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body = ErrorResponse(detail=detail, error=code, errors=errors).model_dump(exclude_none=True)
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse(status_code=status, content=body, headers=headers)


def classify(exc: BaseException) -> tuple[int, str, str] | None:
    """(status, code, message) for a known exception, None for a bug."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.detail
    if isinstance(exc, ImageDecodeError):
        status, code = IMAGE_ERRORS.get(exc.reason, (400, "bad_image"))
        return status, code, f"{exc.name}: {exc.detail}"
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_CLASS:
            code = CODE_BY_CLASS.get(cls) or getattr(exc, "code", None) or HTTP_CODES.get(STATUS_BY_CLASS[cls], "error")
            message = getattr(exc, "message", None) or str(exc) or cls.__name__
            return STATUS_BY_CLASS[cls], code, message
    if isinstance(exc, StoreError):  # another store failure: the database, not the client
        return 503, "store_error", f"vector store error: {exc}"
    return None


def _summarise_validation(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        errors.append({"loc": loc, "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))})
    detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
    return detail, errors


def install_error_handlers(app: FastAPI) -> None:
    def count(request: Request, code: str) -> None:
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.errors.labels(code=code).inc()

    async def known(request: Request, exc: Exception) -> JSONResponse:
        mapped = classify(exc)
        if mapped is None:
            return await unhandled(request, exc)
        status, code, message = mapped
        if status >= 500:
            log.warning("%s %s -> %d %s: %s", request.method, request.url.path, status, code, message)
        count(request, code)
        return error_response(status, code, message)

    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, errors = _summarise_validation(exc)
        count(request, "validation_error")
        return error_response(422, "validation_error", detail, errors)

    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        count(request, code)
        response = error_response(exc.status_code, code, str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        count(request, "internal_error")
        return error_response(500, "internal_error", "internal server error (logged on the server)")

    for cls in (ApiError, ImageDecodeError, SearchError, JobError, StoreError):
        app.add_exception_handler(cls, known)
    app.add_exception_handler(RequestValidationError, validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unhandled)
