"""The engine: one query image through every model of an index, without HTTP.

Decode once, then per model: its own preprocessing (on the path its index recorded, see
``Embedder.query_preprocessing``), a forward pass, and a store search; timings per stage, and the overlap
(Jaccard@k) of the models' neighbour sets. "More like this" queries reuse the stored vector of an
indexed image for each model instead of re-embedding it.

The models' store searches run concurrently, each started as soon as its vector exists, so one
model's search overlaps the next model's forward pass: with fast forwards (a GPU) the store, not the
models, is the floor, and the floor is then the slowest search rather than their sum.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from embedsvc.core.config import Settings
from embedsvc.embedder import Embedder
from embedsvc.fusion import FUSE_DEPTH, RRF_K, reciprocal_rank_fusion
from embedsvc.images import ImageDecodeError, decode_image
from embedsvc.manifest import incompatibilities
from embedsvc.results import FUSE_METHODS, FUSED_KEY
from embedsvc.search.errors import (
    IncompatibleModelError,
    KOutOfRangeError,
    ModelNotLoadedError,
    NoSearchableModelError,
    QueryNotFoundError,
    UnknownFusionError,
    UnknownLabelError,
    UnknownModelError,
)
from embedsvc.search.holder import StoreHolder
from embedsvc.search.results import (
    ModelResult,
    Neighbour,
    Provenance,
    QueryInfo,
    RowListing,
    SearchResult,
    SkippedModel,
    StageObserver,
    StageTimings,
    overlap_pairs,
)
from embedsvc.store import IndexNotFoundError, Store

#: Store searches in flight at once across all queries (each model's search of a query is one).
STORE_SEARCH_THREADS = 16


class SearchEngine:
    """Runs queries against a Store with the loaded embedders. Thread-safe.

    Forward passes take turns through the embedders' ``ForwardGate`` (shared with index jobs); the
    wait for a turn is reported as its own stage, ``queue``, so ``forward`` is compute only. Store
    searches do not take turns: they run on ``STORE_SEARCH_THREADS`` threads, concurrently.
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
        self._searches = ThreadPoolExecutor(max_workers=STORE_SEARCH_THREADS, thread_name_prefix="store-search")

    def close(self) -> None:
        """Stop the store-search threads (queries in flight finish first)."""
        self._searches.shutdown(wait=True)

    def _in_background(self, fn: Callable[[], Any]) -> Future[Any]:
        return self._searches.submit(fn)

    # -- helpers -----------------------------------------------------------------------------------

    def _record(self, timings: dict[str, float], model_key: str, stage: str, seconds: float) -> None:
        timings[f"{stage}_ms"] = timings.get(f"{stage}_ms", 0.0) + seconds * 1000.0
        if self.observer is not None:
            self.observer(model_key, stage, seconds)

    @contextlib.contextmanager
    def _timed(self, timings: dict[str, float], model_key: str, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._record(timings, model_key, stage, time.perf_counter() - start)

    def forward(self, embedder: Embedder, batch: torch.Tensor, timings: dict[str, float]) -> np.ndarray:
        """One forward through the gate; the wait is the ``queue`` stage, the compute ``forward``."""
        vectors, queued, computed = embedder.embed_timed(batch)
        self._record(timings, embedder.key, "queue", queued)
        self._record(timings, embedder.key, "forward", computed)
        return vectors

    def check_k(self, k: int) -> None:
        if not 1 <= k <= self.settings.max_k:
            raise KOutOfRangeError(f"k must be between 1 and {self.settings.max_k}, got {k}")

    @staticmethod
    def check_fuse(fuse: str | None) -> None:
        """``fuse`` is None (no fused entry) or one of ``FUSE_METHODS``."""
        if fuse is not None and fuse not in FUSE_METHODS:
            raise UnknownFusionError(f"fuse must be one of {', '.join(FUSE_METHODS)}, got {fuse[:50]!r}")

    def search_depth(self, k: int, fuse: str | None) -> int:
        """How many neighbours each model reads: k, or with fusion max(k, FUSE_DEPTH) capped by max_k."""
        return k if fuse is None else max(k, min(FUSE_DEPTH, self.settings.max_k))

    def _fused(self, outcomes: Sequence[ModelResult], deep: Sequence[Sequence[Neighbour]], k: int) -> ModelResult:
        """The RRF entry (``fused_rrf``): each model's deep ranking fused, the top k by score."""
        t0 = time.perf_counter()
        by_id: dict[int, Neighbour] = {}
        for hits in deep:
            for h in hits:
                by_id.setdefault(h.id, h)
        neighbours: list[Neighbour] = []
        longest = max((len(h) for h in deep), default=0)
        if longest:
            rankings = [np.asarray([[h.id for h in hits]], dtype=np.int64).reshape(1, -1) for hits in deep]
            rows, scores = reciprocal_rank_fusion(rankings, min(k, longest), k=RRF_K)
            neighbours = [
                by_id[int(i)].model_copy(update={"rank": r, "distance": 0.0, "score": float(s)})
                for r, (i, s) in enumerate(zip(rows[0], scores[0], strict=True), start=1)
            ]
        of = ", ".join(m.model_key for m in outcomes)
        trained = all(m.provenance.trained for m in outcomes)
        ms = round((time.perf_counter() - t0) * 1000.0, 3)
        return ModelResult(
            model_key=FUSED_KEY,
            display_name=f"Fused (RRF, k={RRF_K})",
            model_name="rrf",
            dim=0,
            provenance=Provenance(
                label=f"reciprocal rank fusion (k={RRF_K}) of {of}, each read {max(len(h) for h in deep)} deep",
                trained=trained,
                untrained=not trained,
                source=of,
            ),
            untrained=not trained,
            timings=StageTimings(search_ms=ms, total_ms=ms),
            neighbours=neighbours,
        )

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
        # the embedder as it queries this index: on the preprocessing path (and decode) the index recorded
        diffs = incompatibilities(manifest, self.embedders[model_key].query_manifest(manifest))
        if diffs:
            raise IncompatibleModelError(
                f"model {model_key!r} as loaded cannot query index {index!r}: " + "; ".join(diffs)
            )

    def _outcome(
        self,
        model_key: str,
        manifest: Mapping[str, Any],
        hits: Sequence[Neighbour],
        timings: dict[str, float],
        query_label: int | None,
    ) -> ModelResult:
        neighbours = [
            h if query_label is None else h.model_copy(update={"same_label_as_query": h.label_id == query_label})
            for h in hits
        ]
        timings["total_ms"] = sum(v for k, v in timings.items() if k != "total_ms")
        embedder = self.embedders.get(model_key)
        weights = dict(manifest.get("weights") or (embedder.provenance.to_dict() if embedder else {}))
        provenance = Provenance.of(weights)
        return ModelResult(
            model_key=model_key,
            display_name=str(manifest.get("display_name") or (embedder.spec.display_name if embedder else model_key)),
            model_name=str(manifest.get("model_name") or (embedder.spec.model_name if embedder else model_key)),
            dim=int(manifest.get("dim") or (embedder.dim if embedder else 0)),
            provenance=provenance,
            untrained=provenance.untrained,
            timings=StageTimings(**{k: round(v, 3) for k, v in timings.items() if k in StageTimings.model_fields}),
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

    def find_row(self, index: str, row_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """(row, manifest of the model holding it) for an indexed id; QueryNotFoundError when no model has it.

        The one rule for "does this id exist": any of the index's collections holds it (tried in
        manifest order). Every id that ``list_images``/``random_images`` return is held by the listing
        model, so it always resolves here, also when other models lack the row (e.g. a model added later).
        """
        manifests = self.index_manifests(index)

        def lookup(store: Store) -> tuple[dict[str, Any], dict[str, Any]] | None:
            for key, manifest in manifests.items():
                rows = store.get_rows(index, key, [row_id])
                if rows:
                    return rows[0], manifest
            return None

        found = self.store.call(lookup)
        if found is None:
            raise QueryNotFoundError(f"no image with id {row_id} in index {index!r}")
        return found

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

    def _plan(
        self,
        index: str,
        k: int,
        label: int | str | None,
        models: Sequence[str] | None,
        *,
        need_loaded: bool,
        fuse: str | None = None,
    ) -> tuple[dict[str, dict[str, Any]], int | None, list[str], list[tuple[str, str]]]:
        """What every query checks first: (manifests, label id, models to run, models skipped and why)."""
        self.check_k(k)
        self.check_fuse(fuse)
        manifests = self.index_manifests(index)
        label_id = self.resolve_label(index, manifests, label)
        chosen, skipped = self.select_models(index, manifests, models, need_loaded=need_loaded)
        return manifests, label_id, chosen, skipped

    @staticmethod
    def _result(
        index: str,
        k: int,
        label_id: int | None,
        query: QueryInfo,
        outcomes: list[ModelResult],
        skipped: list[tuple[str, str]],
        t0: float,
        decode_ms: float = 0.0,
        fused: ModelResult | None = None,
    ) -> SearchResult:
        return SearchResult(
            index=index,
            k=k,
            label_filter=label_id,
            query=query,
            models=outcomes if fused is None else [*outcomes, fused],
            overlap=overlap_pairs(outcomes),  # the per-model entries only, never the fused one
            skipped=[SkippedModel(model_key=key, reason=reason) for key, reason in skipped],
            decode_ms=round(decode_ms, 3),
            total_ms=round((time.perf_counter() - t0) * 1000.0, 3),
        )

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
        fuse: str | None = None,
    ) -> SearchResult:
        """Embed an image file's bytes with each model and search the index. Decodes once.

        ``fuse="rrf"`` adds a last entry, ``fused_rrf``: the models' rankings (each read ``search_depth`` deep)
        fused by reciprocal rank fusion; the per-model entries still hold k neighbours."""
        t0 = time.perf_counter()
        if len(data) > self.settings.max_upload_bytes:
            raise ImageDecodeError(
                name, "too_large", f"{len(data):,} bytes exceeds the limit of {self.settings.max_upload_bytes:,}"
            )
        manifests, label_id, chosen, skipped = self._plan(index, k, label, models, need_loaded=True, fuse=fuse)
        depth = self.search_depth(k, fuse)
        for key in chosen:
            self.check_compatible(index, key, manifests[key])

        # Each model preprocesses the way its index recorded (one decode per distinct fast bound; usually one).
        paths = {key: self.embedders[key].query_preprocessing(manifests[key]) for key in chosen}
        t_dec = time.perf_counter()
        decodes = {
            bound: decode_image(data, name=name, max_pixels=self.settings.max_image_pixels, min_short_side=bound)
            for bound in dict.fromkeys(bound for _, bound in paths.values())
        }
        decode_ms = (time.perf_counter() - t_dec) * 1000.0
        if self.observer is not None:
            self.observer("*", "decode", decode_ms / 1000.0)
        decoded = next(iter(decodes.values()))
        query = QueryInfo(
            kind=kind, width=decoded.width, height=decoded.height, format=decoded.source_format, bytes=len(data)
        )

        def store_search(key: str, vector: np.ndarray, timings: dict[str, float]) -> list[Neighbour]:
            with self._timed(timings, key, "search"):
                return self.store.call(lambda s: s.search(index, key, vector, depth, label_id=label_id))[0]

        pending: list[tuple[str, dict[str, float], Future[list[Neighbour]]]] = []
        for key in chosen:
            embedder = self.embedders[key]
            timings: dict[str, float] = {"decode_ms": decode_ms}
            path, bound = paths[key]
            with self._timed(timings, key, "preprocess"):
                batch = embedder.preprocess(decodes[bound].image, path).unsqueeze(0)
            vector = self.forward(embedder, batch, timings)
            search = self._in_background(lambda k=key, v=vector, t=timings: store_search(k, v, t))
            pending.append((key, timings, search))
        outcomes = []
        deep: list[list[Neighbour]] = []
        for key, timings, future in pending:
            hits = future.result()
            outcomes.append(self._outcome(key, manifests[key], hits[:k], timings, None))
            deep.append(hits)
        fused = self._fused(outcomes, deep, k) if fuse else None
        return self._result(index, k, label_id, query, outcomes, skipped, t0, decode_ms, fused)

    def search_by_id(
        self,
        index: str,
        row_id: int,
        *,
        k: int = 10,
        models: Sequence[str] | None = None,
        label: int | str | None = None,
        fuse: str | None = None,
    ) -> SearchResult:
        """ "More like this": each model searches with its own stored vector of ``row_id``, excluding it.
        ``fuse`` as in ``search_image``."""
        t0 = time.perf_counter()
        manifests, label_id, chosen, skipped = self._plan(index, k, label, models, need_loaded=False, fuse=fuse)
        depth = self.search_depth(k, fuse)

        def stored_vector_search(key: str, timings: dict[str, float]) -> tuple[dict[str, Any], list[Neighbour]]:
            with self._timed(timings, key, "search"):
                rows = self.store.call(lambda s: s.get_rows(index, key, [row_id], with_vectors=True))
                if not rows:
                    raise QueryNotFoundError(f"no image with id {row_id} in index {index!r} (model {key!r})")
                vector = np.asarray(rows[0]["vector"], dtype=np.float32).reshape(1, -1)
                hits = self.store.call(
                    lambda s: s.search(index, key, vector, depth, label_id=label_id, exclude_ids=(row_id,))
                )[0]
            return rows[0], hits

        pending = []
        for key in chosen:
            timings: dict[str, float] = {"decode_ms": 0.0, "preprocess_ms": 0.0, "queue_ms": 0.0, "forward_ms": 0.0}
            pending.append((key, timings, self._in_background(lambda k=key, t=timings: stored_vector_search(k, t))))
        query: QueryInfo | None = None
        outcomes = []
        deep: list[list[Neighbour]] = []
        for key, timings, future in pending:
            row, hits = future.result()
            if query is None:
                row_label = row.get("label_id")
                query = QueryInfo(
                    kind="id",
                    id=row_id,
                    rel_path=row.get("rel_path"),
                    label_id=Neighbour.known_label(row_label),
                    label_name=row.get("label_name") or None,
                    width=row.get("width"),
                    height=row.get("height"),
                )
            outcomes.append(self._outcome(key, manifests[key], hits[:k], timings, query.label_id))
            deep.append(
                [h.model_copy(update={"same_label_as_query": h.label_id == query.label_id}) for h in hits]
                if query.label_id is not None
                else hits
            )
        assert query is not None  # select_models never returns an empty list
        fused = self._fused(outcomes, deep, k) if fuse else None
        return self._result(index, k, label_id, query, outcomes, skipped, t0, fused=fused)
