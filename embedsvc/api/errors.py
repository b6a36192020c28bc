"""Every error leaves the API as ``{"detail": message, "error": code, "request_id": id}``.

Product errors derive from :class:`embedsvc.core.errors.EmbedsvcError` and carry their own ``code``
and ``http_status``; one handler reads them, so route code raises what it means and no table here maps
classes to statuses. Clients see the message (``client_message()``: never a server path, pid or
command line), the code and the request id; the log gets the details (``log_detail``, the cause) under
that id. Anything else is a bug: logged with its traceback, a generic 500 without one for the client.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from embedsvc.api.schemas import ErrorResponse
from embedsvc.core.errors import EmbedsvcError

log = logging.getLogger(__name__)


# -- errors raised by the HTTP layer itself (the domain's own live beside the domain) ---------------
class RequestError(EmbedsvcError):
    """A request the HTTP layer refuses before any domain code runs."""

    code = "bad_request"
    http_status = 400
    headers: ClassVar[dict[str, str]] = {}


class BodyTooLargeError(RequestError):
    code = "too_large"
    http_status = 413


class BadBase64Error(RequestError):
    code = "bad_base64"


class BadMultipartError(RequestError):
    code = "bad_multipart"


class MissingFieldError(RequestError):
    """A multipart field that is missing or of the wrong kind (reads like FastAPI's own validation errors)."""

    code = "validation_error"
    http_status = 422


class UnsupportedMediaTypeError(RequestError):
    code = "unsupported_media_type"
    http_status = 415


class UnknownIdError(RequestError):
    code = "unknown_id"
    http_status = 404


class ImageUnavailableError(RequestError):
    code = "image_unavailable"
    http_status = 404


class BadThumbnailSizeError(RequestError):
    code = "bad_thumbnail_size"
    http_status = 422


class CannotEvaluateError(RequestError):
    code = "cannot_evaluate"
    http_status = 409


class UnauthorizedError(RequestError):
    """Missing or wrong bearer token (RFC 6750: the challenge header says which scheme)."""

    code = "unauthorized"
    http_status = 401
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": "Bearer"}


# Codes of the framework's own HTTP errors (unknown routes, wrong methods).
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
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


def request_id(scope_or_request: Any) -> str | None:
    """The id ``RequestIdMiddleware`` gave this request (None outside one)."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    state = scope.get("state") or {}
    return state.get("request_id")


def error_response(
    status: int,
    code: str,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    *,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(detail=detail, error=code, errors=errors, request_id=request_id).model_dump(exclude_none=True)
    out = dict(headers or {})
    if status == 503:
        out.setdefault("Retry-After", "5")
    return JSONResponse(status_code=status, content=body, headers=out or None)


def _summarise_validation(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        errors.append({"loc": loc, "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))})
    detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
    return detail, errors


def _cause_text(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return f"{type(cause).__name__}: {cause}" if cause is not None else ""


def install_error_handlers(app: FastAPI) -> None:
    def count(request: Request, code: str) -> None:
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.errors.labels(code=code).inc()

    async def known(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, EmbedsvcError):
            return await unhandled(request, exc)
        rid = request_id(request)
        status, code = exc.http_status, exc.code
        details = [d for d in (str(exc) if exc.client_message() != str(exc) else "", exc.log_detail) if d]
        if status >= 500:
            details.append(_cause_text(exc))
        log.log(
            logging.WARNING if status >= 500 else logging.INFO,
            "request %s: %s %s -> %d %s: %s%s",
            rid,
            request.method,
            request.url.path,
            status,
            code,
            exc.client_message(),
            "".join(f" | {d}" for d in details if d),
        )
        count(request, code)
        return error_response(
            status, code, exc.client_message(), request_id=rid, headers=getattr(exc, "headers", None)
        )

    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail, errors = _summarise_validation(exc)
        count(request, "validation_error")
        return error_response(422, "validation_error", detail, errors, request_id=request_id(request))

    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        count(request, code)
        return error_response(
            exc.status_code, code, str(exc.detail), request_id=request_id(request), headers=dict(exc.headers or {})
        )

    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        rid = request_id(request)
        log.error("request %s: unhandled error on %s %s", rid, request.method, request.url.path, exc_info=exc)
        count(request, "internal_error")
        # Sent by Starlette's outermost middleware, past RequestIdMiddleware: the header is set here.
        return error_response(
            500,
            "internal_error",
            "internal server error (logged on the server under this request id)",
            request_id=rid,
            headers={"X-Request-ID": rid} if rid else None,
        )

    app.add_exception_handler(EmbedsvcError, known)
    app.add_exception_handler(RequestValidationError, validation)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unhandled)
