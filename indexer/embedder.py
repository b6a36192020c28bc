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

from embedsvc.core.config import Decoder
from embedsvc.embedder import Embedder
from embedsvc.indexer.reader import ReadBatch
from embedsvc.models.transforms import decode_short_side

__all__ = [
    "ComputeTimer", "decode_device", "decode_short_side_of", "decoder_of", "embed_batch", "model_inputs",
    "transforms_of",
]


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
    """Each model's preprocessing for the read stage, picklable (never the bound model); see ``reader``.

    ``exact``: timm's PIL transform. ``fast``: the tensor transform, run in the worker for a model on the
    CPU, or None for a model on an accelerator, or for any model when images decode on its device
    (``decoder_of``): it preprocesses the shared uint8 image on its device.
    """
    out: dict[str, object] = {}
    on_device = decoder_of(embedders) == "device"
    for key, emb in embedders.items():
        if getattr(emb, "preprocess_path", "exact") == "exact":
            out[key] = getattr(emb, "transform", None) or emb.preprocess
        else:
            out[key] = emb.fast_transform if emb.device.type == "cpu" and not on_device else None
    return out


def decoder_of(embedders: Mapping[str, Embedder]) -> Decoder:
    """Where the run decodes (settings ``decode``, via each embedder): ``device`` only when every model says so."""
    decoders = {getattr(emb, "decoder", "worker") for emb in embedders.values()}
    return "device" if decoders == {"device"} else "worker"


def decode_device(embedders: Mapping[str, Embedder]) -> torch.device:
    """The device images decode on with ``decoder="device"``: the first model's (a run's models share one)."""
    return next(iter(embedders.values())).device


def decode_short_side_of(embedders: Mapping[str, Embedder]) -> int | None:
    """The run's fast decode bound (the largest model's, so one decode serves all); None on the exact path."""
    if all(getattr(emb, "preprocess_path", "exact") == "exact" for emb in embedders.values()):
        return None
    return decode_short_side([emb.data_config for emb in embedders.values()])


def model_inputs(embedders: Mapping[str, Embedder], batch: ReadBatch) -> dict[str, torch.Tensor]:
    """Each model's preprocessed batch: the workers' tensors, plus device-side preprocessing of the shared
    uint8 images for the models that take them (rows without a worker tensor)."""
    out = dict(batch.tensors)
    for key, positions in batch.rows.items():
        if key not in out and positions:
            out[key] = embedders[key].preprocess_uint8([batch.images[p] for p in positions])
    return out


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
