"""Compute stage: run each selected model on its own preprocessed batch and time it.

Models run one after another in the calling thread, each using every core (CPU) or the GPU on its
own; the reader's workers and the writer thread keep decode and writes off this critical path.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from embedsvc.embedder import Embedder

__all__ = ["ComputeTimer", "embed_batch", "transforms_of"]


@dataclass
class ComputeTimer:
    """Seconds spent in each model's forward pass and rows produced: the per-model images/s."""

    seconds: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, seconds: float, rows: int) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        self.rows[key] = self.rows.get(key, 0) + rows

    def rate(self, key: str) -> float:
        seconds = self.seconds.get(key, 0.0)
        return self.rows.get(key, 0) / seconds if seconds > 0 else 0.0


def transforms_of(embedders: Mapping[str, Embedder]) -> dict[str, object]:
    """Each model's preprocessing as a picklable callable (the timm transform, never the bound model)."""
    return {key: getattr(emb, "transform", None) or emb.preprocess for key, emb in embedders.items()}


def embed_batch(
    embedders: Mapping[str, Embedder], tensors: Mapping[str, torch.Tensor], timer: ComputeTimer | None = None
) -> dict[str, np.ndarray]:
    """``{model: (N_model, 3, H, W)}`` -> ``{model: (N_model, dim) float32}``; models with no rows are skipped."""
    out: dict[str, np.ndarray] = {}
    for key, batch in tensors.items():
        if batch.shape[0] == 0:
            continue
        start = time.perf_counter()
        vectors = embedders[key].embed(batch)
        if timer is not None:
            timer.add(key, time.perf_counter() - start, int(batch.shape[0]))
        out[key] = np.ascontiguousarray(vectors, dtype=np.float32)
    return out
