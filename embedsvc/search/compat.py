"""Whether a loaded model's query vectors are comparable with an index's stored ones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _weights_identity(weights: Mapping[str, Any] | None) -> tuple[Any, ...]:
    weights = weights or {}
    if not weights.get("trained", False):
        return ("random", weights.get("seed"))
    return ("trained", weights.get("sha256") or weights.get("source"))


def manifest_differences(index_manifest: Mapping[str, Any], embedder_manifest: Mapping[str, Any]) -> list[str]:
    """Fields that make a loaded model's query vectors incomparable with an index's stored ones."""
    diffs = []
    for key in ("model_name", "dim", "normalize", "preprocessing"):
        if key in index_manifest and index_manifest.get(key) != embedder_manifest.get(key):
            diffs.append(f"{key}: index has {index_manifest.get(key)!r}, service has {embedder_manifest.get(key)!r}")
    if "weights" in index_manifest:
        a, b = _weights_identity(index_manifest.get("weights")), _weights_identity(embedder_manifest.get("weights"))
        if a != b:
            diffs.append(
                f"weights: index has {index_manifest['weights'].get('label', a)!r}, "
                f"service has {embedder_manifest['weights'].get('label', b)!r}"
            )
    return diffs
