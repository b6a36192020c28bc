"""What a search answers: per-model neighbours, timings and the models' overlap."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Per-model stages of a query; ``queue`` is the wait for the forward gate, ``forward`` the compute.
STAGES = ("decode", "preprocess", "queue", "forward", "search")


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


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if (sa | sb) else 1.0
