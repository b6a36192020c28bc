"""A deliberately plain per-query reference for every evaluation metric.

Written from the definitions in docs/evaluation.md, sharing no code with embedsvc.evaluation: a
Python loop per query, float64 distances as sum((q - x)^2), sorting by (distance, id), Counters for
votes, Python sets for Jaccard and pandas' skew (a different estimator, converted) for hubness.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd

EPS = 1e-6


def ranked(vectors: np.ndarray, ids: np.ndarray, q: int) -> list[tuple[float, int, int]]:
    """All other rows of query row q as (squared distance, id, row), nearest first, ties by id."""
    out = []
    for j in range(len(ids)):
        if j == q:
            continue
        diff = vectors[q].astype(np.float64) - vectors[j].astype(np.float64)
        out.append((float((diff * diff).sum()), int(ids[j]), j))
    return sorted(out)


def vote(labels: list[int], weights: list[float]) -> int:
    """Majority (weighted) label; ties to the label that appears first; -1 never votes."""
    score: dict[int, float] = {}
    first: dict[int, int] = {}
    for rank, (lab, w) in enumerate(zip(labels, weights, strict=True)):
        if lab == -1:
            continue
        score[lab] = score.get(lab, 0.0) + w
        first.setdefault(lab, rank)
    if not score:
        return -1
    best = max(score.values())
    return min((lab for lab in score if score[lab] == best), key=lambda lab: first[lab])


def population_skew(values: list[int]) -> float:
    """pandas gives the adjusted G1; g1 = G1 * (n - 2) / sqrt(n (n - 1))."""
    n = len(values)
    if len(set(values)) == 1:
        return 0.0
    big_g1 = float(pd.Series(values, dtype=float).skew())
    return big_g1 * (n - 2) / math.sqrt(n * (n - 1))


def evaluate(
    vectors: dict[str, np.ndarray],
    ids: np.ndarray,
    labels: np.ndarray,
    query_ids: list[int],
    k_list: list[int],
    knn_k: int = 20,
) -> dict:
    """Reference numbers for the given queries (by id); same keys as the runner's summary."""
    n = len(ids)
    row_of = {int(i): r for r, i in enumerate(ids)}
    ks = sorted({min(k, n - 1) for k in k_list})
    knn_k = min(knn_k, n - 1)
    k10 = min(10, n - 1)
    result: dict = {"k_list": ks, "models": {}}
    top10: dict[str, dict[int, set[int]]] = {}
    right: dict[str, dict[int, bool]] = {}
    evaluable = []
    for qid in query_ids:
        q = row_of[qid]
        r_count = sum(1 for j in range(n) if j != q and labels[j] == labels[q])
        if r_count > 0:
            evaluable.append(qid)
    for key, vecs in vectors.items():
        names = ["knn_top1", "knn_top1_weighted"] + [f"{m}@{k}" for m in ("precision", "hit", "map") for k in ks]
        sums: dict[str, float] = dict.fromkeys(names, 0.0)
        per_class: dict[int, list[float]] = {}
        confusions: Counter = Counter()
        occurrence = {int(i): 0 for i in ids}
        top10[key], right[key] = {}, {}
        for qid in query_ids:
            q = row_of[qid]
            ranking = ranked(vecs, ids, q)
            neigh_ids = [i for _, i, _ in ranking]
            neigh_labels = [int(labels[j]) for _, _, j in ranking]
            for i in neigh_ids[:k10]:
                occurrence[i] += 1
            top10[key][qid] = set(neigh_ids[:k10])
            if qid not in evaluable:
                continue
            lab = int(labels[q])
            r_count = sum(1 for j in range(n) if j != q and labels[j] == lab)
            rel = [nl == lab for nl in neigh_labels]
            right[key][qid] = rel[0]
            if not rel[0]:
                confusions[(lab, neigh_labels[0])] += 1
            pred = vote(neigh_labels[:knn_k], [1.0] * knn_k)
            pred_w = vote(neigh_labels[:knn_k], [1 / (math.sqrt(d) + EPS) for d, _, _ in ranking[:knn_k]])
            sums["knn_top1"] = sums["knn_top1"] + (pred == lab)
            sums["knn_top1_weighted"] = sums["knn_top1_weighted"] + (pred_w == lab)
            for k in ks:
                hits = sum(rel[:k])
                sums[f"precision@{k}"] = sums[f"precision@{k}"] + hits / k
                sums[f"hit@{k}"] = sums[f"hit@{k}"] + (hits > 0)
                ap, found = 0.0, 0
                for i in range(k):
                    if rel[i]:
                        found += 1
                        ap += found / (i + 1)
                sums[f"map@{k}"] = sums[f"map@{k}"] + ap / min(r_count, k)
            per_class.setdefault(lab, []).append(sum(rel[:k10]) / k10)
        m = len(evaluable)
        metrics = {name: (value / m if m else None) for name, value in sums.items()}
        hubs = sorted(occurrence.items(), key=lambda t: (-t[1], t[0]))[:10]
        result["models"][key] = {
            "metrics": metrics,
            "per_class": {lab: (sum(v) / len(v), len(v)) for lab, v in per_class.items()},
            "confusions": sorted(((a, b, c) for (a, b), c in confusions.items()), key=lambda t: (-t[2], t[0], t[1])),
            "hub_skewness": population_skew(list(occurrence.values())),
            "hubs": [(i, c) for i, c in hubs],
        }
    keys = list(vectors)
    result["jaccard"] = {
        (a, b): float(np.mean([len(top10[a][q] & top10[b][q]) / len(top10[a][q] | top10[b][q]) for q in query_ids]))
        for i, a in enumerate(keys)
        for b in keys[i + 1 :]
    }
    n_right = {q: sum(right[m][q] for m in keys) for q in evaluable}
    result["agreement"] = {
        "all_right": sum(1 for q in evaluable if n_right[q] == len(keys)),
        "none_right": sum(1 for q in evaluable if n_right[q] == 0),
        "only_right": {m: sum(1 for q in evaluable if right[m][q] and n_right[q] == 1) for m in keys},
    }
    result["evaluable"] = evaluable
    return result


def per_query(
    vectors: np.ndarray, ids: np.ndarray, labels: np.ndarray, query_ids: list[int], ks: list[int]
) -> dict[str, list[float]]:
    """Per evaluable query (R >= 1, in the order given): P@k, hit@k and AP@k for each k, by a plain loop."""
    row_of = {int(i): r for r, i in enumerate(ids)}
    out: dict[str, list[float]] = {f"{m}@{k}": [] for m in ("precision", "hit", "map") for k in ks}
    for qid in query_ids:
        q = row_of[qid]
        lab = int(labels[q])
        r_count = sum(1 for j in range(len(ids)) if j != q and labels[j] == lab)
        if r_count == 0:
            continue
        rel = [int(labels[j]) == lab for _, _, j in ranked(vectors, ids, q)]
        for k in ks:
            out[f"precision@{k}"].append(sum(rel[:k]) / k)
            out[f"hit@{k}"].append(float(any(rel[:k])))
            found, ap = 0, 0.0
            for i in range(k):
                if rel[i]:
                    found += 1
                    ap += found / (i + 1)
            out[f"map@{k}"].append(ap / min(r_count, k))
    return out


def rrf_ranking(rankings: list[list[int]], k: int = 60) -> list[int]:
    """Ids ordered by exact (Fraction) RRF score sum 1 / (k + rank), ties by the smaller id."""
    from fractions import Fraction

    score: dict[int, Fraction] = {}
    for ranking in rankings:
        for rank, i in enumerate(ranking, start=1):
            score[i] = score.get(i, Fraction(0)) + Fraction(1, k + rank)
    return sorted(score, key=lambda i: (-score[i], i))
