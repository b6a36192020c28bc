"""Prometheus collectors for the service, on a registry owned by each app.

Nothing is registered at import: ``Metrics()`` builds its own CollectorRegistry, so several apps
(tests, benchmarks) in one process never collide and nothing global needs unregistering.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Query stages on CPU span ~1 ms (search over a small index) to seconds (a forward at 224 px).
_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "embedsvc_http_requests_total",
            "HTTP requests by route template, method and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "embedsvc_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["method", "route"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.stage_latency = Histogram(
            "embedsvc_search_stage_duration_seconds",
            "Search latency per model and stage (decode is shared: model '*'; queue is the wait for the "
            "forward gate, so forward is compute only).",
            ["model", "stage"],
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.searches = Counter(
            "embedsvc_searches_total", "Searches answered, by query kind.", ["kind"], registry=self.registry
        )
        self.errors = Counter(
            "embedsvc_errors_total", "Error responses by error code.", ["code"], registry=self.registry
        )
        self.jobs_running = Gauge("embedsvc_jobs_running", "Bulk-index jobs running.", registry=self.registry)

    def observe_stage(self, model_key: str, stage: str, seconds: float) -> None:
        self.stage_latency.labels(model=model_key, stage=stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
