"""GET /health (the process answers) and GET /ready (models loaded and Milvus reachable)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from embedsvc import __version__
from embedsvc.api.deps import EmbeddersDep, StoreDep
from embedsvc.api.errors import request_id
from embedsvc.api.schemas import Health, Readiness
from embedsvc.store import StoreError

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="Liveness: the process answers")
def health() -> Health:
    return Health(version=__version__)


@router.get(
    "/ready",
    response_model=Readiness,
    summary="Readiness: models loaded and Milvus reachable (503 with the reason otherwise)",
    responses={503: {"model": Readiness, "description": "Not ready; `reason` says why."}},
)
async def ready(request: Request, store: StoreDep, embedders: EmbeddersDep) -> Readiness | JSONResponse:
    """The reason is for load balancers and users: no server paths; the log has the details under the request id."""
    loaded = list(embedders)
    reasons = []
    milvus = "ok"
    if not loaded:
        reasons.append("no model loaded")
    try:
        await run_in_threadpool(store.call, lambda s: s.ping())
    except StoreError as exc:
        milvus = "unavailable"
        reasons.append(f"Milvus unreachable: {exc.client_message()}")
        log.warning("request %s: Milvus unreachable: %s | %s", request_id(request), exc, exc.log_detail or "")
    if reasons:
        body = Readiness(ready=False, models_loaded=loaded, milvus=milvus, reason="; ".join(reasons))  # type: ignore[arg-type]
        log.warning("request %s: not ready: %s", request_id(request), body.reason)
        return JSONResponse(status_code=503, content=body.model_dump(), headers={"Retry-After": "5"})
    return Readiness(ready=True, models_loaded=loaded, milvus="ok")
