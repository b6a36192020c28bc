"""Evaluate every model of an index: fetch stored vectors, search exactly, score, compare models.

``evaluate_arrays`` is the pure part (arrays in, summary out) that tests check against a reference;
``evaluate_index`` adds the store: fetching, aligning models by id, label names and image paths.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedsvc.evaluation import metrics as M
from embedsvc.store import IndexNotFoundError, Store

log = logging.getLogger(__name__)

DEFAULT_K_LIST = (1, 5, 10, 20, 100)
KNN_K = 20
HUB_K = 10
JACCARD_K = 10
CLASS_K = 10
N_WORST = 10
N_CONFUSIONS = 10
N_HUBS = 10
N_EXAMPLES = 10

Progress = Callable[[int], None]


@dataclass
class Evaluation:
    """``summary`` is JSON-ready (what the CLI prints and the API returns); ``per_query`` feeds the CSV."""

    summary: dict[str, Any]
    per_query: dict[str, np.ndarray] = field(default_factory=dict)


def sample_queries(labels: np.ndarray, sample: int | None, seed: int) -> np.ndarray:
    """Row indices of the queries: every labelled row, or a seeded sample of them (sorted).

    Rows must already be in id order, so the same (ids, sample, seed) always gives the same queries.
    """
    labelled = np.flatnonzero(labels != M.UNLABELLED)
    if sample is None or sample >= len(labelled):
        return labelled
    if sample < 1:
        raise ValueError("sample must be at least 1")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(labelled, size=sample, replace=False))


def shuffled_labels(labels: np.ndarray, seed: int) -> np.ndarray:
    """Labels permuted among the labelled rows (class sizes kept): the chance baseline for the same set."""
    out = labels.copy()
    labelled = np.flatnonzero(labels != M.UNLABELLED)
    out[labelled] = np.random.default_rng(seed).permutation(labels[labelled])
    return out


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None


def score_model(
    nb: M.Neighbours,
    labels: np.ndarray,
    query_rows: np.ndarray,
    ks: Sequence[int],
    *,
    knn_k: int = KNN_K,
    class_k: int = CLASS_K,
) -> tuple[dict[str, float | None], dict[str, np.ndarray]]:
    """Aggregate metrics for one model's neighbours, plus the per-query values behind them.

    Averages run over evaluable queries (R >= 1) only; see module ``metrics`` for the conventions.
    """
    qlab = labels[query_rows]
    nlab = labels[nb.rows]
    n_rel = M.others_with_label(labels, qlab)
    ok = n_rel > 0
    rel = M.relevance(nlab, qlab)[ok]
    knn_k = min(knn_k, nb.rows.shape[1])
    pred = M.knn_vote(nlab[:, :knn_k])
    pred_w = M.knn_vote(nlab[:, :knn_k], M.distance_weights(nb.dist[:, :knn_k]))
    out: dict[str, float | None] = {
        "knn_top1": _mean((pred == qlab)[ok].astype(float)),
        "knn_top1_weighted": _mean((pred_w == qlab)[ok].astype(float)),
    }
    for k in ks:
        out[f"precision@{k}"] = _mean(M.precision_at(rel, k))
    for k in ks:
        out[f"hit@{k}"] = _mean(M.hit_at(rel, k))
    for k in ks:
        out[f"map@{k}"] = _mean(M.average_precision_at(rel, k, n_rel[ok]))
    class_k = min(class_k, nb.rows.shape[1])
    per_query = {
        "evaluable": ok,
        "n_relevant": n_rel,
        "top1_row": nb.rows[:, 0],
        "top1_label": nlab[:, 0],
        "correct@1": M.relevance(nlab[:, :1], qlab)[:, 0],
        f"precision@{class_k}": M.precision_at(M.relevance(nlab, qlab), class_k),
        f"ap@{class_k}": M.average_precision_at(M.relevance(nlab, qlab), class_k, n_rel),
        "knn_pred": pred,
    }
    return out, per_query


def evaluate_arrays(
    vectors: Mapping[str, np.ndarray],
    ids: np.ndarray,
    labels: np.ndarray,
    *,
    label_names: Mapping[int, str] | None = None,
    sample: int | None = None,
    seed: int = 0,
    k_list: Sequence[int] = DEFAULT_K_LIST,
    knn_k: int = KNN_K,
    chance_seed: int | None = 0,
    device: str = "cpu",
    progress: Progress | None = None,
) -> Evaluation:
    """Leave-one-out evaluation of several models over the same rows (``ids``, ``labels`` shared).

    ``chance_seed``: also score the same neighbours against labels shuffled with that seed, the level
    a model with no idea of content would reach on this set (None skips it).
    """
    ids = np.asarray(ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(ids, kind="stable")  # tie-breaking by row index == by id
    ids, labels = ids[order], labels[order]
    n = len(ids)
    if n < 2:
        raise ValueError(f"an index needs at least 2 rows to evaluate, this one has {n}")
    if len(np.unique(ids)) != n:
        raise ValueError("duplicate ids")
    names = {int(k): v for k, v in (label_names or {}).items()}

    def name(label: int) -> str:
        return "(unlabelled)" if label == M.UNLABELLED else names.get(label, str(label))

    ks = M.effective_ks(k_list, n)
    k_max = min(max([*ks, knn_k, HUB_K, JACCARD_K, CLASS_K]), n - 1)
    query_rows = sample_queries(labels, sample, seed)
    n_rel = M.others_with_label(labels, labels[query_rows])
    evaluable = n_rel > 0
    chance_labels = shuffled_labels(labels, chance_seed) if chance_seed is not None else None

    summary: dict[str, Any] = {
        "k_list": ks,
        "knn_k": min(knn_k, n - 1),
        "queries": {
            "n_rows": n,
            "n_labelled": int((labels != M.UNLABELLED).sum()),
            "n_classes": len(np.unique(labels[labels != M.UNLABELLED])),
            "n_queries": len(query_rows),
            "n_evaluated": int(evaluable.sum()),
            "n_without_relevant": int((~evaluable).sum()),
            "sample": sample,
            "seed": seed,
        },
        "models": {},
    }
    per_query: dict[str, np.ndarray] = {
        "id": ids[query_rows],
        "label_id": labels[query_rows],
        "n_relevant": n_rel,
    }
    neighbour_rows: dict[str, np.ndarray] = {}
    correct: dict[str, np.ndarray] = {}
    for key, vecs in vectors.items():
        vecs = np.asarray(vecs)[order]
        t0 = time.perf_counter()
        nb = M.exact_knn(vecs, query_rows, k_max, device=device, progress=progress)
        search_s = time.perf_counter() - t0
        scores, pq = score_model(nb, labels, query_rows, ks, knn_k=knn_k)
        neighbour_rows[key] = nb.rows
        correct[key] = pq["correct@1"]
        entry: dict[str, Any] = {"metrics": scores, "search_seconds": round(search_s, 3)}
        ok = pq["evaluable"]
        class_k = min(CLASS_K, n - 1)
        per_class = M.per_class_mean(pq[f"precision@{class_k}"][ok], labels[query_rows][ok])
        entry["per_class"] = [
            {"label_id": lab, "label": name(lab), "k": class_k, "precision": p, "n_queries": cnt}
            for lab, (p, cnt) in sorted(per_class.items())
        ]
        entry["worst_classes"] = sorted(entry["per_class"], key=lambda r: (r["precision"], r["label"]))[:N_WORST]
        entry["confusions"] = [
            {"query_label": name(a), "neighbour_label": name(b), "count": c}
            for a, b, c in M.confusion_counts(labels[query_rows][ok], pq["top1_label"][ok])[:N_CONFUSIONS]
        ]
        hub_k = min(HUB_K, n - 1)
        occ = M.k_occurrence(nb.rows[:, :hub_k], n)
        top = np.lexsort((ids, -occ))[:N_HUBS]
        entry["hubness"] = {
            "k": hub_k,
            "skewness": M.skewness(occ),
            "top": [{"id": int(ids[r]), "label": name(int(labels[r])), "count": int(occ[r])} for r in top],
        }
        if chance_labels is not None:
            entry["chance"], _ = score_model(nb, chance_labels, query_rows, ks, knn_k=knn_k)
        summary["models"][key] = entry
        for col in ("top1_label", "correct@1", f"precision@{class_k}", f"ap@{class_k}", "knn_pred"):
            per_query[f"{key}:{col}"] = pq[col]
        per_query[f"{key}:top1_id"] = ids[pq["top1_row"]]

    summary["cross_model"] = _cross_model(neighbour_rows, correct, evaluable, ids[query_rows], n)
    per_query["evaluable"] = evaluable
    return Evaluation(summary, per_query)


def _cross_model(
    neighbour_rows: Mapping[str, np.ndarray],
    correct: Mapping[str, np.ndarray],
    evaluable: np.ndarray,
    query_ids: np.ndarray,
    n: int,
) -> dict[str, Any]:
    """Jaccard@10 between each pair over all queries; rank-1 agreement over evaluable queries."""
    keys = list(neighbour_rows)
    jk = min(JACCARD_K, n - 1)
    pairs = [
        {
            "a": a,
            "b": b,
            "k": jk,
            "mean_jaccard": _mean(M.jaccard(neighbour_rows[a][:, :jk], neighbour_rows[b][:, :jk])),
        }
        for i, a in enumerate(keys)
        for b in keys[i + 1 :]
    ]
    ok_correct = {m: c[evaluable] for m, c in correct.items()}
    agree = M.agreement(ok_correct)
    ok_ids = query_ids[evaluable]
    if keys:
        stack = np.stack([ok_correct[m] for m in keys])
        n_right = stack.sum(0)
        agree["examples"] = {
            "only_right": {m: ok_ids[stack[i] & (n_right == 1)][:N_EXAMPLES].tolist() for i, m in enumerate(keys)},
            "none_right": ok_ids[n_right == 0][:N_EXAMPLES].tolist(),
        }
    agree["n_queries"] = int(evaluable.sum())
    return {"jaccard": pairs, "agreement": agree}


# --- the store-backed entry point ----------------------------------------------------------------


def index_version(store: Store, index: str) -> tuple[tuple[str, int, int, str], ...]:
    """What changes whenever an index's rows change: (model, live rows, manifest row_count, updated_at).

    Cheap (one manifest and one count per model), so the API can check it before reusing a cached
    result. Raises IndexNotFoundError for an unknown index.
    """
    keys = store.models_of(index)
    if not keys:
        raise IndexNotFoundError(f"no index {index!r}")
    out = []
    for key in keys:
        manifest = store.get_manifest(index, key) or {}
        stamp = str(manifest.get("updated_at") or manifest.get("created_at") or "")
        out.append((key, store.count(index, key), int(manifest.get("row_count", -1)), stamp))
    return tuple(out)


def _model_info(manifest: Mapping[str, Any] | None) -> dict[str, Any]:
    manifest = manifest or {}
    weights = manifest.get("weights") or {}
    return {
        "model_name": manifest.get("model_name"),
        "display_name": manifest.get("display_name"),
        "dim": manifest.get("dim"),
        "normalize": manifest.get("normalize"),
        "weights": weights.get("label"),
        "trained": weights.get("trained"),
        "row_count": manifest.get("row_count"),
        "updated_at": manifest.get("updated_at") or manifest.get("date"),
    }


def _align(fetched: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Keep the ids every model has (a half-indexed model must not skew the comparison), in id order."""
    common: np.ndarray | None = None
    for ids, _, _ in fetched.values():
        common = np.asarray(ids) if common is None else np.intersect1d(common, ids)
    assert common is not None
    common = np.unique(common)
    vectors, labels = {}, None
    for key, (ids, vecs, labs) in fetched.items():
        ids = np.asarray(ids)
        if len(ids) != len(common):
            log.warning(
                "%s has %d rows, %d shared by every model: evaluating the shared ones", key, len(ids), len(common)
            )
        order = np.argsort(ids)
        pos = order[np.searchsorted(ids, common, sorter=order)]
        vectors[key] = np.asarray(vecs)[pos]
        model_labels = np.asarray(labs, dtype=np.int64)[pos]
        if labels is None:
            labels = model_labels
        elif not np.array_equal(labels, model_labels):
            raise ValueError(f"models of one index disagree on labels ({key}); re-index before evaluating")
    assert labels is not None
    return common, labels, vectors


def evaluate_index(
    store: Store,
    index: str,
    *,
    models: Sequence[str] | None = None,
    sample: int | None = None,
    seed: int = 0,
    k_list: Sequence[int] = DEFAULT_K_LIST,
    chance_seed: int | None = 0,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Evaluate the stored vectors of ``index`` (every model, or ``models``) without re-embedding.

    ``progress(advance, total)`` is called after each chunk of queries (total = queries x models).
    Raises the store's IndexNotFoundError for an unknown index, ValueError for an unknown model.
    """
    available = list(store.models_of(index))
    if not available:
        raise IndexNotFoundError(f"no index {index!r}")
    keys = list(models) if models else available
    unknown = [m for m in keys if m not in available]
    if unknown:
        raise ValueError(f"index {index!r} has no vectors for {unknown}; it has {available}")
    version = index_version(store, index)
    fetched, fetch_s = {}, {}
    for key in keys:
        t0 = time.perf_counter()
        fetched[key] = store.fetch_all(index, key)
        fetch_s[key] = round(time.perf_counter() - t0, 3)
        log.info("fetched %d vectors of %s/%s in %.1f s", len(fetched[key][0]), index, key, fetch_s[key])
    ids, labels, vectors = _align(fetched)
    label_names = _label_names(store, index, keys[0], ids, labels)
    n_queries = len(sample_queries(labels, sample, seed)) if len(ids) >= 2 else 0
    total = n_queries * len(keys)
    callback = (lambda advance: progress(advance, total)) if progress is not None else None
    ev = evaluate_arrays(
        vectors,
        ids,
        labels,
        label_names=label_names,
        sample=sample,
        seed=seed,
        k_list=k_list,
        chance_seed=chance_seed,
        device=device,
        progress=callback,
    )
    summary = {"index": index, "version": [list(v) for v in version]} | ev.summary
    for key, entry in summary["models"].items():
        entry["model"] = _model_info(store.get_manifest(index, key))
        entry["fetch_seconds"] = fetch_s[key]
        hubs = entry["hubness"]["top"]
        paths = _rel_paths(store, index, key, [h["id"] for h in hubs])
        for hub in hubs:
            hub["rel_path"] = paths.get(hub["id"])
    ev.summary = summary
    return ev


def _rel_paths(store: Store, index: str, model: str, ids: Sequence[int]) -> dict[int, str | None]:
    if not ids:
        return {}
    rows = store.get_rows(index, model, [int(i) for i in ids])
    return {int(r["id"]): r.get("rel_path") for r in rows}


def _label_names(store: Store, index: str, model: str, ids: np.ndarray, labels: np.ndarray) -> dict[int, str]:
    """label_id -> label_name, read from one stored row per label."""
    labelled = labels != M.UNLABELLED
    _, first = np.unique(labels[labelled], return_index=True)
    sample_ids = ids[labelled][first]
    if not len(sample_ids):
        return {}
    rows = store.get_rows(index, model, [int(i) for i in sample_ids])
    return {int(r["label_id"]): str(r.get("label_name") or r["label_id"]) for r in rows}
