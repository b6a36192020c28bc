"""What a search answers, defined once: the store returns ``Neighbour``s, the search core builds a
``SearchResult`` from them, and the API's schemas extend these types with URLs only.

Pure pydantic (no torch, no numpy, no pymilvus), so the web UI's client can import it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer


class ImageRecord(BaseModel):
    """One indexed image as stored (no vector)."""

    id: int
    rel_path: str = Field(description="Path relative to the index's dataset root (informational only).")
    label_id: int | None = None
    label_name: str | None = None
    width: int | None = None
    height: int | None = None

    @staticmethod
    def known_label(label_id: Any) -> int | None:
        """The store writes -1 for "no label"; results say None."""
        return None if label_id is None or int(label_id) < 0 else int(label_id)


class Neighbour(ImageRecord):
    """One search hit, closest first. ``distance`` is what Milvus returns for L2: the squared distance.

    In the fused entry (``fused_rrf``) there is no distance: ``distance`` is 0.0 and ``score`` holds the
    RRF score (higher first). ``score`` is left out of the JSON of every other neighbour.
    """

    rank: int = Field(description="1-based rank.")
    distance: float = Field(description="Squared L2 distance between embeddings (0.0 in the fused entry).")
    same_label_as_query: bool | None = Field(
        default=None, description="Null when the query's label is unknown (e.g. an upload)."
    )
    score: float | None = Field(
        default=None, description="Fused entry only: RRF score, sum over models of 1 / (60 + rank); absent otherwise."
    )
    content_hash: str | None = Field(default=None, exclude=True, description="Stored content hash (not served).")

    @model_serializer(mode="wrap")
    def _without_empty_score(self, handler: SerializerFunctionWrapHandler) -> Any:
        out = handler(self)
        if self.score is None and isinstance(out, dict):
            out.pop("score", None)
        return out


class Provenance(BaseModel):
    label: str = Field(description="Human-readable weights origin; starts with 'untrained' for random weights.")
    trained: bool
    untrained: bool
    source: str | None = None
    sha256: str | None = None
    seed: int | None = None

    @classmethod
    def of(cls, weights: dict[str, Any]) -> Provenance:
        """From a manifest's ``weights`` (or ``Provenance.to_dict()`` of a loaded model)."""
        trained = bool(weights.get("trained", False))
        return cls(
            label=str(weights.get("label") or weights.get("source") or "unknown"),
            trained=trained,
            untrained=not trained,
            source=weights.get("source"),
            sha256=weights.get("sha256"),
            seed=weights.get("seed"),
        )


class StageTimings(BaseModel):
    """Milliseconds per stage for one model. decode_ms is the shared decode (done once per query);
    queue_ms is the wait for the forward gate (other searches' or jobs' forwards), forward_ms compute only."""

    decode_ms: float = 0.0
    preprocess_ms: float = 0.0
    queue_ms: float = 0.0
    forward_ms: float = 0.0
    search_ms: float = 0.0
    total_ms: float = 0.0


class ModelResult(BaseModel):
    model_key: str
    display_name: str
    model_name: str
    dim: int
    provenance: Provenance
    untrained: bool
    timings: StageTimings
    neighbours: list[Neighbour]


class OverlapPair(BaseModel):
    a: str
    b: str
    jaccard: float = Field(description="|A ∩ B| / |A ∪ B| of the two models' neighbour id sets.")
    shared: int


class QueryInfo(BaseModel):
    kind: Literal["upload", "base64", "id"]
    width: int | None = None
    height: int | None = None
    format: str | None = None
    bytes: int | None = None
    id: int | None = None
    rel_path: str | None = None
    label_id: int | None = None
    label_name: str | None = None


class SkippedModel(BaseModel):
    model_key: str
    reason: str


#: model_key of the extra result entry that ``fuse=rrf`` adds after the per-model ones.
FUSED_KEY = "fused_rrf"
#: Fusion methods ``/search`` accepts (``fuse=``).
FUSE_METHODS = ("rrf",)


class SearchResult(BaseModel):
    index: str
    k: int
    label_filter: int | None = None
    query: QueryInfo
    models: list[ModelResult] = Field(
        description="One entry per model; with fuse=rrf a last entry, model_key fused_rrf, ranks by RRF score."
    )
    overlap: list[OverlapPair] = Field(description="Jaccard@k for each pair of models (never the fused entry).")
    skipped: list[SkippedModel] = Field(default_factory=list, description="Index models this service cannot run.")
    decode_ms: float = 0.0
    total_ms: float = 0.0


def overlap_pairs(models: Sequence[ModelResult]) -> list[OverlapPair]:
    """Jaccard@k of neighbour id sets for every pair of models, in model order."""
    out = []
    for a, b in itertools.combinations(models, 2):
        sa, sb = {n.id for n in a.neighbours}, {n.id for n in b.neighbours}
        union = sa | sb
        shared = len(sa & sb)
        jaccard = round(shared / len(union), 6) if union else 1.0
        out.append(OverlapPair(a=a.model_key, b=b.model_key, jaccard=jaccard, shared=shared))
    return out
