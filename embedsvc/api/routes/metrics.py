"""GET /metrics: Prometheus text exposition of this app's own registry."""

from __future__ import annotations

from fastapi import APIRouter, Response

from embedsvc.api.deps import MetricsDep

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics: request counts and latency histograms per route, model and stage",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Metrics."}},
)
def metrics(m: MetricsDep) -> Response:
    return Response(content=m.render(), media_type=m.content_type)
