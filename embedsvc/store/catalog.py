"""The catalog: collection names, the manifests collection, creating, listing, counting and dropping an
index's collections. Whether new vectors may join an index is ``embedsvc.manifest.incompatibilities``."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from embedsvc.manifest import (
    IDENTITY_FIELDS,
    SCHEMA_VERSION,
    VECTOR_FIELDS,
    Manifest,
    incompatibilities,
    incompatible_fields,
)
from embedsvc.store import naming
from embedsvc.store.connection import Connection
from embedsvc.store.errors import (
    IndexNotFoundError,
    ManifestMismatchError,
    StoreError,
)
from embedsvc.store.lite import ensure_free_space
from embedsvc.store.rows import MAXLEN

log = logging.getLogger(__name__)

MANIFESTS = "embedsvc_manifests"
MAX_TOPK = 16384  # Milvus limit for k, for a query limit and for offset + limit
#: Fields that must match between an existing index and new vectors (the rule: ``embedsvc.manifest``).
COMPAT_FIELDS = VECTOR_FIELDS
#: How long a new collection's FLAT index may take to be ready (it has no rows: on Lite and a server it is at once).
INDEX_READY_TIMEOUT_S = 60.0


def create_flat_collection(c: Any, name: str, schema: Any, **kw: Any) -> None:
    """Create ``name`` with a FLAT/L2 index on ``vector``; return once the index is ready."""
    c.create_collection(name, schema=schema, consistency_level="Strong", **kw)
    ensure_flat_index(c, name, **kw)


def ensure_flat_index(c: Any, name: str, **kw: Any) -> None:
    """Give ``name`` its FLAT/L2 ``vector`` index unless it has one (a run killed between creating a collection
    and its index left it without), and wait until the index is ready.

    pymilvus's own wait (``create_collection(index_params=...)``) sleeps 0.5 s before its first look, which was
    1.5 s of every three-model index run's start; this polls from 5 ms.
    """
    if not c.list_indexes(name, field_name="vector", **kw):
        params = c.prepare_index_params()
        params.add_index("vector", index_type="FLAT", metric_type="L2")
        c.create_index(name, params, sync=False, **kw)
    delay, deadline = 0.005, time.monotonic() + INDEX_READY_TIMEOUT_S
    while (state := c.describe_index(name, "vector", **kw).get("state")) != "Finished":
        if state == "Failed" or time.monotonic() > deadline:
            raise StoreError(f"the vector index of {name} is not ready (state {state})")
        time.sleep(delay)
        delay = min(2 * delay, 0.5)


class Catalog(Connection):
    """Collections and their manifests."""

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
                ensure_flat_index(c, MANIFESTS, **kw)
                return
            schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("name", DataType.VARCHAR, is_primary=True, max_length=255)
            schema.add_field("index_name", DataType.VARCHAR, max_length=2048)
            schema.add_field("model_key", DataType.VARCHAR, max_length=2048)
            schema.add_field("manifest", DataType.VARCHAR, max_length=65535)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus requires one vector field
            create_flat_collection(c, MANIFESTS, schema, **kw)

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
        if self._db is not None:  # Lite retries a write on a full disk until the timeout: check the room first
            ensure_free_space(self._db, 4 * len(text), f"saving the manifest of {name}")
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
                ensure_flat_index(c, name, **kw)
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
            create_flat_collection(c, name, schema, **kw)
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
