"""ASGI middleware: request ids, the one request-body size limit, request metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) so bodies stream through untouched and nothing is buffered.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedsvc.api.errors import BodyTooLargeError, error_response, request_id

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")
REQUEST_ID_HEADER = "X-Request-ID"


class RequestIdMiddleware:
    """Give every request an id: the client's ``X-Request-ID`` when it is sane, else a new one.

    The id is echoed in the response header and in error bodies, and the error handlers log under it,
    so a user's report ("request 3f2a... failed") finds the server-side details.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.lower().encode(), b"")
        text = sent.decode("latin-1")
        rid = text if _CLIENT_ID.fullmatch(text) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodySizeLimit:
    """The one owner of the request-body limit, for every route and content type.

    By Content-Length at once; without one (chunked), while the body streams in. Once the body went
    over the limit the answer is 413, whatever the app made of the truncated body (FastAPI turns an
    exception raised while it reads a JSON body into a 400 "error parsing the body").
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self, scope: Scope, declared: int | None = None) -> Any:
        size = f"request body of {declared:,} bytes" if declared is not None else "request body"
        exc = BodyTooLargeError(f"{size} exceeds the limit of {self.limit:,} bytes")
        return error_response(exc.http_status, exc.code, exc.message, request_id=request_id(scope))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            metrics = getattr(getattr(scope.get("app"), "state", None), "metrics", None)
            if metrics is not None:  # answered before any handler ran: count it as they would
                metrics.errors.labels(code=BodyTooLargeError.code).inc()
            await self._too_large(scope, int(declared))(scope, receive, send)
            return
        seen = 0
        exceeded = False
        started = False

        async def limited() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    exceeded = True
                    raise BodyTooLargeError(f"request body exceeds the limit of {self.limit:,} bytes")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to a truncated body; ours replaces it below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await self._too_large(scope)(scope, receive, send)


class RequestMetrics:
    """Count and time every request by its route template (never the raw path: bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Any) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            method = scope.get("method", "?")
            self.metrics.requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.request_latency.labels(method=method, route=route).observe(time.perf_counter() - start)
