"""What the search core answers. The result types themselves live in ``embedsvc.results`` (defined
once, shared with the store and the API); here are the core's own additions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from embedsvc.results import (
    ModelResult,
    Neighbour,
    OverlapPair,
    Provenance,
    QueryInfo,
    SearchResult,
    SkippedModel,
    StageTimings,
    overlap_pairs,
)

#: Per-model stages of a query; ``queue`` is the wait for the forward gate, ``forward`` the compute.
STAGES = ("decode", "preprocess", "queue", "forward", "search")

__all__ = [
    "STAGES",
    "ModelResult",
    "Neighbour",
    "OverlapPair",
    "Provenance",
    "QueryInfo",
    "RowListing",
    "SearchResult",
    "SkippedModel",
    "StageObserver",
    "StageTimings",
    "jaccard",
    "overlap_pairs",
]


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
