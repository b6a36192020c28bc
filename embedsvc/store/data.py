"""Row data of one (index, model) collection: upsert (batched by ``rows.batches``), read back, delete."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from embedsvc.store.catalog import Catalog
from embedsvc.store.lite import (
    ensure_free_space,
)
from embedsvc.store.rows import OUTPUT_FIELDS, batches, clean_row

log = logging.getLogger(__name__)

_ITER_BATCH = 1000
_ID_CHUNK = 1000  # ids per get/delete request, keeps filter expressions small


class RowData(Catalog):
    """Writing and reading rows by id."""

    # -- rows -----------------------------------------------------------------------------------
    def upsert(self, index: str, model_key: str, rows: list[dict[str, Any]]) -> None:
        """Insert or replace rows by id (plain insert would duplicate ids on a server).

        Keys: id, vector (float32 1-D, length = manifest dim), rel_path, content_hash, label_id
        (-1 unknown), label_name ("" unknown), width, height. Sent in requests of ``rows.batches`` (the one batching
        policy: at most 250 rows and ~3 MB). All rows are validated before anything is written.
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
        if self._db is not None and ids:  # a delete is a write too (Lite retries it on a full disk)
            ensure_free_space(self._db, 64 * len(ids), f"deleting from {name}")
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
