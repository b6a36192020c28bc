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
from embedsvc.evaluation import stats as S
from embedsvc.evaluation.schemas import verdict
from embedsvc.fusion import FUSE_DEPTH  # each ranking is fused over its top FUSE_DEPTH (at least the largest cut-off)
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
FUSED = "fused_rrf"

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


def metric_values(
    nb: M.Neighbours,
    labels: np.ndarray,
    query_rows: np.ndarray,
    ks: Sequence[int],
    *,
    knn_k: int = KNN_K,
    vote_weights: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-query value of every metric, over the evaluable queries (R >= 1) in query order.

    Each aggregate metric is the mean of its array; the bootstrap and the paired tests resample these.
    ``vote_weights`` (q, knn_k) replace 1/d in the weighted vote (a fused ranking has scores, not distances).
    """
    return _metric_values(nb, labels, query_rows, ks, knn_k=knn_k, vote_weights=vote_weights)[0]


def _metric_values(
    nb: M.Neighbours,
    labels: np.ndarray,
    query_rows: np.ndarray,
    ks: Sequence[int],
    *,
    knn_k: int = KNN_K,
    vote_weights: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``metric_values`` plus the unweighted kNN prediction of every query (the vote is the costly part)."""
    qlab = labels[query_rows]
    nlab = labels[nb.rows]
    n_rel = M.others_with_label(labels, qlab)
    ok = n_rel > 0
    rel = M.relevance(nlab, qlab)[ok]
    knn_k = min(knn_k, nb.rows.shape[1])
    weights = M.distance_weights(nb.dist[:, :knn_k]) if vote_weights is None else vote_weights[:, :knn_k]
    pred = M.knn_vote(nlab[:, :knn_k])
    out = {
        "knn_top1": (pred == qlab)[ok].astype(float),
        "knn_top1_weighted": (M.knn_vote(nlab[:, :knn_k], weights) == qlab)[ok].astype(float),
    }
    for k in ks:
        out[f"precision@{k}"] = M.precision_at(rel, k)
    for k in ks:
        out[f"hit@{k}"] = M.hit_at(rel, k)
    for k in ks:
        out[f"map@{k}"] = M.average_precision_at(rel, k, n_rel[ok])
    return out, pred


def score_model(
    nb: M.Neighbours,
    labels: np.ndarray,
    query_rows: np.ndarray,
    ks: Sequence[int],
    *,
    knn_k: int = KNN_K,
    class_k: int = CLASS_K,
    vote_weights: np.ndarray | None = None,
) -> tuple[dict[str, float | None], dict[str, np.ndarray]]:
    """Aggregate metrics for one model's neighbours, plus the per-query values behind them.

    Averages run over evaluable queries (R >= 1) only; see module ``metrics`` for the conventions.
    The per-query values of each metric (evaluable queries only) are in ``per_query["metric:<name>"]``.
    """
    qlab = labels[query_rows]
    nlab = labels[nb.rows]
    n_rel = M.others_with_label(labels, qlab)
    ok = n_rel > 0
    values, pred = _metric_values(nb, labels, query_rows, ks, knn_k=knn_k, vote_weights=vote_weights)
    out: dict[str, float | None] = {name: _mean(v) for name, v in values.items()}
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
    } | {f"metric:{name}": v for name, v in values.items()}
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
    ci_resamples: int = S.DEFAULT_RESAMPLES,
    ci_seed: int = 0,
    fuse: bool = True,
    device: str = "cpu",
    progress: Progress | None = None,
) -> Evaluation:
    """Leave-one-out evaluation of several models over the same rows (``ids``, ``labels`` shared).

    ``chance_seed``: also score the same neighbours against labels shuffled with that seed, the level
    a model with no idea of content would reach on this set (None skips it). ``ci_resamples`` and
    ``ci_seed``: the bootstrap CIs and paired tests (module ``stats``). ``fuse``: with two or more
    models, also evaluate their reciprocal rank fusion as the entry ``fused_rrf``.
    """
    if ci_resamples < 1:
        raise ValueError("ci_resamples must be at least 1")
    ids = np.asarray(ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    order = np.argsort(ids, kind="stable")  # tie-breaking by row index == by id
    ids, labels = ids[order], labels[order]
    n = len(ids)
    if n < 2:
        raise ValueError(f"an index needs at least 2 rows to evaluate, this one has {n}")
    if len(np.unique(ids)) != n:
        raise ValueError("duplicate ids")
    fuse = fuse and len(vectors) >= 2
    if fuse and FUSED in vectors:
        raise ValueError(f"a model may not be called {FUSED!r} (the fused entry's name)")
    names = {int(k): v for k, v in (label_names or {}).items()}

    def name(label: int) -> str:
        return "(unlabelled)" if label == M.UNLABELLED else names.get(label, str(label))

    ks = M.effective_ks(k_list, n)
    k_max = min(max([*ks, knn_k, HUB_K, JACCARD_K, CLASS_K]), n - 1)
    depth = max(k_max, min(FUSE_DEPTH, n - 1)) if fuse else k_max  # each model's list the fusion reads
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
    values: dict[str, dict[str, np.ndarray]] = {}
    deep: dict[str, np.ndarray] = {}

    def add_entry(key: str, nb: M.Neighbours, seconds: float, vote_weights: np.ndarray | None = None) -> None:
        scores, pq = score_model(nb, labels, query_rows, ks, knn_k=knn_k, vote_weights=vote_weights)
        values[key] = {m: pq[f"metric:{m}"] for m in scores}
        entry: dict[str, Any] = {"metrics": scores, "search_seconds": round(seconds, 3)}
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
            entry["chance"], _ = score_model(nb, chance_labels, query_rows, ks, knn_k=knn_k, vote_weights=vote_weights)
        summary["models"][key] = entry
        for col in ("top1_label", "correct@1", f"precision@{class_k}", f"ap@{class_k}", "knn_pred"):
            per_query[f"{key}:{col}"] = pq[col]
        per_query[f"{key}:top1_id"] = ids[pq["top1_row"]]
        if key != FUSED:
            neighbour_rows[key] = nb.rows
            correct[key] = pq["correct@1"]

    for key, vecs in vectors.items():
        vecs = np.asarray(vecs)[order]
        t0 = time.perf_counter()
        nb = M.exact_knn(vecs, query_rows, depth, device=device, progress=progress)
        search_s = time.perf_counter() - t0
        deep[key] = nb.rows
        add_entry(key, M.Neighbours(nb.rows[:, :k_max], nb.dist[:, :k_max]), search_s)

    summary["fusion"] = None
    if fuse:
        t0 = time.perf_counter()
        rows, scores = M.reciprocal_rank_fusion(list(deep.values()), k_max, k=M.RRF_K)
        add_entry(FUSED, M.Neighbours(rows, np.zeros(rows.shape, np.float32)), time.perf_counter() - t0, scores)
        of = list(vectors)
        summary["models"][FUSED]["model"] = {
            "model_name": "rrf",
            "display_name": f"reciprocal rank fusion (k={M.RRF_K}) of {', '.join(of)}",
            "weights": f"RRF (k={M.RRF_K}) of {', '.join(of)}",
        }
        summary["fusion"] = {"key": FUSED, "method": "rrf", "k": M.RRF_K, "of": of, "depth": depth}

    summary["cross_model"] = _cross_model(neighbour_rows, correct, evaluable, ids[query_rows], n)
    summary["uncertainty"], summary["paired"] = _uncertainty(summary["models"], values, ci_resamples, ci_seed)
    per_query["evaluable"] = evaluable
    return Evaluation(summary, per_query)


def _uncertainty(
    models: dict[str, Any], values: Mapping[str, Mapping[str, np.ndarray]], resamples: int, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Add ``metrics_ci`` to every entry of ``models``; return the method's description and the paired tests.

    One bootstrap over the evaluated queries serves every model and metric (same resampled queries),
    so a pair's CI of the difference is the paired bootstrap of the per-query difference.
    """
    keys = list(values)
    metric_names = list(next(iter(values.values()))) if keys else []
    n = len(values[keys[0]][metric_names[0]]) if keys and metric_names else 0
    info: dict[str, Any] = {
        "confidence": S.CONFIDENCE,
        "method": "percentile bootstrap over the evaluated queries",
        "resamples": resamples,
        "seed": seed,
        "alpha": S.SIGNIFICANCE,
        "adjustment": "holm",
        "tests": {S.MCNEMAR: "binary per-query metrics (kNN votes, P@1, hit@k)", S.PERMUTATION: "the others"},
        "n_comparisons": 0,
    }
    if n == 0:  # nothing evaluable: no intervals, nothing to compare
        for key in keys:
            models[key]["metrics_ci"] = dict.fromkeys(metric_names)
        return info, []
    columns = [(key, m) for key in keys for m in metric_names]
    matrix = np.stack([values[key][m] for key, m in columns], axis=1)
    boot = S.bootstrap_means(matrix, resamples, seed)
    ci = S.percentile_ci(boot)
    col = {c: i for i, c in enumerate(columns)}
    for key in keys:
        models[key]["metrics_ci"] = {m: ci[col[(key, m)]].tolist() for m in metric_names}
    singles = [k for k in keys if k != FUSED]
    pairs = [(a, b) for i, a in enumerate(singles) for b in singles[i + 1 :]]
    pairs += [(FUSED, b) for b in singles] if FUSED in keys else []
    paired: list[dict[str, Any]] = []
    if not pairs:  # one model: nothing to compare
        return info, []
    diff_boot = np.stack([boot[:, col[(a, m)]] - boot[:, col[(b, m)]] for a, b in pairs for m in metric_names], 1)
    diff_ci = S.percentile_ci(diff_boot)
    permuted = [(a, b, m) for a, b in pairs for m in metric_names if not S.is_binary_metric(m)]
    perm_of: dict[tuple[str, str, str], float] = {}
    if permuted:
        diffs = np.stack([values[a][m] - values[b][m] for a, b, m in permuted], 1)
        perm_of = dict(zip(permuted, S.sign_flip_p_values(diffs, resamples, seed).tolist(), strict=True))
    for j, (a, b, m) in enumerate((a, b, m) for a, b in pairs for m in metric_names):
        binary = S.is_binary_metric(m)
        paired.append(
            {
                "a": a,
                "b": b,
                "metric": m,
                "diff": float(values[a][m].mean() - values[b][m].mean()),
                "ci": diff_ci[j].tolist(),
                "p_value": S.mcnemar_exact(values[a][m], values[b][m]) if binary else perm_of[(a, b, m)],
                "test": S.MCNEMAR if binary else S.PERMUTATION,
                "n_queries": n,
            }
        )
    for entry, p in zip(paired, S.holm([e["p_value"] for e in paired]), strict=True):
        entry["p_holm"] = p
        entry["verdict"] = verdict(entry["a"], entry["b"], entry["diff"], p)
    info["n_comparisons"] = len(paired)
    return info, paired


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
    ci_resamples: int = S.DEFAULT_RESAMPLES,
    ci_seed: int = 0,
    fuse: bool = True,
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
        ci_resamples=ci_resamples,
        ci_seed=ci_seed,
        fuse=fuse,
        device=device,
        progress=callback,
    )
    summary = {"index": index, "version": [list(v) for v in version]} | ev.summary
    for key, entry in summary["models"].items():
        if key in fetched:  # the fused entry has no collection of its own; its rows are everyone's
            entry["model"] = _model_info(store.get_manifest(index, key))
            entry["fetch_seconds"] = fetch_s[key]
        hubs = entry["hubness"]["top"]
        paths = _rel_paths(store, index, key if key in fetched else keys[0], [h["id"] for h in hubs])
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
