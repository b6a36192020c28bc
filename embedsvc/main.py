"""The FastAPI app: ``create_app(settings)`` builds one; models and the Milvus client load in its lifespan.

Run it with ``embedsvc serve`` (one uvicorn worker on purpose: each worker would load its own copy of
every model, and a Milvus Lite file can be opened by one process only).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from embedsvc import __version__
from embedsvc.api.deps import AppState
from embedsvc.api.errors import install_error_handlers
from embedsvc.api.main import api_router
from embedsvc.api.middleware import BodySizeLimit, RequestIdMiddleware, RequestMetrics
from embedsvc.api.schemas import ErrorResponse
from embedsvc.core.config import Settings, get_settings
from embedsvc.embedder import BackgroundCompiler, Embedder, compile_later
from embedsvc.jobs import JobManager
from embedsvc.metrics import Metrics
from embedsvc.search import SearchEngine, StoreHolder
from embedsvc.store import Store, StoreError
from embedsvc.thumbnails import ThumbnailCache

log = logging.getLogger(__name__)

_FORM_OVERHEAD = 256 * 1024  # multipart headers and boundaries, JSON punctuation


def body_limit(settings: Settings) -> int:
    """Largest request body accepted, on every route: a maximal image as base64 JSON, plus framing.

    The one transport-level bound (BodySizeLimit); the image's own byte limit is checked once, by the
    search engine, on the decoded bytes.
    """
    return settings.max_upload_bytes * 4 // 3 + _FORM_OVERHEAD


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
    compiler = BackgroundCompiler(compile_later(settings, embedders)).start()
    return AppState(
        settings=settings,
        store=holder,
        embedders=dict(embedders),
        engine=engine,
        jobs=jobs,
        thumbnails=thumbnails,
        metrics=metrics,
        compiler=compiler,
    )


def create_app(
    settings: Settings | None = None,
    *,
    embedders: Mapping[str, Embedder] | None = None,
    store_factory: Callable[[], Store] | None = None,
) -> FastAPI:
    """A new app. ``embedders``/``store_factory`` let tests and benchmarks share already-loaded objects;
    by default the lifespan loads ``settings.model_keys()`` and connects to ``settings``' Milvus."""
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = embedders
        if loaded is None:
            from embedsvc.embedder import load_embedders

            loaded = await run_in_threadpool(load_embedders, settings.model_keys(), settings=settings)
        if settings.allowed_roots and not settings.api_token.get_secret_value():
            log.warning(
                "bulk-index jobs are open to anyone who can reach this port (allowed roots: %d); "
                "set EMBEDSVC_API_TOKEN to require a bearer token",
                len(settings.allowed_roots),
            )
        factory = store_factory or default_store_factory(settings)
        state = await run_in_threadpool(build_state, settings, loaded, factory, metrics)
        app.state.svc = state
        log.info("ready: models %s, Milvus %s", ", ".join(loaded), settings.resolved_milvus_uri)
        try:
            yield
        finally:
            if state.compiler is not None:
                state.compiler.stop()
            await run_in_threadpool(state.jobs.shutdown)
            await run_in_threadpool(state.engine.close)
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
    # Outermost last: metrics see every response, including 413s from the size limit and CORS refusals;
    # every response (413s included) carries the request id.
    app.add_middleware(BodySizeLimit, limit=body_limit(settings))
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST"],
        allow_headers=["*"],
        expose_headers=["X-Request-ID"],
    )
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(RequestMetrics, metrics=metrics)

    def openapi() -> dict[str, Any]:
        """The generated schema, plus the limits that only exist at run time (k's maximum)."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for param in schema["paths"].get("/search", {}).get("post", {}).get("parameters", []):
                if param.get("name") == "k":  # checked by SearchEngine.check_k; documented here
                    param["schema"].update(minimum=1, maximum=settings.max_k)
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
