"""Every metric against hand-computed answers and against the per-query reference in reference.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedsvc.evaluation import metrics as M
from embedsvc.evaluation.runner import evaluate_arrays, sample_queries, shuffled_labels
from tests.evaluation import reference

A, B, C = 0, 1, 2


def line(*xs: float) -> np.ndarray:
    """Points on a line: hand-checkable distances (all exact in float32)."""
    return np.array(xs, dtype=np.float32)[:, None]


# --- neighbours ----------------------------------------------------------------------------------


def test_ties_are_broken_by_id_even_at_the_k_boundary() -> None:
    # From 0, rows 1 and 2 are both at distance 1: row order must decide, also when only one fits.
    vecs = line(0, 1, -1, 2, -2)
    nb = M.exact_knn(vecs, np.array([0]), 1)
    assert nb.rows.tolist() == [[1]]
    nb = M.exact_knn(vecs, np.array([0]), 4)
    assert nb.rows.tolist() == [[1, 2, 3, 4]]
    assert nb.dist.tolist() == [[1, 1, 4, 4]]


def test_runner_breaks_ties_by_id_not_by_input_order() -> None:
    # Same points, ids given in reverse: the neighbour at -1 (id 7) now wins over +1 (id 8).
    ev = evaluate_arrays({"m": line(0, 1, -1)}, np.array([9, 8, 7]), np.array([A, A, B]), chance_seed=None)
    top1 = dict(zip(ev.per_query["id"].tolist(), ev.per_query["m:top1_id"].tolist(), strict=True))
    assert top1[9] == 7


def test_many_identical_vectors_take_the_lowest_ids() -> None:
    vecs = np.ones((40, 3), np.float32)
    nb = M.exact_knn(vecs, np.arange(40), 5, chunk_elems=40 * 7)  # several chunks
    for q in range(40):
        assert nb.rows[q].tolist() == [r for r in range(40) if r != q][:5]


def test_leave_one_out_excludes_self_but_keeps_exact_duplicates() -> None:
    vecs = line(0, 0, 5, 9)
    nb = M.exact_knn(vecs, np.arange(4), 3)
    assert all(q not in nb.rows[q] for q in range(4))
    assert nb.rows[0, 0] == 1 and nb.dist[0, 0] == 0
    assert nb.rows[1, 0] == 0


def test_k_is_clipped_to_n_minus_one() -> None:
    nb = M.exact_knn(line(0, 1, 3), np.arange(3), 100)
    assert nb.rows.shape == (3, 2)
    assert M.effective_ks([1, 5, 10, 20, 100], 3) == [1, 2]
    ev = evaluate_arrays({"m": line(0, 1, 3, 4)}, np.arange(4), np.array([A, A, B, B]))
    assert ev.summary["k_list"] == [1, 3]


def test_chunked_search_matches_a_single_chunk() -> None:
    rng = np.random.default_rng(3)
    vecs = rng.integers(-3, 4, size=(57, 5)).astype(np.float32)
    one = M.exact_knn(vecs, np.arange(57), 12)
    many = M.exact_knn(vecs, np.arange(57), 12, chunk_elems=57 * 4)
    np.testing.assert_array_equal(one.rows, many.rows)


# --- per-query metrics, by hand ------------------------------------------------------------------


def test_map_is_normalised_by_min_r_k_not_by_hits() -> None:
    # Query at 0 (label A) has 3 other A rows: at 1 (rank 1) and two far away (ranks 6, 7).
    # Top 5: A B B B B. AP@5 = (1/1) / min(R=3, 5) = 1/3; dividing by hits found would give 1.0.
    vecs = line(0, 1, 2, 3, 4, 5, 10, 11)
    labels = np.array([A, A, B, B, B, B, A, A])
    rel = M.relevance(labels[M.exact_knn(vecs, np.array([0]), 7).rows], labels[[0]])
    assert rel[0].tolist() == [True, False, False, False, False, True, True]
    n_rel = M.others_with_label(labels, labels[[0]])
    assert n_rel.tolist() == [3]
    assert M.average_precision_at(rel, 5, n_rel)[0] == pytest.approx(1 / 3)
    # k=7: (1/1 + 2/6 + 3/7) / min(3, 7)
    assert M.average_precision_at(rel, 7, n_rel)[0] == pytest.approx((1 + 2 / 6 + 3 / 7) / 3)
    assert M.precision_at(rel, 5)[0] == pytest.approx(1 / 5)
    assert M.hit_at(rel, 1)[0] == 1.0


def test_precision_when_k_exceeds_the_class_size() -> None:
    # Class A has 3 members: each A query has R=2, so P@5 is at most 2/5 even when ranked perfectly.
    vecs = line(0, 1, 2, 50, 51, 52, 53, 54)
    labels = np.array([A, A, A, B, B, B, B, B])
    ev = evaluate_arrays({"m": vecs}, np.arange(8), labels, k_list=[5], chance_seed=None)
    per_class = {r["label_id"]: r for r in ev.summary["models"]["m"]["per_class"]}
    m = ev.summary["models"]["m"]["metrics"]
    # A queries: 2 of 5 relevant; B queries: 4 of 5 relevant (B has 5 members)
    assert m["precision@5"] == pytest.approx((3 * 2 / 5 + 5 * 4 / 5) / 8)
    assert m["map@5"] == pytest.approx(1.0)  # every relevant row ranked first: perfect under min(R, k)
    assert (per_class[A]["k"], per_class[A]["precision"]) == (7, pytest.approx(2 / 7))  # k = min(10, n - 1)


def test_single_member_labels_and_unlabelled_rows() -> None:
    # C has one member (R = 0): a query that no ranking can satisfy is left out of every average.
    # Row 4 is unlabelled (-1): never a query, but it is a neighbour (and never relevant).
    vecs = line(0, 1, 10, 11, 0.5, 30)
    labels = np.array([A, A, B, B, -1, C])
    ev = evaluate_arrays({"m": vecs}, np.arange(6), labels, k_list=[1, 2], chance_seed=None)
    q = ev.summary["queries"]
    assert (q["n_rows"], q["n_labelled"], q["n_queries"], q["n_evaluated"], q["n_without_relevant"]) == (6, 5, 5, 4, 1)
    assert 4 not in ev.per_query["id"]
    m = ev.summary["models"]["m"]["metrics"]
    # A queries: row 4 (unlabelled, 0.5 away) is nearest for both -> P@1 = 0, but hit@2 = 1.
    # B queries: each other's nearest -> P@1 = 1.
    assert m["precision@1"] == pytest.approx(0.5)
    assert m["hit@2"] == pytest.approx(1.0)
    confusions = ev.summary["models"]["m"]["confusions"]
    assert confusions == [{"query_label": "0", "neighbour_label": "(unlabelled)", "count": 2}]


def test_knn_vote_ties_go_to_the_nearest_label() -> None:
    labels = np.array([[B, A, A, B], [A, B, -1, -1], [-1, -1, -1, -1], [C, A, A, C]])
    assert M.knn_vote(labels).tolist() == [B, A, -1, C]
    # weighted: one very close A outweighs two far Bs
    assert M.knn_vote(np.array([[A, B, B]]), np.array([[10.0, 1.0, 1.0]])).tolist() == [A]
    assert M.knn_vote(np.array([[A, B, B]])).tolist() == [B]
    np.testing.assert_allclose(M.distance_weights(np.array([[4.0, 0.0]]), eps=0.5), [[1 / 2.5, 2.0]])


def test_jaccard_skewness_and_agreement_by_hand() -> None:
    a = np.array([[1, 2, 3], [4, 5, 6]])
    b = np.array([[3, 2, 9], [7, 8, 9]])
    np.testing.assert_allclose(M.jaccard(a, b), [2 / 4, 0.0])
    assert M.skewness(np.array([1, 1, 1])) == 0.0
    # values 0,0,0,3: mean 3/4, m2 = 27/16, m3 = 81/32 -> g1 = (81/32) / (27/16)^1.5
    assert M.skewness(np.array([0, 0, 0, 3])) == pytest.approx((81 / 32) / (27 / 16) ** 1.5)
    assert M.k_occurrence(np.array([[0, 1], [1, 2]]), 4).tolist() == [1, 2, 1, 0]
    agree = M.agreement({"x": np.array([1, 1, 0, 0]), "y": np.array([1, 0, 1, 0]), "z": np.array([1, 0, 0, 0])})
    assert agree == {"all_right": 1, "none_right": 1, "only_right": {"x": 1, "y": 1, "z": 0}}


# --- the whole summary against the reference -------------------------------------------------------


def random_index(seed: int, n: int, n_models: int = 3, n_classes: int = 4):
    """Small-integer vectors (distances exact in float32, many ties), shuffled ids, some unlabelled
    rows and a single-member label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    labels[rng.choice(n, size=max(1, n // 10), replace=False)] = -1
    labels[rng.integers(n)] = 99  # a label with one member (unless it landed on... it is the only 99)
    ids = rng.permutation(np.arange(1000, 1000 + 3 * n))[:n]
    vectors = {
        f"m{i}": (rng.integers(-2, 3, size=(n, 3 + i)) + (labels[:, None] % 5) * (i % 2)).astype(np.float32)
        for i in range(n_models)
    }
    return vectors, ids, labels


def assert_matches_reference(ev, ref) -> None:
    s = ev.summary
    assert s["k_list"] == ref["k_list"]
    assert sorted(ev.per_query["id"][ev.per_query["evaluable"]].tolist()) == sorted(ref["evaluable"])
    for key, r in ref["models"].items():
        got = s["models"][key]
        assert set(got["metrics"]) == set(r["metrics"])
        for name, value in r["metrics"].items():
            assert got["metrics"][name] == pytest.approx(value, abs=1e-12), (key, name)
        got_class = {c["label_id"]: (c["precision"], c["n_queries"]) for c in got["per_class"]}
        assert got_class.keys() == r["per_class"].keys()
        for label, (p10, count) in r["per_class"].items():
            assert got_class[label] == (pytest.approx(p10), count)
        want_conf = [
            (str(a) if a != -1 else "(unlabelled)", str(b) if b != -1 else "(unlabelled)", c)
            for a, b, c in r["confusions"][:10]
        ]
        assert [(c["query_label"], c["neighbour_label"], c["count"]) for c in got["confusions"]] == want_conf
        assert got["hubness"]["skewness"] == pytest.approx(r["hub_skewness"], abs=1e-9)
        assert [(h["id"], h["count"]) for h in got["hubness"]["top"]] == r["hubs"]
    for pair in s["cross_model"]["jaccard"]:
        assert pair["mean_jaccard"] == pytest.approx(ref["jaccard"][(pair["a"], pair["b"])])
    agree = s["cross_model"]["agreement"]
    assert {k: agree[k] for k in ("all_right", "none_right", "only_right")} == ref["agreement"]


@pytest.mark.parametrize(("seed", "n", "sample"), [(0, 60, None), (1, 45, 20), (2, 30, None), (3, 12, None)])
def test_summary_matches_reference(seed: int, n: int, sample: int | None) -> None:
    vectors, ids, labels = random_index(seed, n)
    ev = evaluate_arrays(vectors, ids, labels, sample=sample, seed=seed, k_list=[1, 5, 10, 20, 100])
    queries = ev.per_query["id"].tolist()
    if sample is None:
        assert sorted(queries) == sorted(int(i) for i, lab in zip(ids, labels, strict=True) if lab != -1)
    else:
        assert len(queries) == sample
    ref = reference.evaluate(vectors, ids, labels, queries, [1, 5, 10, 20, 100])
    assert_matches_reference(ev, ref)


@settings(max_examples=25, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), n=st.integers(3, 25), n_classes=st.integers(1, 5))
def test_summary_matches_reference_property(seed: int, n: int, n_classes: int) -> None:
    vectors, ids, labels = random_index(seed, n, n_models=2, n_classes=n_classes)
    if (labels != -1).sum() == 0:
        return
    ev = evaluate_arrays(vectors, ids, labels, k_list=[1, 3, 10])
    ref = reference.evaluate(vectors, ids, labels, ev.per_query["id"].tolist(), [1, 3, 10])
    assert_matches_reference(ev, ref)


def test_chance_scores_the_same_neighbours_against_shuffled_labels() -> None:
    vectors, ids, labels = random_index(5, 40, n_models=1)
    ev = evaluate_arrays(vectors, ids, labels, chance_seed=7)
    order = np.argsort(ids)
    shuffled = shuffled_labels(labels[order], 7)
    assert sorted(shuffled.tolist()) == sorted(labels.tolist())  # class sizes kept
    assert (shuffled == -1).tolist() == (labels[order] == -1).tolist()  # unlabelled stay unlabelled
    queries = ev.per_query["id"].tolist()
    ref = reference.evaluate({"m0": vectors["m0"][order]}, ids[order], shuffled, queries, [1, 5, 10, 20, 100])
    for name, value in ref["models"]["m0"]["metrics"].items():
        assert ev.summary["models"]["m0"]["chance"][name] == pytest.approx(value), name


# --- sampling --------------------------------------------------------------------------------------


def test_sampling_is_seeded_and_reproducible() -> None:
    labels = np.array([0, 1, -1] * 100)
    one = sample_queries(labels, 50, seed=3)
    assert one.tolist() == sample_queries(labels, 50, seed=3).tolist()
    assert one.tolist() != sample_queries(labels, 50, seed=4).tolist()
    assert len(set(one.tolist())) == 50 and (labels[one] != -1).all()
    assert sample_queries(labels, 10_000, seed=0).tolist() == np.flatnonzero(labels != -1).tolist()
    vectors, ids, lab = random_index(8, 50, n_models=1)
    a = evaluate_arrays(vectors, ids, lab, sample=15, seed=1)
    b = evaluate_arrays(vectors, ids, lab, sample=15, seed=1)
    assert a.summary["models"]["m0"]["metrics"] == b.summary["models"]["m0"]["metrics"]
    assert a.per_query["id"].tolist() == b.per_query["id"].tolist()
