"""Milvus storage for embeddings: one collection per (index, model), FLAT index, L2 metric.

One code path for both engines: ``pymilvus.MilvusClient(uri=..., token=...)``.

* ``http://host:19530`` (or ``https://``, ``tcp://``, ``unix:``): a Milvus server.
* ``path/to/file.db``: Milvus Lite 2.5.1, embedded.

A ``.db`` file is opened through ``embedsvc.store.lite``, which starts its embedded server or shares
the one another process started (see there for the owner file and guest takeover).

Manifests (what produced the vectors: model, weights, dim, preprocessing...) live in one small
collection, ``embedsvc_manifests``, keyed by collection name with the manifest as JSON. That works the
same on Lite 2.5.1 and server 2.3.5 (2.3.5 cannot update a collection's description).

Distances: ``search`` returns what Milvus returns for the L2 metric, the *squared* Euclidean distance
(smaller is closer). No square root is taken.

Listing rows (``list_rows``, ``sample_rows``) is in ascending id order. Milvus merges a query with a
``limit`` by primary key across segments (measured on Lite 2.5.1 and server 2.3.5; pymilvus'
``query_iterator`` relies on the same), but refuses ``offset + limit > 16384`` on both engines. Deeper
pages are reached by seeking: ``id > last`` with ``offset=16383, limit=1`` jumps 16,384 rows per call
without transferring them, so any offset works at one extra call per 16,384 rows skipped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlparse

import numpy as np

from embedsvc.manifest import (
    IDENTITY_FIELDS,
    SCHEMA_VERSION,
    VECTOR_FIELDS,
    Manifest,
    incompatibilities,
    incompatible_fields,
)
from embedsvc.results import Neighbour
from embedsvc.store import naming
from embedsvc.store.errors import (
    DimensionMismatchError,
    DiskFullError,
    IndexNotFoundError,
    ManifestMismatchError,
    StoreError,
    StoreUnavailableError,
    error_message,
    is_not_found,
    is_unavailable,
)
from embedsvc.store.lite import (
    check_lite_path,
    describe_owner,
    ensure_free_space,
    failed_for_lack_of_space,
    open_lite,
    owner_gone,
    release_lite,
)
from embedsvc.store.rows import MAXLEN, OUTPUT_FIELDS, batches, check_dim, clean_row

if TYPE_CHECKING:
    from embedsvc.core.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

MANIFESTS = "embedsvc_manifests"
#: Fields that must match between an existing index and new vectors (the rule: ``embedsvc.manifest``).
COMPAT_FIELDS = VECTOR_FIELDS

MAX_TOPK = 16384  # Milvus' limit for k and for offset + limit
#: Largest offset + limit of one query (both engines refuse more); ``list_rows`` pages past it by id.
_QUERY_WINDOW = MAX_TOPK
_ITER_BATCH = 1000
_ID_CHUNK = 1000  # ids per get/delete request, keeps filter expressions small
_REMOTE_SCHEMES = ("http", "https", "tcp", "grpc", "unix")


class Store:
    """Embeddings of one or more indexes, each with one collection per model.

    Thread-safe (one gRPC channel; reconnection is locked). Use as a context manager or call
    ``close()``: for Milvus Lite the owning Store's ``close()`` stops the embedded server.
    """

    def __init__(
        self,
        uri: str,
        token: str = "",
        *,
        owner: str = "embedsvc",
        share_lite: bool = True,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        lite_wait: float = 10.0,
    ) -> None:
        """Connect now (errors surface here, not on first use).

        ``timeout`` bounds every call (pymilvus otherwise retries an unreachable server for minutes);
        ``connect_timeout`` bounds the initial connection; ``lite_wait`` is how long to wait for a
        locked Lite file to get a shareable owner before raising ``DatabaseInUseError``.
        """
        if not uri:
            raise StoreError("empty Milvus URI")
        self.uri = uri
        self.token = token
        self.owner = owner
        self.share_lite = share_lite
        self.timeout = max(1, math.ceil(timeout))  # pymilvus bounds its retry loop only for int timeouts
        self.connect_timeout = connect_timeout
        self.lite_wait = lite_wait
        scheme = urlparse(uri).scheme.lower()
        self.is_lite = scheme not in _REMOTE_SCHEMES
        self.lite_role: Literal["owner", "guest"] | None = None
        self._db: Path | None = None
        self._owner_info: dict[str, Any] | None = None
        self._conn_lock = threading.RLock()
        self._client: Any = None
        self._closed = False
        self._manifests_ready = False
        self._manifest_cache: dict[str, dict[str, Any]] = {}
        self._loaded: set[str] = set()
        if self.is_lite:
            self._db = check_lite_path(uri)
        self._connect()

    @classmethod
    def from_settings(cls, settings: Settings | None = None, owner: str = "embedsvc") -> Store:
        """The store the settings describe: ``MILVUS_URI``, else a Lite file under ``data_dir``, with
        the settings' call and connect timeouts."""
        from embedsvc.core.config import get_settings

        settings = settings or get_settings()
        return cls(
            settings.resolved_milvus_uri,
            settings.milvus_token,
            owner=owner,
            timeout=settings.milvus_timeout_s,
            connect_timeout=settings.milvus_connect_timeout_s,
        )

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        role = f", lite_role={self.lite_role}" if self.is_lite else ""
        return f"Store(uri={self.uri!r}{role})"

    # -- connection -----------------------------------------------------------------------------
    def _connect(self) -> None:
        from embedsvc.store.pymilvus_import import import_pymilvus

        import_pymilvus()  # first import with MILVUS_URI hidden: pymilvus would reject a Lite path in it
        from pymilvus import MilvusClient

        grpc_uri = self.uri
        if self._db is not None:
            grpc_uri, self.lite_role, self._owner_info = open_lite(
                self._db, self.owner, self.share_lite, self.lite_wait
            )
        try:
            # A private alias: pymilvus otherwise shares one connection per URI, and close() of one
            # client would cut off every other Store in this process.
            self._client = MilvusClient(
                uri=grpc_uri,
                token=self.token,
                timeout=self.connect_timeout,
                alias=f"embedsvc-{os.getpid()}-{id(self)}-{time.monotonic_ns()}",
            )
        except Exception as exc:
            self._drop_lite_ref()
            if self.is_lite and self.lite_role == "guest":
                raise StoreUnavailableError(
                    f"cannot reach the Milvus Lite server of {self.uri} shared by "
                    f"{describe_owner(self._owner_info or {})} at {grpc_uri}: {error_message(exc)}"
                ) from exc
            raise StoreUnavailableError(f"cannot connect to Milvus at {self.uri}: {error_message(exc)}") from exc

    def _drop_lite_ref(self) -> None:
        if self._db is not None and self.lite_role == "owner":
            release_lite(self._db)
        self.lite_role = None

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        self._drop_lite_ref()

    def _owner_gone(self) -> bool:
        info = self._owner_info
        if self.lite_role != "guest" or not info:
            return False
        return owner_gone(info)

    def _reconnect(self) -> None:
        log.info("Milvus Lite owner of %s went away; reconnecting", self.uri)
        self._disconnect()
        self._connect()
        self._loaded.clear()

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one pymilvus call, mapping failures to StoreError subclasses.

        A Lite guest whose owner went away reconnects (joining a new owner or becoming one) and
        retries once; every operation here is idempotent, so a retry is safe.
        """
        if self._closed:
            raise StoreError(f"Store for {self.uri} is closed")
        kwargs.setdefault("timeout", self.timeout)
        for attempt in (0, 1):
            with self._conn_lock:
                if self._owner_gone():
                    self._reconnect()
                client = self._client
            try:
                return fn(client, *args, **kwargs)
            except StoreError:
                raise
            except Exception as exc:
                if self._db is not None and failed_for_lack_of_space(self._db, exc):
                    raise DiskFullError(self._db.parent, what, log_detail=error_message(exc)) from exc
                if is_not_found(exc):
                    self._manifest_cache.clear()  # dropped behind our back: forget what we knew
                    self._loaded.clear()
                    raise IndexNotFoundError(f"{what}: {error_message(exc)}") from exc
                if is_unavailable(exc):
                    if attempt == 0 and self.lite_role == "guest":
                        with self._conn_lock:
                            if self._client is client:
                                self._reconnect()
                        continue
                    raise StoreUnavailableError(
                        f"Milvus at {self.uri} unavailable ({what}): {error_message(exc)}"
                    ) from exc
                raise StoreError(f"{what} failed: {error_message(exc)}") from exc
        raise AssertionError("unreachable")

    def ping(self) -> None:
        """Raise StoreUnavailableError unless Milvus answers."""
        self._call("ping", lambda c, **kw: c.list_collections(**kw), timeout=min(self.timeout, 10))

    def close(self) -> None:
        """Idempotent. For the Lite owner this stops the embedded server once no Store uses it."""
        with self._conn_lock:
            if self._closed:
                return
            self._closed = True
            self._disconnect()

    # -- names and manifests --------------------------------------------------------------------
    def collection_name(self, index: str, model_key: str) -> str:
        """A valid, unique Milvus name: readable slugs plus a hash of the exact (index, model_key)."""
        return naming.collection_name(index, model_key)

    def _ensure_manifest_collection(self) -> None:
        if self._manifests_ready:
            return
        from pymilvus import DataType, MilvusClient

        def create(c: MilvusClient, **kw: Any) -> None:
            if c.has_collection(MANIFESTS, **kw):
                return
            schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("name", DataType.VARCHAR, is_primary=True, max_length=255)
            schema.add_field("index_name", DataType.VARCHAR, max_length=2048)
            schema.add_field("model_key", DataType.VARCHAR, max_length=2048)
            schema.add_field("manifest", DataType.VARCHAR, max_length=65535)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus requires one vector field
            params = c.prepare_index_params()
            params.add_index("vector", index_type="FLAT", metric_type="L2")
            c.create_collection(MANIFESTS, schema=schema, index_params=params, consistency_level="Strong", **kw)

        self._call("creating the manifest collection", create)
        self._ensure_loaded(MANIFESTS)
        self._manifests_ready = True

    def _ensure_loaded(self, name: str) -> None:
        if name in self._loaded:
            return

        def load(c: Any, **kw: Any) -> None:
            state = c.get_load_state(name, **kw).get("state")
            if "Loaded" not in str(state):
                c.load_collection(name, **kw)

        self._call(f"loading {name}", load)
        self._loaded.add(name)

    def _put_manifest(self, name: str, manifest: dict[str, Any]) -> None:
        text = json.dumps(manifest, sort_keys=True, default=str)
        if len(text.encode()) > 65535:
            raise StoreError(f"manifest of {name} is too large ({len(text.encode())} bytes > 65535)")
        row = {
            "name": name,
            "index_name": manifest["index"],
            "model_key": manifest["model_key"],
            "manifest": text,
            "vector": [0.0, 0.0],
        }
        self._call(f"saving the manifest of {name}", lambda c, **kw: c.upsert(MANIFESTS, [row], **kw))
        self._manifest_cache[name] = json.loads(text)

    def _all_manifests(self) -> list[dict[str, Any]]:
        self._ensure_manifest_collection()
        rows = self._call(
            "listing manifests",
            lambda c, **kw: c.query(MANIFESTS, filter='name != ""', output_fields=["manifest"], limit=MAX_TOPK, **kw),
        )
        return [json.loads(r["manifest"]) for r in rows]

    def get_manifest(self, index: str, model_key: str) -> dict[str, Any] | None:
        """The stored manifest of (index, model_key), or None if there is no such index."""
        name = self.collection_name(index, model_key)
        self._ensure_manifest_collection()
        rows = self._call(
            f"reading the manifest of {name}",
            lambda c, **kw: c.query(MANIFESTS, filter=f'name == "{name}"', output_fields=["manifest"], **kw),
        )
        if not rows:
            self._manifest_cache.pop(name, None)
            return None
        manifest: dict[str, Any] = json.loads(rows[0]["manifest"])
        self._manifest_cache[name] = manifest
        return dict(manifest)

    def _manifest(self, index: str, model_key: str) -> tuple[str, dict[str, Any]]:
        """(collection name, manifest), cached; IndexNotFoundError when the index does not exist."""
        name = self.collection_name(index, model_key)
        manifest = self._manifest_cache.get(name) or self.get_manifest(index, model_key)
        if manifest is None:
            known = ", ".join(f"{i}/{m}" for i, ms in self._index_keys().items() for m in ms) or "none"
            raise IndexNotFoundError(f"no index {index!r} for model {model_key!r} (existing: {known})")
        self._ensure_loaded(name)
        return name, manifest

    def _index_keys(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for m in self._all_manifests():
            out.setdefault(m["index"], []).append(m["model_key"])
        return out

    def ensure_collection(self, index: str, model_key: str, manifest: dict[str, Any]) -> None:
        """Create the (index, model) collection for ``manifest["dim"]``-d vectors, or check it matches.

        An existing index keeps its vectors only if ``embedsvc.manifest.incompatibilities`` finds nothing;
        otherwise ``ManifestMismatchError`` names each differing field (vectors of different models,
        weights or preprocessing must never be mixed in one index).
        """
        naming.check_index_name(index)  # a new collection needs a valid name (it also names report paths)
        dim = manifest.get("dim")
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 32768:
            raise ValueError(f"manifest['dim'] must be an int in 1..32768, got {dim!r}")
        name = self.collection_name(index, model_key)
        new = Manifest.of(json.loads(json.dumps(dict(manifest), default=str))).to_dict()  # stored (JSON) form
        stored = self.get_manifest(index, model_key)
        if stored is not None:
            problems = incompatibilities(stored, new)
            if problems:
                raise ManifestMismatchError(
                    f"index {index!r} model {model_key!r} holds vectors made differently ({'; '.join(problems)}). "
                    "Use a new index name, or drop this index and re-index.",
                    incompatible_fields(problems),
                )
        self._create_collection(name, dim)
        if stored is None:
            now = naming.now_iso()
            full = {**new, "index": index, "model_key": model_key, "collection": name}
            full.update(schema_version=SCHEMA_VERSION, created_at=now, updated_at=now)
            self._put_manifest(name, full)

    def _create_collection(self, name: str, dim: int) -> None:
        from pymilvus import DataType

        def create(c: Any, **kw: Any) -> None:
            if c.has_collection(name, **kw):
                fields = c.describe_collection(name, **kw)["fields"]
                have = next((f["params"].get("dim") for f in fields if f["name"] == "vector"), None)
                if have is not None and int(have) != dim:
                    raise ManifestMismatchError(
                        f"collection {name} exists with dim {have}, manifest says {dim}", ["dim"]
                    )
                return
            schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            schema.add_field("rel_path", DataType.VARCHAR, max_length=MAXLEN["rel_path"])
            schema.add_field("content_hash", DataType.VARCHAR, max_length=MAXLEN["content_hash"])
            schema.add_field("label_id", DataType.INT64)
            schema.add_field("label_name", DataType.VARCHAR, max_length=MAXLEN["label_name"])
            schema.add_field("width", DataType.INT64)
            schema.add_field("height", DataType.INT64)
            params = c.prepare_index_params()
            params.add_index("vector", index_type="FLAT", metric_type="L2")
            c.create_collection(name, schema=schema, index_params=params, consistency_level="Strong", **kw)
            log.info("Created collection %s (dim %d, FLAT/L2)", name, dim)

        self._call(f"creating {name}", create)
        self._ensure_loaded(name)

    def update_manifest(self, index: str, model_key: str, **fields: Any) -> None:
        """Merge ``fields`` (e.g. row_count, updated_at) into the manifest; compat fields are frozen."""
        frozen = sorted(set(fields) & {*VECTOR_FIELDS, *IDENTITY_FIELDS})
        if frozen:
            raise ValueError(f"cannot change {', '.join(frozen)} of an existing index; re-index instead")
        name, _ = self._manifest(index, model_key)
        current = self.get_manifest(index, model_key) or {}
        given = Manifest.of(json.loads(json.dumps(fields, default=str))).to_dict()
        merged = Manifest.of({**current, **given})
        if "updated_at" not in given:
            merged.updated_at = naming.now_iso()
        self._put_manifest(name, merged.to_dict())

    def list_indexes(self) -> dict[str, dict[str, dict[str, Any]]]:
        """index -> model_key -> manifest, each with ``live_row_count`` counted now."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for manifest in sorted(self._all_manifests(), key=lambda m: (m["index"], m["model_key"])):
            try:
                live = self.count(manifest["index"], manifest["model_key"])
            except IndexNotFoundError:
                live = 0  # manifest without collection (interrupted drop): report it empty
            out.setdefault(manifest["index"], {})[manifest["model_key"]] = {**manifest, "live_row_count": live}
        return out

    def models_of(self, index: str) -> list[str]:
        return sorted(self._index_keys().get(index, []))

    def drop_index(self, index: str) -> None:
        """Drop every model's collection of ``index`` and its manifests."""
        manifests = [m for m in self._all_manifests() if m["index"] == index]
        if not manifests:
            raise IndexNotFoundError(f"no index {index!r}")
        for m in manifests:
            name = m["collection"]
            self._call(f"dropping {name}", lambda c, n=name, **kw: c.drop_collection(n, **kw))
            self._call(
                f"deleting the manifest of {name}",
                lambda c, n=name, **kw: c.delete(MANIFESTS, filter=f'name == "{n}"', **kw),
            )
            self._manifest_cache.pop(name, None)
            self._loaded.discard(name)
            log.info("Dropped %s (index %r, model %r)", name, index, m["model_key"])

    # -- rows -----------------------------------------------------------------------------------
    def upsert(self, index: str, model_key: str, rows: list[dict[str, Any]]) -> None:
        """Insert or replace rows by id (plain insert would duplicate ids on a server).

        Keys: id, vector (float32 1-D, length = manifest dim), rel_path, content_hash, label_id
        (-1 unknown), label_name ("" unknown), width, height. Sent in batches of at most 250 rows and
        ~3.5 MB. All rows are validated before anything is written.
        """
        if not rows:
            return
        name, manifest = self._manifest(index, model_key)
        clean = [clean_row(r, int(manifest["dim"])) for r in rows]
        ids = [r["id"] for r in clean]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids within one upsert call")
        for batch in batches(clean):
            if self._db is not None:  # Lite acknowledges writes it cannot store: check the room first
                ensure_free_space(self._db, 2 * len(batch) * (4 * int(manifest["dim"]) + 1024), f"writing {name}")
            self._call(f"upserting into {name}", lambda c, b=batch, **kw: c.upsert(name, b, **kw))
            if self._db is not None:  # ...and after: less than the margin left, the write may not have landed
                ensure_free_space(self._db, 0, f"writing {name}")

    def _iterate(self, name: str, output_fields: list[str], batch_size: int = _ITER_BATCH) -> Iterator[dict[str, Any]]:
        it = self._call(
            f"reading {name}",
            lambda c, **kw: c.query_iterator(name, batch_size=batch_size, filter="", output_fields=output_fields, **kw),
        )
        try:
            while True:
                page = self._call(f"reading {name}", lambda c, **kw: it.next())
                if not page:
                    break
                yield from page
        finally:
            with contextlib.suppress(Exception):
                it.close()

    def existing(self, index: str, model_key: str) -> dict[int, str]:
        """id -> content_hash of every row (lets the indexer skip unchanged images)."""
        name, _ = self._manifest(index, model_key)
        return {int(r["id"]): str(r["content_hash"]) for r in self._iterate(name, ["content_hash"])}

    def existing_rows(self, index: str, model_key: str) -> dict[int, tuple[str, int, str]]:
        """id -> (content_hash, label_id, label_name) of every row (the indexer skips files where all match)."""
        name, _ = self._manifest(index, model_key)
        return {
            int(r["id"]): (str(r["content_hash"]), int(r["label_id"]), str(r["label_name"]))
            for r in self._iterate(name, ["content_hash", "label_id", "label_name"])
        }

    def delete(self, index: str, model_key: str, ids: Sequence[int]) -> None:
        name, _ = self._manifest(index, model_key)
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start : start + _ID_CHUNK]
            self._call(f"deleting from {name}", lambda c, ch=chunk, **kw: c.delete(name, ids=ch, **kw))

    def get_rows(
        self, index: str, model_key: str, ids: Sequence[int], with_vectors: bool = False
    ) -> list[dict[str, Any]]:
        """Rows for ``ids`` in the order asked (missing ids are left out); vectors as float32 arrays."""
        name, _ = self._manifest(index, model_key)
        fields = ["id", *OUTPUT_FIELDS] + (["vector"] if with_vectors else [])
        wanted = [int(i) for i in ids]
        found: dict[int, dict[str, Any]] = {}
        for start in range(0, len(wanted), _ID_CHUNK):
            chunk = wanted[start : start + _ID_CHUNK]
            got = self._call(
                f"reading {name}", lambda c, ch=chunk, **kw: c.get(name, ids=ch, output_fields=fields, **kw)
            )
            for r in got:
                row = {k: r[k] for k in fields if k in r}
                if with_vectors:
                    row["vector"] = np.asarray(r["vector"], dtype=np.float32)
                found[int(r["id"])] = row
        return [found[i] for i in wanted if i in found]

    # -- listing in id order ----------------------------------------------------------------------
    @staticmethod
    def _label_filter(label_id: int | None) -> str:
        return "" if label_id is None else f"label_id == {int(label_id)}"

    @staticmethod
    def _after(expr: str, after: int | None) -> str:
        """``expr`` restricted to ids greater than ``after`` (None: from the start)."""
        parts = [p for p in (expr, "" if after is None else f"id > {int(after)}") if p]
        return " and ".join(parts)

    def _query(self, name: str, expr: str, fields: list[str], offset: int, limit: int) -> list[dict[str, Any]]:
        """One query of at most ``limit`` rows after skipping ``offset``, in id order (offset + limit <= window)."""
        rows = self._call(
            f"listing {name}",
            lambda c, **kw: c.query(name, filter=expr, output_fields=fields, offset=offset, limit=limit, **kw),
        )
        return sorted(rows, key=lambda r: int(r["id"]))

    def _seek(self, name: str, expr: str, after: int | None, n: int) -> int | None:
        """Id of the ``n``-th row (1-based) after id ``after`` in id order, or None when fewer rows follow.

        Jumps at most one query window per call and transfers one id per call.
        """
        while n > 0:
            step = min(n, _QUERY_WINDOW)
            got = self._query(name, self._after(expr, after), ["id"], step - 1, 1)
            if not got:
                return None
            after = int(got[0]["id"])
            n -= step
        return after

    def list_rows(
        self, index: str, model_key: str, *, offset: int = 0, limit: int = 50, label_id: int | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """(rows ``offset .. offset+limit-1`` in ascending id order, number of matching rows).

        Rows carry id, rel_path, label_id, label_name, width, height and content_hash (no vectors).
        ``label_id`` keeps only rows with that label. Pages are consistent while the index does not
        change; rows added or deleted between two calls shift the later pages. Any offset works: past
        Milvus' query window (offset + limit <= 16384) the store seeks by id first.
        """
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if not 1 <= limit <= _QUERY_WINDOW:
            raise ValueError(f"limit must be in 1..{_QUERY_WINDOW}, got {limit}")
        name, _ = self._manifest(index, model_key)
        expr = self._label_filter(label_id)
        fields = ["id", *OUTPUT_FIELDS]
        total = self._count(name, expr)
        if offset >= total:
            return [], total
        if offset + limit <= _QUERY_WINDOW:
            return self._query(name, expr, fields, offset, limit), total
        after = self._seek(name, expr, None, offset)  # id of row offset-1; the page starts after it
        if after is None:
            return [], total
        return self._query(name, self._after(expr, after), fields, 0, limit), total

    def sample_rows(
        self, index: str, model_key: str, count: int, *, seed: int | None = None, label_id: int | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """(up to ``count`` distinct random rows in the order drawn, number of matching rows).

        Rows carry the fields of ``list_rows``. Positions in id order are drawn uniformly without
        replacement, so the same ``seed`` on an unchanged index gives the same rows; ``seed=None``
        draws from the OS' entropy. Only ids travel until the drawn rows are fetched.
        """
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        name, _ = self._manifest(index, model_key)
        expr = self._label_filter(label_id)
        total = self._count(name, expr)
        rng = random.Random(seed) if seed is not None else random.SystemRandom()
        positions = rng.sample(range(total), min(count, total))
        id_at: dict[int, int] = {}
        if positions and max(positions) < _QUERY_WINDOW:  # one query for the ids up to the last drawn
            head = [int(r["id"]) for r in self._query(name, expr, ["id"], 0, max(positions) + 1)]
            id_at = {p: head[p] for p in positions if p < len(head)}
        else:
            after, at = None, -1  # ``after`` is the id at position ``at``
            for pos in sorted(positions):
                found = self._seek(name, expr, after, pos - at)
                if found is None:
                    break  # rows deleted since counting: fewer rows than drawn
                after, at = found, pos
                id_at[pos] = found
        ids = [id_at[p] for p in positions if p in id_at]
        return self.get_rows(index, model_key, ids), total

    def search(
        self,
        index: str,
        model_key: str,
        vectors: np.ndarray,
        k: int,
        *,
        label_id: int | None = None,
        exclude_ids: Sequence[int] = (),
    ) -> list[list[Neighbour]]:
        """Exact (FLAT) nearest neighbours for each query vector, closest first.

        ``vectors``: (d,) or (n, d); one list of ranked ``Neighbour``s per query (label -1 reads None).
        ``distance`` is the squared L2 distance as Milvus returns it.
        ``label_id`` keeps only rows with that label; ``exclude_ids`` drops those rows (e.g. the query
        image itself) before the top ``k`` are taken.
        """
        if not 1 <= k <= MAX_TOPK:
            raise ValueError(f"k must be in 1..{MAX_TOPK}, got {k}")
        name, manifest = self._manifest(index, model_key)
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[0] == 0:
            raise DimensionMismatchError(f"query vectors must have shape (d,) or (n, d), got {queries.shape}")
        check_dim(queries, int(manifest["dim"]), "query vector")
        if not np.isfinite(queries).all():
            raise ValueError("query vectors contain NaN or infinity")
        filters = []
        if label_id is not None:
            filters.append(f"label_id == {int(label_id)}")
        if len(exclude_ids):
            filters.append(f"id not in [{', '.join(str(int(i)) for i in exclude_ids)}]")
        results = self._call(
            f"searching {name}",
            lambda c, **kw: c.search(
                name,
                data=list(queries),
                limit=k,
                filter=" and ".join(filters),
                output_fields=OUTPUT_FIELDS,
                search_params={"metric_type": "L2", "params": {}},
                **kw,
            ),
        )
        return [
            [
                Neighbour(
                    rank=rank,
                    id=int(h["id"]),
                    distance=float(h["distance"]),
                    rel_path=str(h["entity"]["rel_path"]),
                    label_id=Neighbour.known_label(h["entity"]["label_id"]),
                    label_name=str(h["entity"]["label_name"]) or None,
                    width=int(h["entity"]["width"]),
                    height=int(h["entity"]["height"]),
                    content_hash=str(h["entity"]["content_hash"]),
                )
                for rank, h in enumerate(hits, start=1)
            ]
            for hits in results
        ]

    def fetch_all(self, index: str, model_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids int64 (n,), vectors float32 (n, d), label_ids int64 (n,)), sorted by id, for evaluation."""
        name, manifest = self._manifest(index, model_key)
        dim = int(manifest["dim"])
        ids, vecs, labels = [], [], []
        batch = max(1, min(_ITER_BATCH, 4_000_000 // (4 * dim)))
        for r in self._iterate(name, ["vector", "label_id"], batch_size=batch):
            ids.append(int(r["id"]))
            vecs.append(np.asarray(r["vector"], dtype=np.float32))
            labels.append(int(r["label_id"]))
        id_arr = np.asarray(ids, dtype=np.int64)
        order = np.argsort(id_arr, kind="stable")
        vec_arr = np.stack(vecs) if vecs else np.zeros((0, dim), dtype=np.float32)
        return id_arr[order], vec_arr[order], np.asarray(labels, dtype=np.int64)[order]

    def count(self, index: str, model_key: str, *, label_id: int | None = None) -> int:
        """Live rows (deleted ones excluded), only those with ``label_id`` when given."""
        name, _ = self._manifest(index, model_key)
        return self._count(name, self._label_filter(label_id))

    def _count(self, name: str, expr: str) -> int:
        res = self._call(
            f"counting {name}", lambda c, **kw: c.query(name, filter=expr, output_fields=["count(*)"], **kw)
        )
        return int(res[0]["count(*)"])

    def flush(self, index: str, model_key: str) -> None:
        """Seal the growing segment to disk (not needed for visibility: collections are Strong)."""
        name, _ = self._manifest(index, model_key)
        self._call(f"flushing {name}", lambda c, **kw: c.flush(name, **kw))
