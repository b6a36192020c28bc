"""Evaluation: which model retrieves best on this index, measured leave-one-out on its own labels.

Everything comes from ``GET /indexes/{name}/eval`` (exact search over the stored vectors, cached by the
API per index version). Each metric is drawn with its 95% bootstrap interval, and the report's paired
tests as a matrix of significant wins (worded by the report: "better" only where the Holm-adjusted p is
below 0.05); the fused entry (RRF of the models) is drawn apart from the backbones. Disagreement
examples, queries where only one model is right at rank 1 or none is, open in the side-by-side
comparison page as "more like this" queries, or on the embedding maps, highlighted.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from embedsvc.client import FUSED_KEY, ApiError, ApiUnavailableError, EvalResponse
from embedsvc.webui import eval_view
from embedsvc.webui.common import (
    INDEX_STATE,
    MAPS_HIGHLIGHT_STATE,
    MAPS_PAGE,
    QUERY_STATE,
    api_call,
    api_url,
    choose_index,
    client,
    index_rows,
    sidebar_links,
)

DEFAULT_SAMPLE = 2000  # above this many rows, evaluate a seeded sample unless asked for all
EXAMPLES_SHOWN = 6


@st.cache_data(show_spinner=False, max_entries=512, ttl=3600)
def thumbnail(base_url: str, index: str, row_id: int) -> bytes | None:
    try:
        return client().thumbnail_bytes(index, row_id)
    except (ApiError, ApiUnavailableError):
        return None


def metric_table(report: EvalResponse, with_chance: bool) -> pd.DataFrame:
    rows = []
    for key, m in report.models.items():
        info = m.model
        weights = info.weights if info else None
        if key == FUSED_KEY and report.fusion:  # not a backbone: say what it fuses
            weights = f"fusion: RRF (k = {report.fusion.k}) of {', '.join(report.fusion.of)}"
        base = {"model": key, "weights": weights}
        rows.append(base | {"scored against": "labels"} | m.metrics)
        if with_chance and m.chance:
            rows.append(base | {"scored against": "shuffled labels (chance)"} | m.chance)
    return pd.DataFrame(rows)


def precision_curves(report: EvalResponse) -> alt.Chart:
    rows = []
    for key, m in report.models.items():
        for k in report.k_list:
            precision = m.metrics.get(f"precision@{k}")
            rows.append({"model": key, "k": k, "precision": precision, "scored against": "labels"})
            if m.chance:
                rows.append(
                    {"model": key, "k": k, "precision": m.chance.get(f"precision@{k}"), "scored against": "chance"}
                )
    data = pd.DataFrame(rows).dropna(subset=["precision"])
    ks = [int(k) for k in data["k"]] or [1]
    return (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=alt.X("k:Q", scale=alt.Scale(type="log", domain=[min(ks), max(ks)], nice=False), title="k"),
            y=alt.Y("precision:Q", scale=alt.Scale(domain=[0, 1]), title="precision@k"),
            color=alt.Color("model:N"),
            strokeDash=alt.StrokeDash(
                "scored against:N", scale=alt.Scale(domain=["labels", "chance"], range=[[1, 0], [4, 4]])
            ),
            tooltip=["model", "k", alt.Tooltip("precision:Q", format=".3f"), "scored against"],
        )
    )


def open_side_by_side(index: str, row_id: int) -> None:
    """Make this id the comparison page's query and go there (the URL carries it too)."""
    st.session_state[QUERY_STATE] = {"kind": "id", "id": int(row_id)}
    st.session_state[INDEX_STATE] = index
    st.switch_page("app.py", query_params={"index": index, "id": str(row_id)})


def open_on_maps(index: str, row_id: int) -> None:
    """Highlight this id in every model's map and go there (the URL carries index and id too)."""
    st.session_state[INDEX_STATE] = index
    st.session_state[MAPS_HIGHLIGHT_STATE] = int(row_id)
    st.switch_page(MAPS_PAGE, query_params={"index": index, "id": str(row_id)})


def example_row(index: str, title: str, count: int, ids: list[int], key: str) -> None:
    shown = min(len(ids), EXAMPLES_SHOWN)
    noun = "query" if count == 1 else "queries"
    st.markdown(f"**{title}**: {count} {noun}" + (f", {shown} shown" if shown < count else ""))
    if not ids:
        return
    cols = st.columns(EXAMPLES_SHOWN)
    for col, row_id in zip(cols, ids[:EXAMPLES_SHOWN], strict=False):
        with col:
            data = thumbnail(api_url(), index, row_id)
            if data:
                st.image(data, caption=f"#{row_id}", width="stretch")
            else:
                st.caption(f"#{row_id}")
            if st.button("Side by side", key=f"open-{key}-{row_id}", icon=":material/compare:", width="stretch"):
                open_side_by_side(index, row_id)
            if st.button("On the maps", key=f"map-{key}-{row_id}", icon=":material/scatter_plot:", width="stretch"):
                open_on_maps(index, row_id)


def show_intervals(report: EvalResponse) -> None:
    """Every entry's metric as a point with its 95% interval as an error bar; the fused entry drawn apart."""
    metrics = eval_view.ci_metrics(report)
    if not metrics:
        st.caption("No intervals in this report (nothing evaluable).")
        return
    choices = [*metrics, eval_view.ALL_METRICS]
    metric = st.selectbox(
        "Intervals of",
        choices,
        index=choices.index("precision@1") if "precision@1" in choices else 0,
        key="ci-metric",
        help="One metric, or every metric in small multiples.",
    )
    with st.container(key="ci-chart"):  # tests and styles find the chart by this key
        st.altair_chart(eval_view.ci_chart(report, metric), width="stretch")
    if report.fusion:
        f = report.fusion
        st.caption(
            f"**{f.key}** (dashed, diamond) is not a backbone: the reciprocal rank fusion (k = {f.k}) of "
            f"{', '.join(f.of)}, each ranking read to depth {f.depth}."
        )
    if report.uncertainty:
        u = report.uncertainty
        st.caption(
            f"{u.confidence:.0%} percentile-bootstrap intervals over the {report.queries.n_evaluated} evaluated "
            f"queries ({u.resamples:,} resamples, seed {u.seed})."
        )
    with st.expander("The intervals as a table"):
        st.dataframe(
            pd.DataFrame(
                [
                    {"model": key} | {k: f"[{v[0]:.3f}, {v[1]:.3f}]" if v else "–" for k, v in m.metrics_ci.items()}
                    for key, m in report.models.items()
                    if m.metrics_ci
                ]
            ),
            hide_index=True,
            width="stretch",
        )


def show_paired(report: EvalResponse) -> None:
    """The report's paired tests on one metric: a matrix of who is better, then every comparison spelled out."""
    metrics = eval_view.paired_metrics(report)
    if not metrics:
        st.caption("Nothing to compare: the report has a single model.")
        return
    metric = st.selectbox(
        "Paired comparison on",
        metrics,
        index=metrics.index("precision@1") if "precision@1" in metrics else 0,
        key="paired-metric",
    )
    with st.container(key="win-matrix"):
        st.altair_chart(eval_view.matrix_chart(report, metric), width="stretch")
    if report.uncertainty:
        st.caption(
            f"Each cell reads row A against column B. \"Better\" only where the Holm-adjusted p-value is below "
            f"{report.uncertainty.alpha}, over all {report.uncertainty.n_comparisons} comparisons of the report "
            f"(every pair and metric); hover a cell for A − B, its 95% paired-bootstrap interval and p."
        )
    with st.expander(f"Every comparison on {metric}"):
        for p in (p for p in report.paired if p.metric == metric):
            test = "McNemar exact" if p.test == "mcnemar_exact" else p.test
            st.markdown(
                f"- {p.a} vs {p.b}: **{p.says()}** ({p.a} − {p.b} = {p.diff:+.3f} "
                f"[{p.ci[0]:+.3f}, {p.ci[1]:+.3f}], {test}, p (Holm) {p.p_holm:.4f})"
            )


def show_report(report: EvalResponse) -> None:
    q = report.queries
    st.caption(
        f"{q.n_evaluated} of {q.n_queries} queries scored ({q.n_rows} rows, {q.n_classes} classes"
        f"{f', sample of {q.sample} with seed {q.seed}' if q.sample else ''}); "
        f"{q.n_without_relevant} left out because no other row shares their label. "
        f"{'Cached' if report.cached else 'Computed'} in {report.compute_seconds:.1f} s."
    )
    untrained = [k for k, m in report.models.items() if m.model and m.model.trained is False]
    if untrained:
        st.warning(
            f"UNTRAINED (random weights): {', '.join(untrained)}. Expect scores near chance.",
            icon=":material/warning:",
        )

    st.subheader("Metrics per model")
    with_chance = st.toggle("Show the chance level (same neighbours, shuffled labels)", value=True, key="chance")
    table = metric_table(report, with_chance)
    number_cols = [c for c in table.columns if c not in ("model", "weights", "scored against")]
    st.dataframe(table.style.format("{:.3f}", subset=number_cols, na_rep="–"), hide_index=True, width="stretch")

    st.subheader("Metrics with 95% intervals")
    show_intervals(report)

    st.subheader("Significant wins")
    show_paired(report)

    st.subheader("Precision@k")
    st.altair_chart(precision_curves(report), width="stretch")

    st.subheader("Worst classes")
    cols = st.columns(len(report.models))
    for col, (key, m) in zip(cols, report.models.items(), strict=True):
        with col:
            st.markdown(f"**{key}**")
            worst = pd.DataFrame([c.model_dump() for c in m.worst_classes])
            if worst.empty:
                st.caption("No classes scored.")
            else:
                st.dataframe(worst[["label", "precision", "n_queries"]], hide_index=True, width="stretch")
            if m.confusions:
                st.caption(
                    "Most frequent confusions: "
                    + "; ".join(f"{c.query_label} → {c.neighbour_label} ({c.count})" for c in m.confusions[:5])
                )

    st.subheader("Where the models disagree")
    agree = report.cross_model.agreement
    pairs = ", ".join(
        f"{p.a}/{p.b} {p.mean_jaccard:.2f}" for p in report.cross_model.jaccard if p.mean_jaccard is not None
    )
    st.caption(
        f"At rank 1: all right on {agree.all_right}, none right on {agree.none_right}, of {agree.n_queries} queries. "
        + (f"Mean Jaccard@{report.cross_model.jaccard[0].k}: {pairs}." if pairs else "")
    )
    examples = agree.examples
    if examples is None:
        return
    for key, ids in examples.only_right.items():
        example_row(report.index, f"Only {key} is right at rank 1", agree.only_right.get(key, 0), ids, key)
    example_row(report.index, "No model is right at rank 1", agree.none_right, examples.none_right, "none")


def main() -> None:
    st.set_page_config(page_title="embedsvc: evaluation", page_icon=":material/insights:", layout="wide")
    sidebar_links()
    st.title("Evaluation")
    listing = api_call(client().indexes, what="Listing indexes")
    info = choose_index(listing)
    if info is None:
        st.stop()
    rows = index_rows(info)
    if rows < 2:
        st.info(
            f"Index **{info.name}** has {rows} row(s): evaluation needs at least two labelled images.",
            icon=":material/inbox:",
        )
        st.stop()
    everything = st.sidebar.checkbox(f"All {rows} queries", value=rows <= DEFAULT_SAMPLE, key="eval-all")
    sample = None if everything else int(
        st.sidebar.number_input("Sample of queries", 1, rows, min(rows, DEFAULT_SAMPLE), key="eval-sample")
    )
    seed = int(st.sidebar.number_input("Sample seed", 0, 2**31 - 1, 0, key="eval-seed"))
    with st.spinner(f"Evaluating {info.name} (leave-one-out, exact search)…"):
        report = api_call(client().evaluation, info.name, sample=sample, seed=seed, what="The evaluation")
    show_report(report)


main()
