"""The search core: one query image through every model of an index, without HTTP.

Decode once, then per model: its own preprocessing, a forward pass, and a store search; timings per
stage, and the overlap (Jaccard@k) of the models' neighbour sets. "More like this" queries reuse the
stored vector of an indexed image for each model instead of re-embedding it.

The HTTP layer (``embedsvc.api``) only translates parameters and errors; everything that decides
what a result is lives here so the CLI, benchmarks and tests can call it directly.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from embedsvc.core.config import Settings
from embedsvc.core.errors import CodedError
from embedsvc.embedder import Embedder
from embedsvc.images import ImageDecodeError, decode_image
from embedsvc.store import IndexNotFoundError, Store, StoreError, StoreUnavailableError

log = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "forward", "search")


# --------------------------------------------------------------------------------------------------
# Errors (HTTP status mapping lives in embedsvc.api.errors)
# --------------------------------------------------------------------------------------------------


class SearchError(CodedError):
    """A query the service cannot answer."""

    code = "bad_query"


class UnknownModelError(SearchError):
    code = "unknown_model"


class ModelNotLoadedError(SearchError):
    code = "model_not_loaded"


class QueryNotFoundError(SearchError):
    code = "unknown_id"


class IncompatibleModelError(SearchError):
    """The loaded model would produce vectors not comparable with the index's (409)."""

    code = "manifest_mismatch"


class NoSearchableModelError(SearchError):
    code = "no_searchable_model"


class BadQueryError(SearchError):
    code = "bad_query"


class UnknownLabelError(SearchError):
    code = "unknown_label"


# --------------------------------------------------------------------------------------------------
# Store connection that heals itself
# --------------------------------------------------------------------------------------------------


class StoreHolder:
    """Owns the service's Store and reconnects after Milvus went away.

    A client whose server died is never cached forever: an unavailable error drops it, the call is
    retried once on a fresh connection, and if that fails too the caller gets the error (503).
    """

    def __init__(self, factory: Callable[[], Store], *, retry_after_s: float = 2.0) -> None:
        self._factory = factory
        self._store: Store | None = None
        self._lock = threading.Lock()
        self.retry_after_s = retry_after_s
        self._failed_at = -float("inf")
        self._last_error: StoreUnavailableError | None = None

    def get(self) -> Store:
        """The live store, connecting if needed. While Milvus is down, connection attempts are spaced
        ``retry_after_s`` apart and calls in between fail fast with the last error (no pile-up of
        threads each waiting out a connect timeout)."""
        store = self._store
        if store is not None:
            return store
        with self._lock:
            if self._store is None:
                if self._last_error is not None and time.monotonic() - self._failed_at < self.retry_after_s:
                    raise StoreUnavailableError(str(self._last_error))
                try:
                    self._store = self._factory()
                except StoreError as exc:
                    self._failed_at = time.monotonic()
                    self._last_error = (
                        exc if isinstance(exc, StoreUnavailableError) else StoreUnavailableError(str(exc))
                    )
                    raise self._last_error from exc
                self._last_error = None
                log.info("connected to Milvus (%r)", self._store)
            return self._store

    def invalidate(self, store: Store | None = None, *, reason: str = "Milvus unavailable") -> None:
        """Drop (and close) the current store so that the next call connects afresh."""
        with self._lock:
            if self._store is None or (store is not None and store is not self._store):
                return
            old, self._store = self._store, None
        with contextlib.suppress(Exception):
            old.close()
        if reason:
            log.warning("dropped the Milvus connection (%s); the next call reconnects", reason)

    def call(self, fn: Callable[[Store], Any]) -> Any:
        """Run ``fn(store)``; on StoreUnavailableError reconnect and retry once."""
        for attempt in (1, 2):
            try:
                store = self.get()
            except StoreUnavailableError:
                if attempt == 2:
                    raise
                continue
            try:
                return fn(store)
            except StoreUnavailableError:
                self.invalidate(store)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.invalidate(reason="")


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass
class Neighbour:
    rank: int
    id: int
    rel_path: str
    label_id: int | None
    label_name: str | None
    distance: float
    width: int | None
    height: int | None
    same_label_as_query: bool | None


@dataclass
class ModelOutcome:
    model_key: str
    display_name: str
    model_name: str
    dim: int
    provenance: dict[str, Any]
    timings_ms: dict[str, float]
    neighbours: list[Neighbour]

    @property
    def untrained(self) -> bool:
        return not bool(self.provenance.get("trained", False))


@dataclass
class Query:
    kind: str  # upload | base64 | id
    width: int | None = None
    height: int | None = None
    format: str | None = None
    bytes: int | None = None
    id: int | None = None
    rel_path: str | None = None
    label_id: int | None = None
    label_name: str | None = None


@dataclass
class SearchOutcome:
    index: str
    k: int
    label_filter: int | None
    query: Query
    models: list[ModelOutcome]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    decode_ms: float = 0.0
    total_ms: float = 0.0

    def overlap(self) -> list[tuple[str, str, float, int]]:
        """Jaccard@k of neighbour id sets for every pair of models, in model order."""
        out = []
        for a, b in itertools.combinations(self.models, 2):
            sa, sb = {n.id for n in a.neighbours}, {n.id for n in b.neighbours}
            union = sa | sb
            shared = len(sa & sb)
            out.append((a.model_key, b.model_key, shared / len(union) if union else 1.0, shared))
        return out


@dataclass
class RowListing:
    """Indexed images read from one model's collection of an index (a page, or a random draw)."""

    index: str
    model_key: str
    label_filter: int | None
    rows: list[dict[str, Any]]
    total: int  # rows matching the label filter in that collection


class StageObserver(Protocol):
    def __call__(self, model_key: str, stage: str, seconds: float) -> None: ...


# --------------------------------------------------------------------------------------------------
# Manifest compatibility
# --------------------------------------------------------------------------------------------------


def _weights_identity(weights: Mapping[str, Any] | None) -> tuple[Any, ...]:
    weights = weights or {}
    if not weights.get("trained", False):
        return ("random", weights.get("seed"))
    return ("trained", weights.get("sha256") or weights.get("source"))


def manifest_differences(index_manifest: Mapping[str, Any], embedder_manifest: Mapping[str, Any]) -> list[str]:
    """Fields that make a loaded model's query vectors incomparable with an index's stored ones."""
    diffs = []
    for key in ("model_name", "dim", "normalize", "preprocessing"):
        if key in index_manifest and index_manifest.get(key) != embedder_manifest.get(key):
            diffs.append(f"{key}: index has {index_manifest.get(key)!r}, service has {embedder_manifest.get(key)!r}")
    if "weights" in index_manifest:
        a, b = _weights_identity(index_manifest.get("weights")), _weights_identity(embedder_manifest.get("weights"))
        if a != b:
            diffs.append(
                f"weights: index has {index_manifest['weights'].get('label', a)!r}, "
                f"service has {embedder_manifest['weights'].get('label', b)!r}"
            )
    return diffs


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if (sa | sb) else 1.0


# --------------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------------


def parse_model_list(values: Sequence[str] | None) -> list[str] | None:
    """``?models=a,b&models=c`` -> [a, b, c] (order kept, duplicates and blanks dropped)."""
    if not values:
        return None
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out or None


class SearchEngine:
    """Runs queries against a Store with the loaded embedders. Thread-safe.

    On CPU every forward pass goes through one process-wide gate: a forward already uses every core,
    so two at once only thrash the caches. On GPUs only the embedders' own per-model locks apply.
    """

    def __init__(
        self,
        *,
        store: StoreHolder,
        embedders: Mapping[str, Embedder],
        settings: Settings,
        observer: StageObserver | None = None,
    ) -> None:
        self.store = store
        self.embedders = dict(embedders)
        self.settings = settings
        self.observer = observer
        on_cpu = all(e.device.type == "cpu" for e in self.embedders.values())
        self.gate: threading.Lock | None = threading.Lock() if on_cpu else None

    # -- helpers -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _timed(self, timings: dict[str, float], model_key: str, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            timings[f"{stage}_ms"] = timings.get(f"{stage}_ms", 0.0) + seconds * 1000.0
            if self.observer is not None:
                self.observer(model_key, stage, seconds)

    def forward(self, embedder: Embedder, batch: torch.Tensor) -> np.ndarray:
        if self.gate is None:
            return embedder.embed(batch)
        with self.gate:
            return embedder.embed(batch)

    def check_k(self, k: int) -> None:
        if not 1 <= k <= self.settings.max_k:
            raise BadQueryError(f"k must be between 1 and {self.settings.max_k}, got {k}")

    def index_manifests(self, index: str) -> dict[str, dict[str, Any]]:
        """{model_key: manifest} of one index; IndexNotFoundError when it does not exist."""

        def fetch(store: Store) -> dict[str, dict[str, Any]]:
            out = {}
            for mk in store.models_of(index):
                manifest = store.get_manifest(index, mk)
                if manifest is not None:
                    out[mk] = dict(manifest)
            return out

        manifests = self.store.call(fetch)
        if not manifests:
            raise IndexNotFoundError(f"no index {index!r}")
        return manifests

    @staticmethod
    def resolve_label(index: str, manifests: Mapping[str, Mapping[str, Any]], label: int | str | None) -> int | None:
        """A label filter given as an id ("3") or a name ("bird") -> the index's label id."""
        if label is None or label == "":
            return None
        if isinstance(label, int):
            return label
        text = label.strip()
        if re.fullmatch(r"-?[0-9]+", text):  # ASCII digits only: str.isdigit() accepts "²"
            value = int(text)
            if not 0 <= value < 2**63:
                raise UnknownLabelError(f"label id {value} is out of range")
            return value
        for manifest in manifests.values():
            names = manifest.get("label_names") or []
            if text in names:
                return names.index(text)
        raise UnknownLabelError(f"index {index!r} has no label named {text!r}")

    def select_models(
        self,
        index: str,
        manifests: Mapping[str, Mapping[str, Any]],
        requested: Sequence[str] | None,
        *,
        need_loaded: bool,
    ) -> tuple[list[str], list[tuple[str, str]]]:
        """The models to run, in request (or index) order, plus the index models skipped and why."""
        skipped: list[tuple[str, str]] = []
        if requested:
            chosen = []
            for name in requested:
                key = self._canonical_key(name, manifests)
                if key not in manifests:
                    raise UnknownModelError(
                        f"model {name!r} is not in index {index!r} (it has: {', '.join(sorted(manifests)) or 'none'})"
                    )
                if need_loaded and key not in self.embedders:
                    raise ModelNotLoadedError(
                        f"model {key!r} is not loaded by this service (loaded: {', '.join(self.embedders) or 'none'})"
                    )
                if key not in chosen:
                    chosen.append(key)
            return chosen, skipped
        chosen = []
        # The service's configured model order first (stable columns in the UI), then the rest.
        ordered = [k for k in self.embedders if k in manifests]
        ordered += sorted(k for k in manifests if k not in self.embedders)
        for key in ordered:
            if need_loaded and key not in self.embedders:
                skipped.append((key, "model not loaded by this service"))
            else:
                chosen.append(key)
        if not chosen:
            raise NoSearchableModelError(
                f"index {index!r} has no model this service has loaded "
                f"(index: {', '.join(manifests) or 'none'}; loaded: {', '.join(self.embedders) or 'none'})"
            )
        return chosen, skipped

    def _canonical_key(self, name: str, manifests: Mapping[str, Any]) -> str:
        if name in manifests:
            return name
        from embedsvc.models.registry import get_spec

        try:
            return get_spec(name).key
        except KeyError:
            return name

    def check_compatible(self, index: str, model_key: str, manifest: Mapping[str, Any]) -> None:
        diffs = manifest_differences(manifest, self.embedders[model_key].manifest())
        if diffs:
            raise IncompatibleModelError(
                f"model {model_key!r} as loaded cannot query index {index!r}: " + "; ".join(diffs)
            )

    def _outcome(
        self,
        model_key: str,
        manifest: Mapping[str, Any],
        hits: Sequence[Any],
        timings: dict[str, float],
        query_label: int | None,
    ) -> ModelOutcome:
        neighbours = [
            Neighbour(
                rank=rank,
                id=int(h.id),
                rel_path=str(h.rel_path),
                label_id=None if h.label_id is None or h.label_id < 0 else int(h.label_id),
                label_name=h.label_name or None,
                distance=float(h.distance),
                width=getattr(h, "width", None),
                height=getattr(h, "height", None),
                same_label_as_query=None if query_label is None else int(h.label_id) == query_label,
            )
            for rank, h in enumerate(hits, start=1)
        ]
        timings["total_ms"] = sum(v for k, v in timings.items() if k != "total_ms")
        embedder = self.embedders.get(model_key)
        weights = dict(manifest.get("weights") or (embedder.provenance.to_dict() if embedder else {}))
        return ModelOutcome(
            model_key=model_key,
            display_name=str(manifest.get("display_name") or (embedder.spec.display_name if embedder else model_key)),
            model_name=str(manifest.get("model_name") or (embedder.spec.model_name if embedder else model_key)),
            dim=int(manifest.get("dim") or (embedder.dim if embedder else 0)),
            provenance=weights,
            timings_ms=timings,
            neighbours=neighbours,
        )

    # -- listing -----------------------------------------------------------------------------------

    def listing_model(self, index: str, manifests: Mapping[str, Mapping[str, Any]]) -> str:
        """The model whose collection lists the index's images: the one holding the most rows (the
        first in manifest order on a tie), so an image indexed by only some models is still listed."""
        keys = list(manifests)
        if len(keys) == 1:
            return keys[0]
        counts = self.store.call(lambda s: [s.count(index, key) for key in keys])
        return keys[max(range(len(keys)), key=lambda i: (counts[i], -i))]

    def list_images(
        self, index: str, *, offset: int = 0, limit: int = 50, label: int | str | None = None
    ) -> RowListing:
        """One page of the index's images in id order; ``label`` (id or name) filters like a search's."""
        manifests = self.index_manifests(index)
        label_id = self.resolve_label(index, manifests, label)
        key = self.listing_model(index, manifests)
        rows, total = self.store.call(lambda s: s.list_rows(index, key, offset=offset, limit=limit, label_id=label_id))
        return RowListing(index=index, model_key=key, label_filter=label_id, rows=rows, total=total)

    def random_images(
        self, index: str, *, count: int = 1, seed: int | None = None, label: int | str | None = None
    ) -> RowListing:
        """Up to ``count`` distinct random images of the index; the same ``seed`` draws the same ones
        while the index is unchanged."""
        manifests = self.index_manifests(index)
        label_id = self.resolve_label(index, manifests, label)
        key = self.listing_model(index, manifests)
        rows, total = self.store.call(lambda s: s.sample_rows(index, key, count, seed=seed, label_id=label_id))
        return RowListing(index=index, model_key=key, label_filter=label_id, rows=rows, total=total)

    # -- queries -----------------------------------------------------------------------------------

    def search_image(
        self,
        index: str,
        data: bytes,
        *,
        k: int = 10,
        models: Sequence[str] | None = None,
        label: int | str | None = None,
        kind: str = "upload",
        name: str = "upload",
    ) -> SearchOutcome:
        """Embed an image file's bytes with each model and search the index. Decodes once."""
        t0 = time.perf_counter()
        self.check_k(k)
        if len(data) > self.settings.max_upload_bytes:
            raise ImageDecodeError(
                name, "too_large", f"{len(data):,} bytes exceeds the limit of {self.settings.max_upload_bytes:,}"
            )
        manifests = self.index_manifests(index)
        label_id = self.resolve_label(index, manifests, label)
        chosen, skipped = self.select_models(index, manifests, models, need_loaded=True)
        for key in chosen:
            self.check_compatible(index, key, manifests[key])

        t_dec = time.perf_counter()
        decoded = decode_image(data, name=name, max_pixels=self.settings.max_image_pixels)
        decode_ms = (time.perf_counter() - t_dec) * 1000.0
        if self.observer is not None:
            self.observer("*", "decode", decode_ms / 1000.0)
        query = Query(
            kind=kind, width=decoded.width, height=decoded.height, format=decoded.source_format, bytes=len(data)
        )

        outcomes = []
        for key in chosen:
            embedder = self.embedders[key]
            timings: dict[str, float] = {"decode_ms": decode_ms}
            with self._timed(timings, key, "preprocess"):
                batch = embedder.preprocess(decoded.image).unsqueeze(0)
            with self._timed(timings, key, "forward"):
                vector = self.forward(embedder, batch)
            with self._timed(timings, key, "search"):
                hits = self.store.call(
                    lambda s, key=key, vector=vector: s.search(index, key, vector, k, label_id=label_id)
                )[0]
            outcomes.append(self._outcome(key, manifests[key], hits, timings, None))
        return SearchOutcome(
            index=index,
            k=k,
            label_filter=label_id,
            query=query,
            models=outcomes,
            skipped=skipped,
            decode_ms=decode_ms,
            total_ms=(time.perf_counter() - t0) * 1000.0,
        )

    def search_by_id(
        self,
        index: str,
        row_id: int,
        *,
        k: int = 10,
        models: Sequence[str] | None = None,
        label: int | str | None = None,
    ) -> SearchOutcome:
        """ "More like this": each model searches with its own stored vector of ``row_id``, excluding it."""
        t0 = time.perf_counter()
        self.check_k(k)
        manifests = self.index_manifests(index)
        label_id = self.resolve_label(index, manifests, label)
        chosen, skipped = self.select_models(index, manifests, models, need_loaded=False)
        query: Query | None = None
        outcomes = []
        for key in chosen:
            timings: dict[str, float] = {"decode_ms": 0.0, "preprocess_ms": 0.0, "forward_ms": 0.0}
            with self._timed(timings, key, "search"):
                rows = self.store.call(lambda s, key=key: s.get_rows(index, key, [row_id], with_vectors=True))
                if not rows:
                    raise QueryNotFoundError(f"no image with id {row_id} in index {index!r} (model {key!r})")
                row = rows[0]
                vector = np.asarray(row["vector"], dtype=np.float32).reshape(1, -1)
                hits = self.store.call(
                    lambda s, key=key, vector=vector: s.search(
                        index, key, vector, k, label_id=label_id, exclude_ids=(row_id,)
                    )
                )[0]
            if query is None:
                row_label = row.get("label_id")
                query = Query(
                    kind="id",
                    id=row_id,
                    rel_path=row.get("rel_path"),
                    label_id=None if row_label is None or row_label < 0 else int(row_label),
                    label_name=row.get("label_name") or None,
                    width=row.get("width"),
                    height=row.get("height"),
                )
            outcomes.append(self._outcome(key, manifests[key], hits, timings, query.label_id))
        assert query is not None  # select_models never returns an empty list
        return SearchOutcome(
            index=index,
            k=k,
            label_filter=label_id,
            query=query,
            models=outcomes,
            skipped=skipped,
            total_ms=(time.perf_counter() - t0) * 1000.0,
        )
