"""What the Evaluation page derives from one eval report, kept free of Streamlit so it is testable.

Two views of the report's uncertainty: each entry's metric with its 95% bootstrap interval (a point
and an error bar; the fused entry drawn apart, as the fusion of the others), and a matrix of the
report's paired comparisons. The matrix's wording is the report's own verdict (``PairedComparison.says``,
"A better than B" only where the Holm-adjusted p is below 0.05): nothing here re-tests significance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt
import pandas as pd

from embedsvc.client import FUSED_KEY, EvalResponse

ALL_METRICS = "all metrics"
BACKBONE = "backbone"
FUSION = "fusion of the others (RRF)"
ROW_BETTER = "A (row) better"
COLUMN_BETTER = "B (column) better"
SAME_MODEL = "same model"
VERDICT_COLOURS = {ROW_BETTER: "#2e7d32", COLUMN_BETTER: "#c62828", SAME_MODEL: "#eeeeee"}
NO_VERDICT_COLOUR = "#9e9e9e"  # the report's "no significant difference"


def entry_kind(key: str) -> str:
    return FUSION if key == FUSED_KEY else BACKBONE


def entry_label(report: EvalResponse, key: str) -> str:
    """The axis label of an entry: the model key, and for the fused entry what it fuses."""
    if key != FUSED_KEY:
        return key
    of = report.fusion.of if report.fusion else [k for k in report.models if k != FUSED_KEY]
    return f"{key} (RRF of {len(of)})"


def ci_metrics(report: EvalResponse) -> list[str]:
    """Metrics that have an interval in this report, in the report's order."""
    seen: dict[str, None] = {}
    for m in report.models.values():
        for name, ci in (m.metrics_ci or {}).items():
            if ci:
                seen.setdefault(name, None)
    return list(seen)


def ci_frame(report: EvalResponse, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per (entry, metric) that has an interval: value, low, high, and whether it is the fusion."""
    rows = []
    for key, m in report.models.items():
        for metric in metrics:
            ci = (m.metrics_ci or {}).get(metric)
            value = m.metrics.get(metric)
            if not ci or value is None:
                continue
            rows.append(
                {
                    "model": key,
                    "entry": entry_label(report, key),
                    "kind": entry_kind(key),
                    "metric": metric,
                    "value": value,
                    "low": ci[0],
                    "high": ci[1],
                }
            )
    return pd.DataFrame(rows, columns=["model", "entry", "kind", "metric", "value", "low", "high"])


def ci_chart(report: EvalResponse, metric: str) -> alt.Chart | alt.FacetChart:
    """Point (the metric) and error bar (its 95% interval) per entry; ``ALL_METRICS`` facets every metric."""
    metrics = ci_metrics(report) if metric == ALL_METRICS else [metric]
    data = ci_frame(report, metrics)
    order = [entry_label(report, k) for k in report.models]
    kinds = alt.Scale(domain=[BACKBONE, FUSION], range=["#1f77b4", "#ff7f0e"])
    y = alt.Y("entry:N", sort=order, title=None)
    tooltip = [
        alt.Tooltip("model:N"),
        alt.Tooltip("kind:N", title="entry"),
        alt.Tooltip("metric:N"),
        alt.Tooltip("value:Q", format=".3f"),
        alt.Tooltip("low:Q", format=".3f", title="95% CI low"),
        alt.Tooltip("high:Q", format=".3f", title="95% CI high"),
    ]
    base = alt.Chart(data)
    bars = base.mark_rule(strokeWidth=3).encode(
        y=y,
        x=alt.X("low:Q", scale=alt.Scale(zero=False, nice=True), title="value, with its 95% bootstrap interval"),
        x2="high:Q",
        color=alt.Color("kind:N", scale=kinds, title=None, legend=alt.Legend(orient="bottom")),
        strokeDash=alt.StrokeDash("kind:N", scale=alt.Scale(domain=[BACKBONE, FUSION], range=[[1, 0], [5, 3]]),
                                  legend=None),
        tooltip=tooltip,
    )
    points = base.mark_point(filled=True, size=90).encode(
        y=y,
        x=alt.X("value:Q", scale=alt.Scale(zero=False, nice=True)),
        color=alt.Color("kind:N", scale=kinds, title=None),
        shape=alt.Shape("kind:N", scale=alt.Scale(domain=[BACKBONE, FUSION], range=["circle", "diamond"]),
                        legend=None),
        tooltip=tooltip,
    )
    layered = alt.layer(bars, points)
    if metric != ALL_METRICS:
        return layered.properties(title=f"{metric}: 95% intervals", height=alt.Step(34))
    return (
        layered.properties(width=320, height=alt.Step(26))
        .facet(facet=alt.Facet("metric:N", sort=metrics, title=None), columns=3, title="every metric: 95% intervals")
        .resolve_scale(x="independent")
    )


def paired_metrics(report: EvalResponse) -> list[str]:
    return list(dict.fromkeys(p.metric for p in report.paired))


def win_matrix(report: EvalResponse, metric: str) -> pd.DataFrame:
    """Long table of the pairwise matrix on ``metric``: one row per (A = row, B = column) entry pair.

    ``verdict`` is the report's wording seen from the cell ("A better", "B better" or the report's
    "no significant difference"); ``diff`` and ``low``/``high`` are A − B and its 95% paired interval
    (the report's entry for (B, A), negated). Pairs the report did not compare are left out.
    """
    keys = list(report.models)
    found = {(p.a, p.b): p for p in report.paired if p.metric == metric}
    rows: list[dict[str, Any]] = []
    for a in keys:
        for b in keys:
            if a == b:
                rows.append({"A": a, "B": b, "outcome": SAME_MODEL, "verdict": "", "says": ""})
                continue
            p, sign = (found[(a, b)], 1.0) if (a, b) in found else (found.get((b, a)), -1.0)
            if p is None:
                continue
            says = p.says()
            if says == f"{a} better than {b}":
                outcome, text = ROW_BETTER, f"{a} better"
            elif says == f"{b} better than {a}":
                outcome, text = COLUMN_BETTER, f"{b} better"
            else:
                outcome, text = says, says
            low, high = (p.ci[0], p.ci[1]) if sign > 0 else (-p.ci[1], -p.ci[0])
            rows.append(
                {
                    "A": a,
                    "B": b,
                    "outcome": outcome,
                    "verdict": text,
                    "says": says,
                    "diff": sign * p.diff,
                    "low": low,
                    "high": high,
                    "p_holm": p.p_holm,
                    "p_value": p.p_value,
                    "test": p.test,
                }
            )
    columns = ["A", "B", "outcome", "verdict", "says", "diff", "low", "high", "p_holm", "p_value", "test"]
    return pd.DataFrame(rows, columns=columns)


def matrix_chart(report: EvalResponse, metric: str) -> alt.LayerChart:
    """Heat map of ``win_matrix``: colour and text say who is better (or that no difference is significant)."""
    data = win_matrix(report, metric)
    data["A_label"] = [entry_label(report, k) for k in data["A"]]
    data["B_label"] = [entry_label(report, k) for k in data["B"]]
    data["text"] = [v.replace(" better", "\nbetter").replace("significant ", "significant\n") for v in data["verdict"]]
    order = [entry_label(report, k) for k in report.models]
    outcomes = list(dict.fromkeys([ROW_BETTER, COLUMN_BETTER, *data["outcome"], SAME_MODEL]))
    colours = [VERDICT_COLOURS.get(o, NO_VERDICT_COLOUR) for o in outcomes]
    base = alt.Chart(data).encode(
        x=alt.X("B_label:N", sort=order, title="B (column)", axis=alt.Axis(orient="top", labelAngle=0)),
        y=alt.Y("A_label:N", sort=order, title="A (row)"),
    )
    tooltip = [
        alt.Tooltip("A:N"),
        alt.Tooltip("B:N"),
        alt.Tooltip("says:N", title="verdict"),
        alt.Tooltip("diff:Q", format="+.3f", title="A − B"),
        alt.Tooltip("low:Q", format="+.3f", title="95% CI low"),
        alt.Tooltip("high:Q", format="+.3f", title="95% CI high"),
        alt.Tooltip("p_holm:Q", format=".4f", title="p (Holm)"),
        alt.Tooltip("test:N"),
    ]
    cells = base.mark_rect(stroke="white", strokeWidth=2).encode(
        color=alt.Color("outcome:N", scale=alt.Scale(domain=outcomes, range=colours), title=None,
                        legend=alt.Legend(orient="bottom")),
        tooltip=tooltip,
    )
    text = base.mark_text(lineBreak="\n", fontSize=12).encode(
        text="text:N",
        color=alt.condition(alt.datum.outcome == SAME_MODEL, alt.value("#555555"), alt.value("white")),
        tooltip=tooltip,
    )
    return alt.layer(cells, text).properties(
        title=f"{metric}: paired comparisons (Holm-adjusted)", height=alt.Step(64)
    )
