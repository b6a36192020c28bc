"""Stable ids and names of what the store writes: index names, row ids, collection names, timestamps.

Index names become file and folder names (failure reports, thumbnails, collection names), so they
follow one pattern, ``INDEX_NAME_PATTERN``: a letter or digit, then up to 63 letters, digits, ``_``
or ``-``. That keeps every existing name (``photos``, ``imagenet-val``, ``my_photos``) and rules out
``..``, ``/``, spaces and empty names. ``check_index_name`` is the function and ``IndexName`` the
pydantic/FastAPI type; both refuse with ``BadIndexNameError`` (422 ``bad_index_name``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from embedsvc.core.errors import EmbedsvcError

INDEX_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
INDEX_NAME_MAX = 64
_INDEX_NAME = re.compile(INDEX_NAME_PATTERN)


class BadIndexNameError(EmbedsvcError, ValueError):
    """An index name outside ``INDEX_NAME_PATTERN`` (it would build a path or a collection name)."""

    code = "bad_index_name"
    http_status = 422


def check_index_name(name: Any) -> str:
    """``name`` itself when it matches ``INDEX_NAME_PATTERN``; ``BadIndexNameError`` otherwise.

    Called wherever a name becomes a path or a collection, before anything is written.
    """
    if not isinstance(name, str) or not _INDEX_NAME.fullmatch(name):
        shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else repr(name[:80]) + "..."
        raise BadIndexNameError(
            f"index name {shown} is not allowed: use 1-{INDEX_NAME_MAX} letters, digits, '_' or '-', "
            "starting with a letter or digit (e.g. my-photos)"
        )
    return name


# A str that is a valid index name: usable as a FastAPI path/query parameter or a pydantic field. The
# Field constraints put the pattern into the OpenAPI schema; the validator is the same check as above.
IndexName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=INDEX_NAME_MAX,
        pattern=INDEX_NAME_PATTERN,
        description="Index name: 1-64 letters, digits, '_' or '-', starting with a letter or digit.",
    ),
    AfterValidator(check_index_name),
]


def row_id(index: str, rel_path: str) -> int:
    """Stable positive int64 for an image: blake2b-64 of ``index`` NUL the raw bytes of ``rel_path``, top bit cleared.

    Stable across processes and runs (unlike ``hash()``), so re-indexing upserts the same rows.
    Callers should pass ``rel_path`` in one canonical form (POSIX separators, relative to the root), as
    the name is on disk: bytes that are not UTF-8 as lone surrogates (what ``os.walk``/``os.fsdecode``
    give). Those are hashed as the original bytes (``os.fsencode``), so a name that is valid UTF-8
    hashes exactly as it always did and existing indexes keep their ids.
    """
    raw = index.encode() + b"\0" + rel_path.encode("utf-8", "surrogateescape")
    digest = hashlib.blake2b(raw, digest_size=8).digest()
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
