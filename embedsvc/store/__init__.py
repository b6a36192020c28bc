"""Milvus storage for embeddings: one collection per (index, model), FLAT index, L2 metric.

The public API is re-exported here, so callers import from ``embedsvc.store``. The modules:

* ``milvus``: ``Store`` (and the URI rules), assembled from ``connection`` (client, Lite, the one retry
  policy ``retry_once``), ``catalog`` (names, manifests, collections, counts), ``data`` (upsert, read,
  delete) and ``paging`` (id-ordered pages, random draws); ``search`` is in ``milvus`` itself.
* ``lite``: Milvus Lite ownership: the owner file, lock detection, starting or sharing a ``.db``
  file's embedded server, guest takeover.
* ``rows``: row validation and upsert batching (a search hit is ``embedsvc.results.Neighbour``).
* ``naming``: ``row_id`` and collection names.
* ``errors``: ``StoreError`` and its subclasses, and how pymilvus failures map onto them.
"""

from embedsvc.store.errors import (
    DatabaseInUseError,
    DimensionMismatchError,
    IndexNotFoundError,
    ManifestMismatchError,
    StoreError,
    StoreUnavailableError,
)
from embedsvc.store.milvus import COMPAT_FIELDS, MANIFESTS, MAX_TOPK, SCHEMA_VERSION, Store
from embedsvc.store.naming import row_id
from embedsvc.store.rows import MAX_BATCH_BYTES, MAX_BATCH_ROWS

__all__ = [
    "COMPAT_FIELDS",
    "MANIFESTS",
    "MAX_BATCH_BYTES",
    "MAX_BATCH_ROWS",
    "MAX_TOPK",
    "SCHEMA_VERSION",
    "DatabaseInUseError",
    "DimensionMismatchError",
    "IndexNotFoundError",
    "ManifestMismatchError",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "row_id",
]
