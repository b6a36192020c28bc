"""Reciprocal rank fusion, defined once: the evaluation's ``fused_rrf`` entry and ``/search?fuse=rrf`` use it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RRF_K = 60
#: How deep each model's ranking is read before fusing (at least the cut-off asked for).
FUSE_DEPTH = 100


def reciprocal_rank_fusion(rankings: Sequence[np.ndarray], out_k: int, k: int = RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """Fuse several (q, d) rankings of row indices (nearest first) into one: score(x) = sum 1 / (k + rank(x)).

    Ranks start at 1; a row missing from a model's list adds nothing from it. The fused list is sorted
    by score, ties (scores equal to 12 decimals, so float summation order cannot decide) by row index,
    like every other ranking here. Returns the (q, out_k) fused rows and their scores.
    """
    if not rankings or out_k > max(r.shape[1] for r in rankings):
        raise ValueError("fusion needs at least one ranking at least out_k long")
    rows = np.concatenate([np.asarray(r, dtype=np.int64) for r in rankings], axis=1)
    scores = np.concatenate([np.broadcast_to(1.0 / (k + np.arange(1, r.shape[1] + 1)), r.shape) for r in rankings], 1)
    order = np.argsort(rows, axis=1, kind="stable")
    rows = np.take_along_axis(rows, order, 1)
    scores = np.take_along_axis(scores, order, 1)
    total = np.cumsum(scores, axis=1)
    first = np.ones(rows.shape, dtype=bool)  # first entry of each run of equal rows
    first[:, 1:] = rows[:, 1:] != rows[:, :-1]
    last = np.ones(rows.shape, dtype=bool)  # last entry of each run: where the run's total is read
    last[:, :-1] = first[:, 1:]
    before = np.zeros(rows.shape)  # cumulative sum just before each entry
    before[:, 1:] = total[:, :-1]
    start = np.maximum.accumulate(np.where(first, before, 0.0), axis=1)  # sums only grow: the run's own start
    fused = np.where(last, np.round(total - start, 12), -np.inf)
    pick = np.argsort(-fused, axis=1, kind="stable")[:, :out_k]  # stable: equal scores keep row order
    return np.take_along_axis(rows, pick, 1), np.take_along_axis(fused, pick, 1)
