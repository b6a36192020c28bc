"""What the comparison page derives from one search response, kept free of Streamlit so it is testable.

The API already returns per-model neighbours, same-label flags and pairwise Jaccard@k; the page adds
the "found by every model" set and turns the pairs into a square matrix for the heat map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from embedsvc.client import FUSED_KEY, ModelResult, Neighbour, OverlapPair, SearchResponse

MAX_MODELS = 4
FUSED_LABEL = "Fused (RRF)"  # the checkbox and the fused column's badge
SAME_LABEL_MARK = "same label"
OTHER_LABEL_MARK = "other label"
SHARED_MARK = "found by all"  # every model returned it


def split_fused(models: Sequence[ModelResult]) -> tuple[list[ModelResult], ModelResult | None]:
    """(the per-model entries, the fused entry or None): "found by all", Jaccard and the table use the first only."""
    fused = next((m for m in models if m.model_key == FUSED_KEY), None)
    return [m for m in models if m.model_key != FUSED_KEY], fused


def shared_ids(models: Sequence[ModelResult]) -> set[int]:
    """Ids every model returned; empty with fewer than two models, where "shared" means nothing."""
    if len(models) < 2:
        return set()
    sets = [{n.id for n in m.neighbours} for m in models]
    return set.intersection(*sets)


def jaccard_matrix(keys: Sequence[str], overlap: Sequence[OverlapPair]) -> pd.DataFrame:
    """Square, symmetric Jaccard@k table (1.0 on the diagonal) from the API's per-pair list."""
    frame = pd.DataFrame(float("nan"), index=list(keys), columns=list(keys), dtype=float)
    for key in keys:
        frame.loc[key, key] = 1.0
    for pair in overlap:
        if pair.a in frame.index and pair.b in frame.index:
            frame.loc[pair.a, pair.b] = pair.jaccard
            frame.loc[pair.b, pair.a] = pair.jaccard
    return frame


def jaccard_long(frame: pd.DataFrame) -> pd.DataFrame:
    """The matrix as (a, b, jaccard) rows, the shape a heat-map chart wants."""
    out = frame.rename_axis(index="a", columns="b").stack(future_stack=True).reset_index(name="jaccard")
    return out.dropna(subset=["jaccard"])


@dataclass(frozen=True)
class Marks:
    """How one neighbour is flagged in its model's column."""

    same_label: bool | None
    shared: bool

    def text(self) -> str:
        parts = []
        if self.same_label is True:
            parts.append(SAME_LABEL_MARK)
        elif self.same_label is False:
            parts.append(OTHER_LABEL_MARK)
        if self.shared:
            parts.append(SHARED_MARK)
        return " · ".join(parts)


def marks_for(neighbour: Neighbour, shared: set[int]) -> Marks:
    return Marks(same_label=neighbour.same_label_as_query, shared=neighbour.id in shared)


def caption(neighbour: Neighbour) -> str:
    """Rank, distance (the RRF score in the fused column) and label in one short line under a thumbnail."""
    label = neighbour.label_name or (str(neighbour.label_id) if neighbour.label_id is not None else "unlabelled")
    if neighbour.score is not None:
        return f"#{neighbour.rank} · RRF={neighbour.score:.4f} · {label}"
    return f"#{neighbour.rank} · d={neighbour.distance:.3f} · {label}"


def timings_line(model: ModelResult) -> str:
    t = model.timings
    return (
        f"preprocess {t.preprocess_ms:.1f} ms · forward {t.forward_ms:.1f} ms · "
        f"search {t.search_ms:.1f} ms · total {t.total_ms:.1f} ms"
    )


def precision_line(model: ModelResult) -> str | None:
    """"k of n share the query's label", when the query's label is known."""
    flags = [n.same_label_as_query for n in model.neighbours if n.same_label_as_query is not None]
    if not flags:
        return None
    return f"{sum(flags)} of {len(flags)} share the query's label"


def summary_rows(response: SearchResponse) -> list[dict[str, object]]:
    """One row per model for a compact comparison table (precision, untrained flag, timings); not the fused entry."""
    models, _ = split_fused(response.models)
    shared = shared_ids(models)
    rows = []
    for m in models:
        flags = [n.same_label_as_query for n in m.neighbours if n.same_label_as_query is not None]
        rows.append(
            {
                "model": m.display_name,
                "key": m.model_key,
                "weights": m.provenance.label,
                "untrained": m.untrained,
                "neighbours": len(m.neighbours),
                "same label": sum(flags) if flags else None,
                "shared": sum(n.id in shared for n in m.neighbours),
                "forward ms": round(m.timings.forward_ms, 1),
                "search ms": round(m.timings.search_ms, 1),
                "total ms": round(m.timings.total_ms, 1),
            }
        )
    return rows
