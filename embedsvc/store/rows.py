"""What one row of an (index, model) collection holds, how rows are checked, and how upserts are batched.

A search hit is ``embedsvc.results.Neighbour`` (defined once for the store, search and API)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from embedsvc.store.errors import DimensionMismatchError

#: The one batching policy of writes (``batches`` in the store, ``rows_per_request`` for the indexer's
#: writer): Milvus Lite 2.5.1 slows ~20-40x once one request passes ~4 MB, so stay well under it.
MAX_BATCH_ROWS = 250
MAX_BATCH_BYTES = 3_000_000
#: Bytes a row's scalars take at most in a request, beside the vector (ids, ints, the VARCHARs' usual size).
_SCALAR_BYTES = 512

#: Longest value, in UTF-8 bytes, of each VARCHAR field (also the collection schema's ``max_length``).
MAXLEN = {"rel_path": 4096, "content_hash": 128, "label_name": 512}
#: Scalar fields returned with a row or a search hit (``id`` and ``vector`` are asked for separately).
OUTPUT_FIELDS = ["rel_path", "label_id", "label_name", "width", "height", "content_hash"]


def check_dim(vectors: np.ndarray, dim: int, what: str) -> None:
    if vectors.shape[-1] != dim:
        raise DimensionMismatchError(f"{what} has dimension {vectors.shape[-1]}, the index expects {dim}")


def clean_row(row: dict[str, Any], dim: int) -> dict[str, Any]:
    """``row`` as it is written: typed fields, defaults filled in; ValueError (or DimensionMismatchError) if invalid."""
    vec = np.asarray(row["vector"], dtype=np.float32)
    if vec.ndim != 1:
        raise DimensionMismatchError(f"row {row.get('id')}: vector must be 1-D, got shape {vec.shape}")
    check_dim(vec, dim, f"row {row.get('id')}'s vector")
    if not np.isfinite(vec).all():
        raise ValueError(f"row {row.get('id')}: vector contains NaN or infinity")
    rid = int(row["id"])
    if not 0 <= rid < 2**63:
        raise ValueError(f"row id must be a non-negative int64, got {rid}")
    out = {
        "id": rid,
        "vector": vec,
        "rel_path": str(row["rel_path"]),
        "content_hash": str(row["content_hash"]),
        "label_id": int(row.get("label_id", -1)),
        "label_name": str(row.get("label_name") or ""),
        "width": int(row.get("width", 0)),
        "height": int(row.get("height", 0)),
    }
    for field, limit in MAXLEN.items():
        if len(out[field].encode()) > limit:
            raise ValueError(f"row {rid}: {field} longer than {limit} bytes")
    return out


def row_bytes(dim: int, text_bytes: int = _SCALAR_BYTES) -> int:
    """Request bytes of one row: the float32 vector plus its scalars."""
    return 4 * dim + max(text_bytes, 64)


def rows_per_request(dim: int, max_rows: int = MAX_BATCH_ROWS) -> int:
    """Rows of ``dim``-float32 vectors that fit one upsert request (for callers that buffer rows)."""
    return max(1, min(max_rows, MAX_BATCH_BYTES // row_bytes(dim)))


def batches(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Clean rows in order, in requests of at most ``MAX_BATCH_ROWS`` rows and ``MAX_BATCH_BYTES``."""
    batch: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        size_of_row = row_bytes(len(row["vector"]), 64 + sum(len(row[f]) for f in MAXLEN))
        if batch and (len(batch) >= MAX_BATCH_ROWS or size + size_of_row > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += size_of_row
    if batch:
        yield batch
