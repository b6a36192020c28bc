"""The one place preprocessing is derived: from the model's own timm data config."""

from __future__ import annotations

from typing import Any

from torch import nn


def data_config_for(model: nn.Module, input_size: int | None = None) -> dict[str, Any]:
    """timm's resolved eval data config (input size, interpolation, crop_pct, mean/std), optionally resized."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    if input_size is not None:
        config["input_size"] = (3, input_size, input_size)
    return config


def eval_transform(data_config: dict[str, Any]):
    """PIL image -> normalised tensor, exactly as timm's validate script does it."""
    from timm.data import create_transform

    return create_transform(**data_config, is_training=False)


def describe(data_config: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe preprocessing record stored in manifests."""
    return {
        "input_size": list(data_config["input_size"]),
        "interpolation": data_config["interpolation"],
        "crop_pct": float(data_config["crop_pct"]),
        "crop_mode": data_config.get("crop_mode", "center"),
        "mean": [float(x) for x in data_config["mean"]],
        "std": [float(x) for x in data_config["std"]],
    }
