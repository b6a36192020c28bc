"""The Evaluation page's pure helpers on hand-built reports whose answers are known.

The matrix must say "better" exactly where the report's rule does (Holm-adjusted p below 0.05, the
sign of A − B deciding who), read every cell from the row's side (a (B, A) entry negated), and leave
out pairs the report did not compare; the interval frame must carry each entry's own CI and mark the
fused entry as the fusion, not a backbone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from embedsvc.client import FUSED_KEY, EvalResponse
from embedsvc.evaluation.schemas import verdict as report_verdict  # the report's own wording
from embedsvc.webui import eval_view

METRICS = ("precision@1", "map@10")


def model_entry(values: dict[str, float], cis: dict[str, list[float] | None]) -> dict[str, Any]:
    return {
        "metrics": values,
        "metrics_ci": cis,
        "search_seconds": 0.0,
        "per_class": [],
        "worst_classes": [],
        "confusions": [],
        "hubness": {"k": 10, "skewness": 0.0, "top": []},
    }


def pair(a: str, b: str, metric: str, diff: float, p_holm: float, *, ci: tuple[float, float] = (-0.1, 0.3),
         verdict: bool = True) -> dict[str, Any]:
    """A paired entry; ``verdict=False`` leaves the wording out, as an older payload did."""
    entry = {"a": a, "b": b, "metric": metric, "diff": diff, "ci": list(ci), "p_value": p_holm / 3,
             "p_holm": p_holm, "test": "mcnemar_exact" if metric == "precision@1" else "permutation"}
    if verdict:
        entry["verdict"] = report_verdict(a, b, diff, p_holm)
    return entry


def report(models: dict[str, dict[str, Any]], paired: list[dict[str, Any]], fused_of: list[str] | None = None
           ) -> EvalResponse:
    return EvalResponse.model_validate(
        {
            "index": "known",
            "version": [],
            "k_list": [1, 10],
            "knn_k": 5,
            "queries": {"n_rows": 40, "n_labelled": 40, "n_classes": 4, "n_queries": 40, "n_evaluated": 40,
                        "n_without_relevant": 0, "sample": None, "seed": 0},
            "models": models,
            "cross_model": {"jaccard": [], "agreement": {"all_right": 0, "none_right": 0, "only_right": {},
                                                         "n_queries": 40}},
            "paired": paired,
            "fusion": {"key": FUSED_KEY, "method": "rrf", "k": 60, "of": fused_of, "depth": 39} if fused_of else None,
            "cached": False,
            "computed_at": datetime.now(UTC).isoformat(),
            "compute_seconds": 0.1,
        }
    )


@pytest.fixture
def known() -> EvalResponse:
    """good beats bad on P@1 (p_holm 0.01); fused vs good is not significant at exactly 0.05; fused beats
    bad just below it; good vs bad on mAP@10 is a tie with p 0; fused vs good on mAP@10 comes without a
    verdict field (older payload) and is significant."""
    models = {
        "good": model_entry({"precision@1": 0.8, "map@10": 0.6}, {"precision@1": [0.7, 0.9], "map@10": [0.5, 0.7]}),
        "bad": model_entry({"precision@1": 0.3, "map@10": 0.6}, {"precision@1": [0.2, 0.45], "map@10": [0.5, 0.7]}),
        FUSED_KEY: model_entry({"precision@1": 0.75, "map@10": 0.65}, {"precision@1": [0.6, 0.85], "map@10": None}),
    }
    paired = [
        pair("good", "bad", "precision@1", 0.5, 0.01, ci=(0.3, 0.7)),
        pair(FUSED_KEY, "good", "precision@1", -0.05, 0.05, ci=(-0.2, 0.1)),
        pair(FUSED_KEY, "bad", "precision@1", 0.45, 0.0499, ci=(0.2, 0.6)),
        pair("good", "bad", "map@10", 0.0, 0.0, ci=(0.0, 0.0)),
        pair(FUSED_KEY, "good", "map@10", 0.05, 0.001, ci=(0.01, 0.09), verdict=False),
    ]
    return report(models, paired, fused_of=["good", "bad"])


def cells(frame) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["A"], row["B"]): row for row in frame.to_dict("records")}


def expected_verdict(a: str, b: str, diff: float, p_holm: float) -> str:
    """The rule of the issue, written out independently: better only below 0.05, the sign says who."""
    if p_holm < 0.05 and diff > 0:
        return f"{a} better"
    if p_holm < 0.05 and diff < 0:
        return f"{b} better"
    return "no significant difference"


def test_matrix_says_better_only_below_the_holm_threshold(known: EvalResponse) -> None:
    got = cells(eval_view.win_matrix(known, "precision@1"))
    assert len(got) == 9  # 3 x 3, every pair compared once in the report
    for p in (p for p in known.paired if p.metric == "precision@1"):
        for a, b, sign in ((p.a, p.b, 1), (p.b, p.a, -1)):
            cell = got[(a, b)]
            assert cell["verdict"] == expected_verdict(a, b, sign * p.diff, p.p_holm), (a, b)
            assert cell["diff"] == pytest.approx(sign * p.diff)
            low, high = p.ci if sign > 0 else (-p.ci[1], -p.ci[0])
            assert (cell["low"], cell["high"]) == pytest.approx((low, high))
            assert cell["p_holm"] == p.p_holm and cell["says"] == p.says()
    assert got[("good", "bad")]["outcome"] == eval_view.ROW_BETTER
    assert got[("bad", "good")]["outcome"] == eval_view.COLUMN_BETTER
    assert got[("bad", "good")]["verdict"] == "good better"
    assert got[(FUSED_KEY, "good")]["verdict"] == "no significant difference"  # p_holm == 0.05 is not below
    assert got[("bad", FUSED_KEY)]["verdict"] == f"{FUSED_KEY} better"  # 0.0499 is
    assert all(got[(k, k)]["outcome"] == eval_view.SAME_MODEL for k in known.models)


def test_matrix_of_another_metric_ties_and_older_payloads(known: EvalResponse) -> None:
    got = cells(eval_view.win_matrix(known, "map@10"))
    assert got[("good", "bad")]["verdict"] == "no significant difference"  # p 0 but no difference at all
    assert got[(FUSED_KEY, "good")]["verdict"] == f"{FUSED_KEY} better"  # recomputed: the entry had no verdict
    assert got[("good", FUSED_KEY)]["outcome"] == eval_view.COLUMN_BETTER
    assert ("bad", FUSED_KEY) not in got and (FUSED_KEY, "bad") not in got  # not compared on this metric
    assert eval_view.win_matrix(known, "hit@5").query("A != B").empty


def test_interval_frame_marks_the_fused_entry_and_skips_missing_intervals(known: EvalResponse) -> None:
    assert eval_view.ci_metrics(known) == list(METRICS)
    frame = eval_view.ci_frame(known, METRICS)
    rows = {(r["model"], r["metric"]): r for r in frame.to_dict("records")}
    assert set(rows) == {(k, m) for k in known.models for m in METRICS} - {(FUSED_KEY, "map@10")}
    for (key, metric), row in rows.items():
        m = known.models[key]
        assert (row["value"], row["low"], row["high"]) == (m.metrics[metric], *m.metrics_ci[metric])
        assert row["kind"] == (eval_view.FUSION if key == FUSED_KEY else eval_view.BACKBONE)
    assert rows[(FUSED_KEY, "precision@1")]["entry"] == f"{FUSED_KEY} (RRF of 2)"
    assert rows[("good", "precision@1")]["entry"] == "good"


def _layers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec.get("layer") or spec["spec"]["layer"]


def _data(spec: dict[str, Any]) -> list[dict[str, Any]]:
    (values,) = spec["datasets"].values()
    return values


def test_interval_chart_draws_an_error_bar_and_a_point_per_entry(known: EvalResponse) -> None:
    spec = eval_view.ci_chart(known, "precision@1").to_dict()
    bars, points = _layers(spec)
    assert bars["mark"]["type"] == "rule" and {"x", "x2", "y"} <= set(bars["encoding"])
    assert (bars["encoding"]["x"]["field"], bars["encoding"]["x2"]["field"]) == ("low", "high")
    assert points["mark"]["type"] == "point" and points["encoding"]["x"]["field"] == "value"
    assert bars["encoding"]["strokeDash"]["field"] == "kind"  # the fusion is dashed, the backbones solid
    assert sorted(r["model"] for r in _data(spec)) == sorted(known.models)
    every = eval_view.ci_chart(known, eval_view.ALL_METRICS).to_dict()
    assert every["facet"]["field"] == "metric" and {r["metric"] for r in _data(every)} == set(METRICS)


def test_matrix_chart_carries_verdicts_and_tooltips(known: EvalResponse) -> None:
    spec = eval_view.matrix_chart(known, "precision@1").to_dict()
    rects, texts = _layers(spec)
    assert rects["mark"]["type"] == "rect" and texts["mark"]["type"] == "text"
    tooltip = {t["field"] for t in rects["encoding"]["tooltip"]}
    assert {"diff", "low", "high", "p_holm", "says"} <= tooltip
    shown = {(r["A"], r["B"]): r["text"] for r in _data(spec)}
    assert shown[("good", "bad")] == "good\nbetter"
    assert shown[(FUSED_KEY, "good")] == "no significant\ndifference"
