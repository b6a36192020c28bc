"""`embedsvc serve`: run the search API with uvicorn.

One worker on purpose: every worker would load its own copy of every model (GPU memory, CPU caches),
and a Milvus Lite file can be owned by one process only. Concurrency comes from the threadpool; the
models serialise their own forward passes.
"""

from __future__ import annotations

import enum
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from embedsvc.cli_common import (
    ALLOW_RANDOM,
    COMPILE,
    DATA_DIR,
    DEVICE,
    MILVUS_URI,
    MODELS,
    PRECISION,
    PREPROCESS,
    WEIGHTS,
    apply_overrides,
    check_port_free,
)
from embedsvc.core.config import Settings

log = logging.getLogger(__name__)


class LogLevel(enum.StrEnum):
    """uvicorn's log levels (anything else would fail deep inside uvicorn)."""

    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"


def serve_settings(
    *,
    host: str | None = None,
    port: int | None = None,
    models: list[str] | None = None,
    weights: list[str] | None = None,
    allow_random: bool = False,
    device: str | None = None,
    milvus_uri: str | None = None,
    data_dir: str | None = None,
    allowed_roots: list[Path] | None = None,
    cors_origins: list[str] | None = None,
    input_size: int | None = None,
    preprocess: str | None = None,
    precision: str | None = None,
    compile: bool | None = None,
) -> Settings:
    """Settings from env/.env with this command's flags on top."""
    base = apply_overrides(
        models=models,
        weights=weights,
        allow_random=allow_random,
        device=device,
        milvus_uri=milvus_uri,
        data_dir=data_dir,
        preprocess=preprocess,
        precision=precision,
        compile=compile,
    )
    update: dict = {}
    if host:
        update["host"] = host
    if port:
        update["port"] = port
    if allowed_roots:
        update["allowed_roots"] = [p.expanduser().resolve() for p in allowed_roots]
    if cors_origins:
        update["cors_origins"] = cors_origins
    if input_size:
        update["input_size"] = input_size
    return Settings(**(base.model_dump() | update)) if update else base


def set_torch_threads(threads: int) -> None:
    """0: torch's default (one per physical core). Forwards are serialised, so more never helps."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    log.info(
        "torch uses %d intra-op threads (%d CPUs available)", torch.get_num_threads(), len(os.sched_getaffinity(0))
    )


def register(app: typer.Typer) -> None:
    """Add `embedsvc serve` to the `embedsvc` app."""

    @app.command("serve")
    def serve(
        host: Annotated[str | None, typer.Option("--host", help="Bind address (default: settings, 127.0.0.1).")] = None,
        port: Annotated[
            int | None, typer.Option("--port", min=1, max=65535, help="Port (default: settings, 8000).")
        ] = None,
        milvus_uri: MILVUS_URI = None,
        data_dir: DATA_DIR = None,
        models: MODELS = None,
        weights: WEIGHTS = None,
        device: DEVICE = None,
        allow_random_weights: ALLOW_RANDOM = False,
        allowed_root: Annotated[
            list[Path] | None,
            typer.Option(
                "--allowed-root",
                exists=True,
                file_okay=False,
                help="Folder the API may bulk-index (repeatable). None: jobs disabled.",
            ),
        ] = None,
        cors_origin: Annotated[
            list[str] | None,
            typer.Option("--cors-origin", help="Origin allowed to call the API from a browser (repeatable)."),
        ] = None,
        input_size: Annotated[
            int | None, typer.Option("--input-size", min=16, help="Override every model's input size (tests, demos).")
        ] = None,
        torch_threads: Annotated[
            int, typer.Option("--torch-threads", help="Intra-op threads for CPU forwards; 0: torch's default.")
        ] = 0,
        log_level: Annotated[LogLevel, typer.Option("--log-level", help="uvicorn log level.")] = LogLevel.info,
        preprocess: PREPROCESS = None,  # of index jobs' vectors; a query follows its index's recorded path
        precision: PRECISION = None,
        compile_model: COMPILE = None,
    ) -> None:
        """Serve the search API (POST /search, /images, /indexes, /models, /health, /ready, /metrics)."""
        import uvicorn

        from embedsvc.main import create_app

        settings = serve_settings(
            host=host,
            port=port,
            models=models,
            weights=weights,
            allow_random=allow_random_weights,
            device=device,
            milvus_uri=milvus_uri,
            data_dir=data_dir,
            allowed_roots=allowed_root,
            cors_origins=cors_origin,
            input_size=input_size,
            preprocess=preprocess,
            precision=precision,
            compile=compile_model,
        )
        check_port_free(settings.host, settings.port, "--port N (or EMBEDSVC_PORT=N)")
        set_torch_threads(torch_threads)
        log.info(
            "serving on http://%s:%d with models %s (Milvus: %s)",
            settings.host,
            settings.port,
            ", ".join(settings.model_keys()),
            settings.resolved_milvus_uri,
        )
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            workers=1,
            log_level=log_level.value,
            proxy_headers=False,
            server_header=False,
        )
