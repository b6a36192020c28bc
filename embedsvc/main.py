"""The FastAPI app: ``create_app(settings)`` builds one; models and the Milvus client load in its lifespan.

Run it with ``embedsvc serve`` (one uvicorn worker on purpose: each worker would load its own copy of
every model, and a Milvus Lite file can be opened by one process only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedsvc import __version__
from embedsvc.api.deps import AppState
from embedsvc.api.errors import ApiError, error_response, install_error_handlers
from embedsvc.api.main import api_router
from embedsvc.api.schemas import ErrorResponse
from embedsvc.core.config import Settings, get_settings
from embedsvc.embedder import Embedder
from embedsvc.jobs import JobManager
from embedsvc.metrics import Metrics
from embedsvc.search import SearchEngine, StoreHolder
from embedsvc.store import Store, StoreError
from embedsvc.thumbnails import ThumbnailCache

log = logging.getLogger(__name__)

_FORM_OVERHEAD = 256 * 1024  # multipart headers and boundaries, JSON punctuation


def body_limit(settings: Settings) -> int:
    """Largest request body accepted: a maximal image as base64 JSON, plus framing."""
    return settings.max_upload_bytes * 4 // 3 + _FORM_OVERHEAD


class BodySizeLimit:
    """Refuse oversized bodies before they are spooled: by Content-Length at once, else while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            response = error_response(
                413, "too_large", f"request body of {int(declared):,} bytes exceeds the limit of {self.limit:,}"
            )
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, "too_large", f"request body exceeds the limit of {self.limit:,} bytes")
            return message

        await self.app(scope, limited, send)


class RequestMetrics:
    """Count and time every request by its route template (never the raw path: bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
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


def _operation_id(route: APIRoute) -> str:
    """``tag-name`` operation ids, as the FastAPI template does, for readable generated clients."""
    tag = route.tags[0] if route.tags else "default"
    return f"{tag}-{route.name}"


def _use_error_schema_for_422(schema: dict[str, Any]) -> None:
    """Validation errors leave as ``{"detail", "error", "errors"}`` (see api.errors), also on routes
    that did not declare it: document that instead of FastAPI's default HTTPValidationError."""
    ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for ops in schema["paths"].values():
        for op in ops.values():
            response = op.get("responses", {}).get("422")
            if response and "HTTPValidationError" in str(response):
                op["responses"]["422"] = {
                    "description": "Validation Error",
                    "content": {"application/json": {"schema": ref}},
                }
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("ErrorResponse", ErrorResponse.model_json_schema())
    for name in ("HTTPValidationError", "ValidationError"):
        if name not in str(schema["paths"]):
            components.pop(name, None)


def default_store_factory(settings: Settings) -> Callable[[], Store]:
    def factory() -> Store:
        return Store.from_settings(settings, owner="embedsvc serve")

    return factory


def build_state(
    settings: Settings,
    embedders: Mapping[str, Embedder],
    store_factory: Callable[[], Store],
    metrics: Metrics,
) -> AppState:
    holder = StoreHolder(store_factory)
    try:
        holder.get()
    except StoreError as exc:  # start anyway: /ready reports it and calls reconnect when Milvus is back
        log.warning("Milvus not reachable at start-up (%s); will retry on demand", exc)
    engine = SearchEngine(store=holder, embedders=embedders, settings=settings, observer=metrics.observe_stage)
    jobs = JobManager(store=holder, embedders=embedders, settings=settings, metrics=metrics)
    thumbnails = ThumbnailCache(settings.data_dir / "thumbnails", max_pixels=settings.max_image_pixels)
    return AppState(
        settings=settings,
        store=holder,
        embedders=dict(embedders),
        engine=engine,
        jobs=jobs,
        thumbnails=thumbnails,
        metrics=metrics,
    )


def create_app(
    settings: Settings | None = None,
    *,
    embedders: Mapping[str, Embedder] | None = None,
    store_factory: Callable[[], Store] | None = None,
) -> FastAPI:
    """A new app. ``embedders``/``store_factory`` let tests and benchmarks share already-loaded objects;
    by default the lifespan loads ``settings.models`` and connects to ``settings``' Milvus."""
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = embedders
        if loaded is None:
            from embedsvc.embedder import load_embedders

            loaded = await run_in_threadpool(load_embedders, settings.models, settings=settings)
        for emb in loaded.values():
            if emb.untrained:
                log.warning("%s is serving UNTRAINED random weights (%s)", emb.key, emb.provenance.label)
        factory = store_factory or default_store_factory(settings)
        state = await run_in_threadpool(build_state, settings, loaded, factory, metrics)
        app.state.svc = state
        log.info("ready: models %s, Milvus %s", ", ".join(loaded), settings.resolved_milvus_uri)
        try:
            yield
        finally:
            await run_in_threadpool(state.jobs.shutdown)
            await run_in_threadpool(state.store.close)

    app = FastAPI(
        title="embedsvc",
        version=__version__,
        description="Image similarity search that runs one query through several vision backbones.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.metrics = metrics
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(api_router)
    # Outermost last: metrics see every response, including 413s from the size limit and CORS refusals.
    app.add_middleware(BodySizeLimit, limit=body_limit(settings))
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST"],
        allow_headers=["*"],
    )
    app.add_middleware(RequestMetrics, metrics=metrics)

    def openapi() -> dict[str, Any]:
        """The generated schema, plus the limits that only exist at run time (k's maximum)."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for param in schema["paths"].get("/search", {}).get("post", {}).get("parameters", []):
                if param.get("name") == "k":
                    param["schema"]["maximum"] = settings.max_k
            _use_error_schema_for_422(schema)
            for path, ops in schema["paths"].items():
                if path.endswith("/thumbnail"):
                    for param in ops["get"].get("parameters", []):
                        if param.get("name") == "size":
                            param["schema"].pop("anyOf", None)
                            param["schema"].update(type="integer", enum=list(settings.thumbnail_sizes))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
