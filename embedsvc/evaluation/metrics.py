"""Exact leave-one-out retrieval metrics over stored vectors (no re-embedding, no approximate index).

Conventions shared by every function here (``docs/evaluation.md`` states them for users):

- Rows are ordered by id before they reach this module, so "ties broken by row index" == "by id".
- Distance is squared L2 (what Milvus FLAT/L2 returns); on L2-normalised vectors it ranks like cosine.
- Label ``-1`` means unlabelled: such rows are never queries but can be neighbours, and never match.
- ``R`` = number of OTHER rows sharing the query's label. Queries with ``R == 0`` cannot retrieve
  anything relevant; callers exclude them from every rank-based average (see ``evaluable``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from embedsvc.fusion import RRF_K as RRF_K  # one owner: the core, shared with /search?fuse=rrf
from embedsvc.fusion import reciprocal_rank_fusion as reciprocal_rank_fusion

log = logging.getLogger(__name__)

UNLABELLED = -1
DEFAULT_EPS = 1e-6


@dataclass(frozen=True)
class Neighbours:
    """Top-k neighbours of each query: row indices (q, k) into the searched array and squared L2 distances."""

    rows: np.ndarray  # int64 (q, k), nearest first
    dist: np.ndarray  # float32 (q, k), squared L2


def _chunk_size(n_rows: int, budget: int) -> int:
    """Queries per chunk so that one (chunk, n_rows) distance block stays near ``budget`` elements."""
    return max(1, min(8192, budget // max(n_rows, 1)))


def exact_knn(
    vectors: np.ndarray,
    query_rows: np.ndarray,
    k: int,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    chunk_elems: int = 1 << 25,
    progress: Callable[[int], None] | None = None,
) -> Neighbours:
    """Brute-force (FLAT-equivalent) k nearest rows for each query row, the query's own row excluded.

    Why not Milvus: a 50,000 x 50,000 leave-one-out pass is one matmul per chunk here, and exactness
    must not depend on the index type. Distances use ||q||^2 + ||x||^2 - 2 q.x (clamped at 0).
    Ties are broken by row index, deterministically even at the k-th boundary: rows whose k-th value
    is shared by more candidates than fit are re-sorted in full with a stable sort.
    """
    n = vectors.shape[0]
    if n < 2:
        raise ValueError("leave-one-out needs at least 2 rows")
    k = min(k, n - 1)
    dev = torch.device(device)
    if dev.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
        log.warning("float32 matmul precision is %r: distances may use TF32", torch.get_float32_matmul_precision())
    x = torch.as_tensor(np.ascontiguousarray(vectors)).to(dev, dtype)
    x_sq = (x * x).sum(1)
    query_rows = np.asarray(query_rows, dtype=np.int64)
    out_rows = np.empty((len(query_rows), k), dtype=np.int64)
    out_dist = np.empty((len(query_rows), k), dtype=np.float32)
    step = _chunk_size(n, chunk_elems)
    with torch.inference_mode():
        for start in range(0, len(query_rows), step):
            qr = torch.as_tensor(query_rows[start : start + step], device=dev)
            q = x[qr]
            d = (x_sq[qr][:, None] + x_sq[None, :]) - 2.0 * (q @ x.T)
            d.clamp_(min=0)
            d[torch.arange(len(qr), device=dev), qr] = float("inf")  # leave-one-out: never yourself
            vals, idx = torch.topk(d, k, dim=1, largest=False, sorted=False)
            kth = vals.max(dim=1).values
            crowded = ((d <= kth[:, None]).sum(1) > k).nonzero().flatten()
            if len(crowded):  # ties straddle the boundary: keep the lowest row indices among them
                _, full = torch.sort(d[crowded], dim=1, stable=True)
                idx[crowded] = full[:, :k]
                vals[crowded] = torch.gather(d[crowded], 1, idx[crowded])
            # order the k kept by (distance, row index): index sort first, then a stable sort by distance
            idx, perm = torch.sort(idx, dim=1)
            vals = torch.gather(vals, 1, perm)
            vals, perm = torch.sort(vals, dim=1, stable=True)
            idx = torch.gather(idx, 1, perm)
            out_rows[start : start + len(qr)] = idx.cpu().numpy()
            out_dist[start : start + len(qr)] = vals.float().cpu().numpy()
            if progress is not None:
                progress(len(qr))
    return Neighbours(out_rows, out_dist)


def others_with_label(labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """R per query: rows of the whole index with the query's label, minus the query itself."""
    labelled = labels[labels != UNLABELLED]
    values, counts = np.unique(labelled, return_counts=True)
    pos = np.searchsorted(values, query_labels)
    pos = np.clip(pos, 0, max(len(values) - 1, 0))
    found = (values[pos] == query_labels) if len(values) else np.zeros(len(query_labels), bool)
    return np.where(found, counts[pos] - 1, 0).astype(np.int64)


def relevance(neighbour_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """(q, k) bool: neighbour shares the query's label (unlabelled neighbours never do)."""
    return (neighbour_labels == query_labels[:, None]) & (neighbour_labels != UNLABELLED)


def precision_at(rel: np.ndarray, k: int) -> np.ndarray:
    """Per query: relevant among the first k / k (divided by k even when R < k, the usual definition)."""
    return rel[:, :k].sum(1) / k


def hit_at(rel: np.ndarray, k: int) -> np.ndarray:
    """Per query: 1.0 if any of the first k is relevant."""
    return rel[:, :k].any(1).astype(np.float64)


def average_precision_at(rel: np.ndarray, k: int, n_relevant: np.ndarray) -> np.ndarray:
    """Per query AP@k = sum_{i<=k} P@i * rel_i / min(R, k).

    Normalised by min(R, k) -- what a perfect ranking could reach -- not by the hits found, which
    would give a query with one lucky hit at rank 1 and nothing else a perfect 1.0. Queries with
    R == 0 get NaN (callers exclude them).
    """
    rel_k = rel[:, :k].astype(np.float64)
    prec = np.cumsum(rel_k, 1) / np.arange(1, rel_k.shape[1] + 1)
    denom = np.minimum(n_relevant, k).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (prec * rel_k).sum(1) / denom, np.nan)


def knn_vote(neighbour_labels: np.ndarray, weights: np.ndarray | None = None, *, chunk: int = 8192) -> np.ndarray:
    """Predicted label per query from its neighbours: the largest (weighted) vote wins.

    Unlabelled neighbours do not vote. Ties in votes go to the label whose first member is nearest.
    A query whose neighbours are all unlabelled gets ``UNLABELLED`` (never right).
    Works on the (q, k, k) "same label" cube, not a (q, classes) matrix: cheap for 1,000 classes too.
    Votes are summed in rank order, so equal totals compare equal exactly as in a plain loop.
    """
    q, k = neighbour_labels.shape
    out = np.full(q, UNLABELLED, dtype=np.int64)
    if not k:
        return out
    w = np.ones((q, k)) if weights is None else np.asarray(weights, dtype=np.float64)
    earlier_mask = np.tril(np.ones((k, k), dtype=bool), -1)  # [j, i]: i ranks before j
    for s in range(0, q, chunk):
        nl = neighbour_labels[s : s + chunk]
        same = nl[:, :, None] == nl[:, None, :]  # [q, j, i]: neighbours j and i share a label
        votes = np.zeros(nl.shape)
        for i in range(k):  # rank order, like counting by hand
            votes += np.where(same[:, :, i], w[s : s + chunk, i : i + 1], 0.0)
        first = ~(same & earlier_mask).any(2)  # j is its label's nearest member
        score = np.where(first & (nl != UNLABELLED), votes, -np.inf)
        choice = score.argmax(1)  # first maximum = the tied label whose nearest member ranks first
        picked = nl[np.arange(len(nl)), choice]
        out[s : s + len(nl)] = np.where(np.isfinite(score.max(1)), picked, UNLABELLED)
    return out


def distance_weights(sq_dist: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
    """1 / (d + eps) with d the Euclidean (not squared) distance."""
    return 1.0 / (np.sqrt(np.maximum(sq_dist.astype(np.float64), 0.0)) + eps)


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per query |A ∩ B| / |A ∪ B| of two (q, k) arrays of distinct ids: common ids are equal neighbours once sorted."""
    if a.shape[1] == 0:
        return np.ones(len(a))
    both = np.sort(np.concatenate([a, b], 1), axis=1)
    inter = (both[:, 1:] == both[:, :-1]).sum(1)
    return inter / (a.shape[1] + b.shape[1] - inter)


def k_occurrence(neighbour_rows: np.ndarray, n_rows: int) -> np.ndarray:
    """N_k(x): in how many queries' top-k lists each row appears (over the queries given)."""
    return np.bincount(neighbour_rows.ravel(), minlength=n_rows)


def skewness(values: np.ndarray) -> float:
    """Population (biased) skewness E[(x-mu)^3] / sigma^3, as in the hubness literature; 0 if constant."""
    x = np.asarray(values, dtype=np.float64)
    centred = x - x.mean()
    sigma = np.sqrt((centred**2).mean())
    return float((centred**3).mean() / sigma**3) if sigma > 0 else 0.0


def per_class_mean(values: np.ndarray, query_labels: np.ndarray) -> dict[int, tuple[float, int]]:
    """Mean of a per-query value within each query label: {label: (mean, n_queries)}."""
    out: dict[int, tuple[float, int]] = {}
    for label in np.unique(query_labels):
        mask = query_labels == label
        out[int(label)] = (float(values[mask].mean()), int(mask.sum()))
    return out


def confusion_counts(query_labels: np.ndarray, top1_labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(query label, top-1 neighbour label, count) for wrong top-1s, most frequent first, ties by labels."""
    wrong = query_labels != top1_labels
    counts = Counter(zip(query_labels[wrong].tolist(), top1_labels[wrong].tolist(), strict=True))
    return sorted(((a, b, n) for (a, b), n in counts.items()), key=lambda t: (-t[2], t[0], t[1]))


def agreement(correct: dict[str, np.ndarray]) -> dict[str, object]:
    """Rank-1 agreement across models: all right, none right, and per model 'only this one right'."""
    names = list(correct)
    if not names:
        return {"all_right": 0, "none_right": 0, "only_right": {}}
    stack = np.stack([correct[m].astype(bool) for m in names])
    n_right = stack.sum(0)
    return {
        "all_right": int((n_right == len(names)).sum()),
        "none_right": int((n_right == 0).sum()),
        "only_right": {m: int((stack[i] & (n_right == 1)).sum()) for i, m in enumerate(names)},
    }


def effective_ks(k_list: Sequence[int], n_rows: int) -> list[int]:
    """The requested cut-offs clipped to n_rows - 1 (the most neighbours leave-one-out can return), deduplicated."""
    if n_rows < 2:
        return []
    return sorted({min(int(k), n_rows - 1) for k in k_list if int(k) >= 1})
