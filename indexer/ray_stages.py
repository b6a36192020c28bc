"""The Ray engine's stages as plain functions and classes: what runs on the cluster, and the columns between them.

Nothing here decides policy: reading a file (entry policy, hash, the resume decision, decode, each
model's preprocessing) is the reader's one per-file function (``ImageReadDataset``), loading a model is
``load_embedder``, whether the actor's vectors match the index is ``incompatibilities``. This module only
moves their inputs and outputs through Ray Data blocks.

Columns (one row per planned file; the plan's ``position`` names the file on the driver):

- plan (driver -> read tasks): ``position``, ``path`` (the name's raw bytes: Arrow strings cannot hold the
  lone surrogates of non-UTF-8 names), ``id``, ``known:<model>`` (the content hash a file may keep, or "").
- read (-> model pools): ``content_hash``, ``width``, ``height``, ``error_reason``, ``error_detail``,
  ``read_s``, ``image`` (the fast path's shared uint8 decode, for models that preprocess on their device, or
  empty), and per model ``need:<model>`` and ``input:<model>`` (the worker's preprocessed tensor or empty;
  tensors as ``.npy`` bytes).
- model ``<m>`` (-> the driver's sink): drops ``input:<m>``, adds ``vector:<m>`` (float32 bytes),
  ``forward_s:<m>`` (this row's share of its batch's forward seconds) and ``precision:<m>`` (the actor's).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from embedsvc.core.config import Settings
from embedsvc.embedder import load_embedder
from embedsvc.indexer.plan import IndexerError, RunPlan
from embedsvc.indexer.reader import UINT8, ImageReadDataset, ModelTransform, ReadResult
from embedsvc.manifest import incompatibilities

Batch = dict[str, np.ndarray]


def col(kind: str, key: str) -> str:
    """A per-model column: ``need:convnext_tiny``, ``input:...``, ``vector:...``, ``forward_s:...``."""
    return f"{kind}:{key}"


# ------------------------------------------------------------------------------------------------ plan
def plan_blocks(plan: RunPlan, rows_per_block: int) -> list[pa.Table]:
    """The plan as Arrow tables of ``rows_per_block`` rows: one Ray block each, so read tasks run in parallel."""
    table = pa.table(
        {
            "position": pa.array(range(len(plan.items)), pa.int64()),
            "path": pa.array([os.fsencode(it.rel_path) for it in plan.items], pa.binary()),
            "id": pa.array(plan.ids, pa.int64()),
            **{
                col("known", key): pa.array([plan.reusable[key].get(i, "") for i in plan.ids], pa.string())
                for key in plan.keys
            },
        }
    )
    step = max(1, rows_per_block)
    return [table.slice(start, step) for start in range(0, max(1, table.num_rows), step)]


# ------------------------------------------------------------------------------------------------ read
def read_files(
    root: Path,
    rel_paths: Sequence[str],
    ids: Sequence[int],
    transforms: Mapping[str, ModelTransform],
    known: Mapping[str, Mapping[int, str]],
    max_pixels: int,
    decode_short_side: int | None,
) -> list[tuple[ReadResult, dict[str, torch.Tensor], float]]:
    """The local engine's per-file read (``ImageReadDataset[i]``) for each file, with its seconds.

    The one place the Ray engine calls the reader, so both engines read, hash, refuse, decode and
    preprocess each file identically.
    """
    dataset = ImageReadDataset(
        root, rel_paths, ids, transforms, known, max_pixels=max_pixels, decode_short_side=decode_short_side
    )
    out = []
    for i in range(len(dataset)):
        start = time.perf_counter()
        result, tensors = dataset[i]
        out.append((result, tensors, time.perf_counter() - start))
    return out


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, tensor.numpy(), allow_pickle=False)
    return buf.getvalue()


def _tensor_of(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _text(value: str) -> str:
    """Arrow strings must be UTF-8: a detail naming a non-UTF-8 file keeps its bytes backslash-escaped, as the
    failures report writes it anyway."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def read_stage(
    batch: Batch, *, root: str, keys: Sequence[str], transforms: Mapping[str, ModelTransform], max_pixels: int,
    decode_short_side: int | None,
) -> Batch:
    """Ray Data ``map_batches`` function (CPU tasks): plan rows in, read rows out (see the module docstring)."""
    paths = [os.fsdecode(bytes(p)) for p in batch["path"]]
    ids = [int(i) for i in batch["id"]]
    known = {key: {i: str(h) for i, h in zip(ids, batch[col("known", key)], strict=True) if h} for key in keys}
    read = read_files(Path(root), paths, ids, transforms, known, max_pixels, decode_short_side)
    out: dict[str, Any] = {
        "position": np.asarray(batch["position"], dtype=np.int64),
        "content_hash": np.array([r.content_hash for r, _, _ in read], dtype=object),
        "width": np.array([r.width for r, _, _ in read], dtype=np.int64),
        "height": np.array([r.height for r, _, _ in read], dtype=np.int64),
        "error_reason": np.array([_text(r.error[0]) if r.error else "" for r, _, _ in read], dtype=object),
        "error_detail": np.array([_text(r.error[1]) if r.error else "" for r, _, _ in read], dtype=object),
        "read_s": np.array([s for _, _, s in read], dtype=np.float64),
        "image": np.array(
            [_tensor_bytes(t[UINT8]) if r.error is None and UINT8 in t else b"" for r, t, _ in read], dtype=object
        ),
    }
    for key in keys:
        need = [r.error is None and key in r.needed and (key in t or UINT8 in t) for r, t, _ in read]
        out[col("need", key)] = np.array(need, dtype=bool)
        out[col("input", key)] = np.array(
            [_tensor_bytes(t[key]) if n and key in t else b"" for (_, t, _), n in zip(read, need, strict=True)],
            dtype=object,
        )
    return out


# ------------------------------------------------------------------------------------------------ models
class EmbedActor:
    """One model's actor (a Ray Data ``map_batches`` callable class): weights loaded once, then batches.

    The actor loads its model with the driver's settings and refuses to run when its weights, dimension
    or preprocessing differ from what the driver recorded in the index (another file on this node, say):
    vectors in one index must be comparable.
    """

    def __init__(
        self, key: str, settings: Settings, device: str, manifest: Mapping[str, Any], manifest_kwargs: Mapping[str, Any]
    ) -> None:
        self.key = key
        self.embedder = load_embedder(key, settings=settings, device=device)
        problems = incompatibilities(manifest, self.embedder.manifest(**manifest_kwargs))
        if problems:
            raise IndexerError(
                f"the {key} actor on {os.uname().nodename} loaded a model that differs from the driver's "
                f"({'; '.join(problems)}): every worker needs the same weights"
            )

    def __call__(self, batch: Batch) -> Batch:
        key = self.key
        need = np.asarray(batch[col("need", key)], dtype=bool)
        vectors = np.full(len(need), b"", dtype=object)
        seconds = np.zeros(len(need), dtype=np.float64)
        rows = np.flatnonzero(need)
        if len(rows):
            start = time.perf_counter()
            out = np.ascontiguousarray(self.embedder.embed(self._inputs(batch, rows)), dtype=np.float32)
            seconds[rows] = (time.perf_counter() - start) / len(rows)
            for row, vector in zip(rows, out, strict=True):
                vectors[row] = vector.tobytes()
        result = {name: values for name, values in batch.items() if name != col("input", key)}
        result[col("vector", key)] = vectors
        result[col("forward_s", key)] = seconds
        result[col("precision", key)] = np.full(len(need), str(self.embedder.precision), dtype=object)
        return result

    def _inputs(self, batch: Batch, rows: np.ndarray) -> torch.Tensor:
        """The worker's preprocessed tensors, or (fast path, model on its device) the shared uint8 decodes
        preprocessed here, as ``model_inputs`` does in the local engine."""
        cells = batch[col("input", self.key)]
        if all(len(cells[i]) for i in rows):
            return torch.from_numpy(np.stack([_tensor_of(bytes(cells[i])) for i in rows]))
        images = [torch.from_numpy(_tensor_of(bytes(batch["image"][i]))) for i in rows]
        return self.embedder.preprocess_uint8(images)


def vector_of(data: Any) -> np.ndarray:
    """A ``vector:<model>`` cell back to its float32 vector."""
    return np.frombuffer(bytes(data), dtype=np.float32)
