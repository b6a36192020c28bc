"""Stable ids and names of what the store writes: row ids, collection names, timestamps."""

from __future__ import annotations

import datetime as _dt
import hashlib
import re


def row_id(index: str, rel_path: str) -> int:
    """Stable positive int64 for an image: blake2b-64 of ``index`` NUL ``rel_path``, top bit cleared.

    Stable across processes and runs (unlike ``hash()``), so re-indexing upserts the same rows.
    Callers should pass ``rel_path`` in one canonical form (POSIX separators, relative to the root).
    """
    digest = hashlib.blake2b(f"{index}\0{rel_path}".encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF
    return value or 1


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_")[:limit] or "x"


def collection_name(index: str, model_key: str) -> str:
    """A valid, unique Milvus name: readable slugs plus a hash of the exact (index, model_key)."""
    for label, value in (("index", index), ("model_key", model_key)):
        if not isinstance(value, str) or not value or len(value) > 512 or "\0" in value:
            raise ValueError(f"{label} must be a non-empty string of at most 512 characters, got {value!r}")
    digest = hashlib.blake2b(f"{index}\0{model_key}".encode(), digest_size=4).hexdigest()
    return f"es_{_slug(index, 80)}__{_slug(model_key, 80)}_{digest}"


def now_iso() -> str:
    """Now in UTC, to the second (owner files' ``started_at``, manifests' ``created_at``/``updated_at``)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
