"""Listing rows in id order: pages at any offset (seeking by id past Milvus' query window) and seeded
random draws."""

from __future__ import annotations

import logging
import random
from typing import Any

from embedsvc.store.catalog import MAX_TOPK
from embedsvc.store.data import RowData
from embedsvc.store.rows import OUTPUT_FIELDS

log = logging.getLogger(__name__)

#: Largest offset + limit of one query (both engines refuse more); ``list_rows`` pages past it by id.
_QUERY_WINDOW = MAX_TOPK


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
