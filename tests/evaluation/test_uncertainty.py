"""Confidence intervals, paired tests, Holm and the RRF fusion, each against an independent computation:
scipy.stats.bootstrap / binomtest / permutation_test, a plain per-query loop (reference.py), exact
Fractions for RRF, and hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as ss

from embedsvc.evaluation import metrics as M
from embedsvc.evaluation import report
from embedsvc.evaluation import stats as S
from embedsvc.evaluation.runner import FUSED, evaluate_arrays
from embedsvc.evaluation.schemas import NO_DIFFERENCE, EvalResponse
from tests.evaluation import reference

RESAMPLES = 2000


def two_models(seed: int = 0, n: int = 42) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A clear model, a noisy one; one unlabelled row and one single-member class (R = 0, left out)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), n // 4 + 1)[:n]
    labels[0], labels[1] = -1, 9
    ids = rng.permutation(np.arange(100, 100 + n))
    vectors = {
        "clear": (rng.normal(size=(n, 6)) + 2.0 * labels[:, None]).astype(np.float32),
        "noisy": (rng.normal(size=(n, 6)) + 0.4 * labels[:, None]).astype(np.float32),
    }
    return ids, labels, vectors


def scipy_ci(x: np.ndarray, seed: int, resamples: int = RESAMPLES) -> tuple[float, float]:
    """SciPy's percentile bootstrap, drawing its indices in the same batches as ours."""
    res = ss.bootstrap(
        (np.asarray(x, dtype=np.float64),),
        np.mean,
        n_resamples=resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
        batch=S.resample_batch(len(x)),
        vectorized=True,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@pytest.fixture(scope="module")
def evaluated():
    ids, labels, vectors = two_models()
    ev = evaluate_arrays(vectors, ids, labels, ci_resamples=RESAMPLES, ci_seed=7, k_list=[1, 5, 10])
    query_ids = ev.per_query["id"].tolist()
    ref = {key: reference.per_query(v, ids, labels, query_ids, ev.summary["k_list"]) for key, v in vectors.items()}
    return ev, ref, (ids, labels, vectors)


def test_metric_cis_are_scipys_percentile_bootstrap_of_the_per_query_values(evaluated) -> None:
    ev, ref, _ = evaluated
    assert ev.summary["queries"]["n_without_relevant"] == 1  # the single-member class is not resampled
    for key in ("clear", "noisy"):
        entry = ev.summary["models"][key]
        for metric in ("precision@1", "precision@5", "hit@5", "map@10"):
            values = np.array(ref[key][metric])
            assert len(values) == ev.summary["queries"]["n_evaluated"]
            assert entry["metrics"][metric] == pytest.approx(values.mean())
            assert entry["metrics_ci"][metric] == pytest.approx(scipy_ci(values, seed=7), abs=1e-12)
            low, high = entry["metrics_ci"][metric]
            assert low <= entry["metrics"][metric] <= high


def test_bootstrap_matches_a_plain_loop_over_the_same_draws() -> None:
    values = np.random.default_rng(3).random((25, 2))
    got = S.bootstrap_means(values, 300, seed=11)
    draws = np.random.default_rng(11).integers(0, 25, (300, 25))  # one batch: 300 x 25 fits
    want = np.array([[sum(values[j, c] for j in row) / 25 for c in range(2)] for row in draws])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    ordered = sorted(want[:, 0])

    def linear(q: float) -> float:  # the linear-interpolation quantile, by hand
        pos = q * (len(ordered) - 1)
        lo = math.floor(pos)
        return ordered[lo] + (ordered[min(lo + 1, len(ordered) - 1)] - ordered[lo]) * (pos - lo)

    assert S.percentile_ci(got)[0] == pytest.approx([linear(0.025), linear(0.975)], rel=1e-12)
    constant = S.percentile_ci(S.bootstrap_means(np.full((9, 1), 0.25), 100, seed=0))
    assert constant.tolist() == [[0.25, 0.25]]


def test_paired_ci_is_the_bootstrap_of_the_per_query_difference(evaluated) -> None:
    ev, ref, _ = evaluated
    paired = {(p["a"], p["b"], p["metric"]): p for p in ev.summary["paired"]}
    for metric in ("precision@5", "map@10", "precision@1"):
        diff = np.array(ref["clear"][metric]) - np.array(ref["noisy"][metric])
        entry = paired[("clear", "noisy", metric)]
        assert entry["diff"] == pytest.approx(diff.mean())
        assert entry["ci"] == pytest.approx(scipy_ci(diff, seed=7), abs=1e-9)
        assert entry["n_queries"] == len(diff)


def test_binary_metrics_use_mcnemars_exact_test(evaluated) -> None:
    ev, ref, _ = evaluated
    for p in ev.summary["paired"]:
        if p["a"] == "clear" and p["metric"] in ("precision@1", "hit@5", "hit@1"):
            a, b = np.array(ref["clear"][p["metric"]], bool), np.array(ref["noisy"][p["metric"]], bool)
            only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
            want = ss.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
            assert p["test"] == "mcnemar_exact"
            assert p["p_value"] == pytest.approx(want, rel=1e-9)
    tests = {p["metric"]: p["test"] for p in ev.summary["paired"]}
    assert tests["knn_top1"] == tests["knn_top1_weighted"] == tests["map@1"] == "mcnemar_exact"
    assert tests["precision@5"] == tests["map@10"] == "permutation"


@pytest.mark.parametrize("only_a,only_b", [(3, 10), (0, 5), (7, 7), (0, 0), (100, 140), (2000, 2100), (1, 0)])
def test_mcnemar_equals_scipy_binomtest(only_a: int, only_b: int) -> None:
    both = 4  # concordant pairs do not matter
    a = np.r_[np.ones(only_a + both, bool), np.zeros(only_b, bool)]
    b = np.r_[np.zeros(only_a, bool), np.ones(both + only_b, bool)]
    want = ss.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    assert S.mcnemar_exact(a, b) == pytest.approx(want, rel=1e-9)


def test_permutation_p_value_against_a_loop_and_scipys_exact_test() -> None:
    d = np.array([0.2, -0.1, 0.4, 0.3, 0.0, 0.5, -0.2, 0.1, 0.3, 0.2])
    got = S.sign_flip_p_values(d[:, None], 10_000, seed=0)[0]
    rng = np.random.default_rng((0, 1))  # one batch: 10,000 x 10 fits
    signs = rng.integers(0, 2, (10_000, 10)) * 2 - 1
    observed = abs(sum(d))
    extreme = sum(1 for row in signs if abs(sum(s * x for s, x in zip(row, d, strict=True))) >= observed - 1e-12)
    assert got == (1 + extreme) / 10_001
    exact = ss.permutation_test(
        (d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples", n_resamples=2**10, vectorized=True
    ).pvalue  # all 1,024 sign patterns: the exact p
    assert exact == pytest.approx(60 / 1024)
    assert got == pytest.approx(exact, abs=0.01)  # Monte Carlo error of 10,000 draws is ~0.0024
    assert S.sign_flip_p_values(np.zeros((8, 1)), 500, seed=0)[0] == 1.0


def test_holm_by_hand() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    assert S.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert S.holm([0.5, 0.3]) == pytest.approx([0.6, 0.6])  # 0.3 x 2 = 0.6; 0.5 x 1 lifted to 0.6
    assert S.holm([0.9, 0.02, 0.02]) == pytest.approx([0.9, 0.06, 0.06])  # 0.02 x 3, 0.02 x 2 -> 0.06, 0.9 x 1
    assert S.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # 0.6 x 2 = 1.2 capped at 1, 0.7 lifted to it
    assert S.holm([]) == []


def test_p_holm_is_adjusted_over_every_comparison_of_the_report(evaluated) -> None:
    ev, _, _ = evaluated
    paired = ev.summary["paired"]
    n_metrics = len(ev.summary["models"]["clear"]["metrics"])
    assert len(paired) == ev.summary["uncertainty"]["n_comparisons"] == 3 * n_metrics  # clear/noisy + fused vs each
    p = np.array([e["p_value"] for e in paired])
    order = np.argsort(p, kind="stable")
    running, want = 0.0, np.empty(len(p))
    for i, j in enumerate(order):  # the textbook step-down loop
        running = max(running, min(1.0, (len(p) - i) * p[j]))
        want[j] = running
    assert [e["p_holm"] for e in paired] == pytest.approx(want.tolist())
    for e in paired:
        if e["p_holm"] < 0.05:
            winner, loser = (e["a"], e["b"]) if e["diff"] > 0 else (e["b"], e["a"])
            assert e["verdict"] == f"{winner} better than {loser}"
        else:
            assert e["verdict"] == NO_DIFFERENCE
    top = {(e["a"], e["b"], e["metric"]): e for e in paired}[("clear", "noisy", "map@10")]
    assert top["verdict"] == "clear better than noisy"  # a 2.0 vs 0.4 class separation is not noise


def test_rrf_on_a_hand_made_ranking() -> None:
    # query 0: model A ranks rows 1, 2, 3; model B ranks 3, 2, 4.
    # row 2: 1/62 + 1/62 = 0.032258; row 3: 1/63 + 1/61 = 0.032266; row 1: 1/61; row 4: 1/63.
    # query 1: A 5, 6, 7 and B 7, 8, 5: rows 5 and 7 tie exactly (1/61 + 1/63): the smaller row first.
    a = np.array([[1, 2, 3], [5, 6, 7]])
    b = np.array([[3, 2, 4], [7, 8, 5]])
    rows, scores = M.reciprocal_rank_fusion([a, b], out_k=3)
    assert rows.tolist() == [[3, 2, 1], [5, 7, 6]]
    assert scores[0].tolist() == pytest.approx([1 / 63 + 1 / 61, 2 / 62, 1 / 61])
    assert scores[1].tolist() == pytest.approx([1 / 61 + 1 / 63, 1 / 61 + 1 / 63, 1 / 62])  # 6 and 8 tie: 6
    single, _ = M.reciprocal_rank_fusion([a], out_k=3)
    assert single.tolist() == a.tolist()  # one ranking fuses to itself
    with pytest.raises(ValueError):
        M.reciprocal_rank_fusion([a, b], out_k=4)


def test_fused_entry_equals_exact_rrf_of_the_full_rankings(evaluated) -> None:
    ev, _, (ids, labels, vectors) = evaluated
    fused = ev.summary["models"][FUSED]
    assert ev.summary["fusion"] == {"key": FUSED, "method": "rrf", "k": 60, "of": ["clear", "noisy"], "depth": 41}
    row_of = {int(i): r for r, i in enumerate(ids)}
    sums: dict[str, float] = {"precision@1": 0.0, "precision@5": 0.0, "hit@5": 0.0, "knn_top1": 0.0}
    evaluated_ids = ev.per_query["id"][ev.per_query["evaluable"]].tolist()
    for qid in evaluated_ids:
        q = row_of[qid]
        rankings = [[i for _, i, _ in reference.ranked(v, ids, q)] for v in vectors.values()]
        order = reference.rrf_ranking(rankings)
        rel = [labels[row_of[i]] == labels[q] for i in order]
        sums["precision@1"] += rel[0]
        sums["precision@5"] += sum(rel[:5]) / 5
        sums["hit@5"] += any(rel[:5])
        sums["knn_top1"] += reference.vote([int(labels[row_of[i]]) for i in order[:20]], [1.0] * 20) == labels[q]
    for metric, total in sums.items():
        assert fused["metrics"][metric] == pytest.approx(total / len(evaluated_ids)), metric
    assert ev.per_query[f"{FUSED}:top1_id"].tolist()  # per-query CSV columns exist for the fusion too
    pairs = {(p["a"], p["b"]) for p in ev.summary["paired"]}
    assert pairs == {("clear", "noisy"), (FUSED, "clear"), (FUSED, "noisy")}
    assert set(ev.summary["cross_model"]["agreement"]["only_right"]) == {"clear", "noisy"}  # singles only


def test_all_equal_models_differ_by_nothing() -> None:
    ids, labels, vectors = two_models(seed=2)
    same = {"one": vectors["noisy"], "two": vectors["noisy"].copy()}
    ev = evaluate_arrays(same, ids, labels, ci_resamples=500)
    s = ev.summary
    fused, one = s["models"][FUSED]["metrics"], s["models"]["one"]["metrics"]
    # RRF of one ranking twice is that ranking; only the weighted vote differs (RRF scores, not 1/d)
    assert {k: v for k, v in fused.items() if k != "knn_top1_weighted"} == {
        k: v for k, v in one.items() if k != "knn_top1_weighted"
    }
    for p in s["paired"]:
        if p["a"] == FUSED and p["metric"] == "knn_top1_weighted":
            continue
        assert p["diff"] == 0 and p["ci"] == [0.0, 0.0]
        assert p["p_value"] == 1.0 and p["p_holm"] == 1.0 and p["verdict"] == NO_DIFFERENCE
    assert len([p for p in s["paired"] if (p["a"], p["b"]) == ("one", "two")]) == len(one)
    md = report.markdown_table(s)
    assert "- one vs two: no significant difference on kNN@20, kNN@20 (1/d), P@1," in md
    assert "one better" not in md and "two better" not in md


def test_ties_everywhere_identical_vectors() -> None:
    """Every distance ties: rankings are by id for each model and for the fusion; CIs of constants are points."""
    n = 12
    labels = np.repeat([0, 1, 2], 4)
    vecs = np.ones((n, 3), np.float32)
    ev = evaluate_arrays({"a": vecs, "b": vecs * 2}, np.arange(n), labels, ci_resamples=300, k_list=[1, 3])
    fused = ev.per_query[f"{FUSED}:top1_id"].tolist()
    assert fused == ev.per_query["a:top1_id"].tolist() == [1] + [0] * (n - 1)  # nearest = lowest other id
    ref = reference.per_query(vecs, np.arange(n), labels, list(range(n)), [1, 3])
    for metric in ("precision@1", "precision@3"):
        got = ev.summary["models"]["a"]["metrics_ci"][metric]
        assert got == pytest.approx(scipy_ci(np.array(ref[metric]), seed=0, resamples=300), abs=1e-12)
    assert all(p["diff"] == 0 and p["p_holm"] == 1.0 for p in ev.summary["paired"])


def test_one_model_has_cis_but_no_pairs_and_no_fusion() -> None:
    ids, labels, vectors = two_models()
    ev = evaluate_arrays({"clear": vectors["clear"]}, ids, labels, ci_resamples=200)
    s = ev.summary
    assert list(s["models"]) == ["clear"] and s["paired"] == [] and s["fusion"] is None
    assert s["uncertainty"]["n_comparisons"] == 0
    assert set(s["models"]["clear"]["metrics_ci"]) == set(s["models"]["clear"]["metrics"])
    md = report.markdown_table(s)
    assert " vs " not in md and "[" in md.split("| clear |")[1]
    assert "Paired tests" not in md


def test_seeded_and_no_fusion_on_request() -> None:
    ids, labels, vectors = two_models()
    a = evaluate_arrays(vectors, ids, labels, ci_resamples=300, ci_seed=5, fuse=False).summary
    b = evaluate_arrays(vectors, ids, labels, ci_resamples=300, ci_seed=5, fuse=False).summary
    c = evaluate_arrays(vectors, ids, labels, ci_resamples=300, ci_seed=6, fuse=False).summary
    assert FUSED not in a["models"] and a["fusion"] is None
    assert a["paired"] == b["paired"] and a["models"]["clear"]["metrics_ci"] == b["models"]["clear"]["metrics_ci"]
    assert a["models"]["noisy"]["metrics_ci"] != c["models"]["noisy"]["metrics_ci"]
    with pytest.raises(ValueError, match="fused_rrf"):
        evaluate_arrays({"a": vectors["clear"], FUSED: vectors["noisy"]}, ids, labels, ci_resamples=10)


def test_nothing_evaluable_gives_empty_intervals() -> None:
    labels = np.array([0, 1, 2, 3])  # every label once: no query has a relevant neighbour
    vecs = np.eye(4, dtype=np.float32)
    s = evaluate_arrays({"a": vecs, "b": vecs}, np.arange(4), labels, ci_resamples=50).summary
    assert s["paired"] == [] and all(v is None for v in s["models"]["a"]["metrics_ci"].values())
    report.markdown_table(s)  # renders without intervals


def test_summary_validates_as_the_api_response(evaluated) -> None:
    ev, _, _ = evaluated
    body = EvalResponse.model_validate(
        ev.summary
        | {"index": "x", "version": [], "cached": False, "computed_at": "2026-01-01T00:00:00Z"}
        | {"compute_seconds": 0.0}
    )
    assert body.models[FUSED].metrics_ci == ev.summary["models"][FUSED]["metrics_ci"]
    assert [p.says() for p in body.paired] == [p["verdict"] for p in ev.summary["paired"]]
    assert body.fusion is not None and body.fusion.of == ["clear", "noisy"]
