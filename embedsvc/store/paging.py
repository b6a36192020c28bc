"""Listing rows in id order: pages at any offset (seeking by id past Milvus' query window) and seeded
random draws, of one model or the same rows of several (``sample_aligned``, for per-model maps)."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedsvc.store.catalog import MAX_TOPK
from embedsvc.store.data import RowData
from embedsvc.store.rows import OUTPUT_FIELDS, rows_per_request

log = logging.getLogger(__name__)

#: Largest offset + limit of one query (both engines refuse more); ``list_rows`` pages past it by id.
_QUERY_WINDOW = MAX_TOPK
#: Ids per call when a draw reads every id of a collection instead of seeking once per drawn row.
_ID_PAGE = 10_000
#: At most this many rows per read of vectors (fewer for wide vectors: ``rows_per_request`` caps the bytes).
_VECTOR_READ_ROWS = 1000


@dataclass
class AlignedSample:
    """Rows drawn once and read from every model: ``vectors[model][i]`` belongs to ``rows[i]``."""

    rows: list[dict[str, Any]]
    vectors: dict[str, np.ndarray]
    total: int  # rows the ids were drawn from


class Paging(RowData):
    """Rows in ascending id order."""

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

    def _draw_ids(self, name: str, expr: str, count: int, seed: int | None) -> tuple[list[int], int]:
        """(ids of up to ``count`` distinct rows drawn at random, in the order drawn; rows matching ``expr``).

        Positions in id order are drawn uniformly without replacement, so the same ``seed`` on an
        unchanged index draws the same ids; ``seed=None`` draws from the OS' entropy. Whatever the
        number drawn, the cheapest path reads the ids: one query when every position lies in the first
        query window, every id once when a seek per draw would take more calls, else a seek per draw.
        """
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        total = self._count(name, expr)
        rng = random.Random(seed) if seed is not None else random.SystemRandom()
        positions = rng.sample(range(total), min(count, total))
        id_at: dict[int, int] = {}
        if positions and max(positions) < _QUERY_WINDOW:  # one query for the ids up to the last drawn
            head = [int(r["id"]) for r in self._query(name, expr, ["id"], 0, max(positions) + 1)]
            id_at = {p: head[p] for p in positions if p < len(head)}
        elif not expr and len(positions) * _ID_PAGE > total:  # many draws: every id in total / _ID_PAGE calls
            every = sorted(int(r["id"]) for r in self._iterate(name, ["id"], batch_size=_ID_PAGE))
            id_at = {p: every[p] for p in positions if p < len(every)}
        else:
            after, at = None, -1  # ``after`` is the id at position ``at``
            for pos in sorted(positions):
                found = self._seek(name, expr, after, pos - at)
                if found is None:
                    break  # rows deleted since counting: fewer rows than drawn
                after, at = found, pos
                id_at[pos] = found
        return [id_at[p] for p in positions if p in id_at], total

    def sample_rows(
        self, index: str, model_key: str, count: int, *, seed: int | None = None, label_id: int | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """(up to ``count`` distinct random rows in the order drawn, number of matching rows).

        Rows carry the fields of ``list_rows``. Positions in id order are drawn uniformly without
        replacement, so the same ``seed`` on an unchanged index gives the same rows; ``seed=None``
        draws from the OS' entropy. Only ids travel until the drawn rows are fetched.
        """
        name, _ = self._manifest(index, model_key)
        ids, total = self._draw_ids(name, self._label_filter(label_id), count, seed)
        return self.get_rows(index, model_key, ids), total

    def sample_aligned(
        self, index: str, model_keys: Sequence[str], count: int, *, seed: int | None = None
    ) -> AlignedSample:
        """The same seeded random rows of every model in ``model_keys``, with each model's vectors.

        Ids are drawn (as ``sample_rows`` draws them) from the model with the fewest rows, so that a
        half-indexed model does not thin the sample; ids some other model lacks are left out. The
        rows (fields of ``list_rows``) are the first model's, in the order drawn, and every model's
        vectors are in that same order, so point i is the same image in every model.
        """
        keys = list(model_keys)
        if not keys:
            raise ValueError("sample_aligned needs at least one model")
        names = {key: self._manifest(index, key)[0] for key in keys}
        counts = {key: self._count(names[key], "") for key in keys}
        smallest = min(keys, key=lambda k: counts[k])
        ids, total = self._draw_ids(names[smallest], "", count, seed)
        fetched = {key: self._rows_with_vectors(index, key, ids) for key in keys}
        kept = [i for i in ids if all(i in fetched[key] for key in keys)]
        if len(kept) < len(ids):
            log.warning(
                "%s: %d of %d drawn rows are missing in some model; left out", index, len(ids) - len(kept), len(ids)
            )
        rows = [{k: v for k, v in fetched[keys[0]][i].items() if k != "vector"} for i in kept]
        vectors = {}
        for key in keys:
            dim = int(self._manifest(index, key)[1]["dim"])
            stacked = [fetched[key][i]["vector"] for i in kept]
            vectors[key] = np.stack(stacked) if stacked else np.zeros((0, dim), dtype=np.float32)
        return AlignedSample(rows=rows, vectors=vectors, total=total)

    def _rows_with_vectors(self, index: str, model_key: str, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """id -> row with its vector, read in requests of the one request-size policy (``rows_per_request``).

        Milvus Lite 2.5.1 answers one 1,000-row read of 2,048-d vectors (8 MB) in ~40 s and the same
        rows in 250-row reads in under a second (as with writes over ~4 MB), so reads of vectors are
        sized like upserts.
        """
        dim = int(self._manifest(index, model_key)[1]["dim"])
        step = rows_per_request(dim, max_rows=_VECTOR_READ_ROWS)
        out: dict[int, dict[str, Any]] = {}
        for start in range(0, len(ids), step):
            for row in self.get_rows(index, model_key, ids[start : start + step], with_vectors=True):
                out[int(row["id"])] = row
        return out
