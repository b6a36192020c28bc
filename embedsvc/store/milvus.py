"""Milvus storage for embeddings: one collection per (index, model), FLAT index, L2 metric.

``Store`` is built in layers, one module each, so each seam reads alone: ``connection`` (client, Lite,
retries) <- ``catalog`` (names, manifests, collections, counts) <- ``data`` (upsert, read, delete) <-
``paging`` (id-ordered pages, random draws) <- here (``from_settings`` and ``search``).

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

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from embedsvc.manifest import (
    SCHEMA_VERSION,
)
from embedsvc.results import Neighbour
from embedsvc.store.catalog import COMPAT_FIELDS, MANIFESTS, MAX_TOPK
from embedsvc.store.errors import (
    DimensionMismatchError,
)
from embedsvc.store.paging import Paging
from embedsvc.store.rows import OUTPUT_FIELDS, check_dim

if TYPE_CHECKING:
    from embedsvc.core.config import Settings

log = logging.getLogger(__name__)

__all__ = ["COMPAT_FIELDS", "MANIFESTS", "MAX_TOPK", "SCHEMA_VERSION", "Store"]


class Store(Paging):
    """Embeddings of one or more indexes, each with one collection per model.

    Thread-safe (one gRPC channel; reconnection is locked). Use as a context manager or call
    ``close()``: for Milvus Lite the owning Store's ``close()`` stops the embedded server.
    """

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

    # -- search ----------------------------------------------------------------------------------
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
