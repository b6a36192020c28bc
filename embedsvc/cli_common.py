"""Options shared by every subcommand, and how they override the typed settings."""

from __future__ import annotations

from typing import Annotated

import typer

from embedsvc.core.config import Settings, get_settings

MODELS = Annotated[
    list[str] | None,
    typer.Option("--model", "-m", help="Embedder key (repeatable). Default: the settings' models."),
]
WEIGHTS = Annotated[
    list[str] | None,
    typer.Option("--weights", help="KEY=PATH_OR_URL explicit weights for one model (repeatable)."),
]
ALLOW_RANDOM = Annotated[
    bool,
    typer.Option("--allow-random-weights", help="Use seeded random weights (marked untrained) when none resolve."),
]
DEVICE = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")]
MILVUS_URI = Annotated[str | None, typer.Option("--milvus-uri", help="Milvus Lite file or http://host:19530.")]
DATA_DIR = Annotated[str | None, typer.Option("--data-dir", help="Where the Lite database, reports and caches go.")]


def parse_weights(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise typer.BadParameter(f"--weights expects KEY=PATH_OR_URL, got {item!r}")
        out[key] = value
    return out


def apply_overrides(
    *,
    models: list[str] | None = None,
    weights: list[str] | None = None,
    allow_random: bool = False,
    device: str | None = None,
    milvus_uri: str | None = None,
    data_dir: str | None = None,
) -> Settings:
    """Settings from env/.env with the command line's flags on top (flags win)."""
    base = get_settings()
    update: dict = {}
    if models:
        update["models"] = models
    if weights:
        update["weights"] = base.weights | parse_weights(weights)
    if allow_random:
        update["allow_random_weights"] = True
    if device:
        update["device"] = device
    if milvus_uri:
        update["milvus_uri"] = milvus_uri
    if data_dir:
        update["data_dir"] = data_dir
    return Settings(**(base.model_dump() | update)) if update else base
