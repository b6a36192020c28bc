"""Embedding maps: how each model arranges the same images, one 2-D map per model side by side.

Everything comes from ``GET /indexes/{name}/maps`` (a seeded sample of the stored vectors projected by
UMAP or PCA, cached by the API per index version). Points are coloured by label; hovering an image
highlights it in every map (one Vega-Lite selection shared by the concatenated views), and a click
opens it as the query on the comparison page. An id in ``st.session_state[MAPS_HIGHLIGHT_STATE]`` (the
Evaluation page sets it) or in the URL (``?id=``) is marked in every map.
"""

from __future__ import annotations

import warnings

import altair as alt
import pandas as pd
import streamlit as st

from embedsvc.client import ApiError, ApiUnavailableError, MapsResponse
from embedsvc.webui.common import (
    INDEX_STATE,
    MAPS_HIGHLIGHT_STATE,
    QUERY_STATE,
    api_call,
    api_url,
    choose_index,
    client,
    index_rows,
    sidebar_links,
)

DEFAULT_SAMPLE = 5_000  # the page's default: maps in well under a minute on a CPU (the API's is 20,000)
MAX_SAMPLE = 20_000
METHODS = ("auto", "umap", "pca")
HOVER = "hover"  # the shared pointer-over selection: highlights, never reruns the page
PICK = "pick"  # the click selection: the only one that reruns the page
CHART_KEY = "maps-chart"
LAST_PICK = "maps_last_pick"  # the click already acted on (a kept selection must not reopen it)
MAP_SIDE = 380  # px per map
SVG_MAX_POINTS = 2_000  # up to here every point is an SVG element (hover is precise, tests can click one)
UNLABELLED = "(unlabelled)"


def highlighted_id() -> int | None:
    """The row id to mark: ``?id=`` in the URL wins (and is remembered), else the session's."""
    link = st.query_params.get("id")
    if link is not None and str(link).isdigit():
        st.session_state[MAPS_HIGHLIGHT_STATE] = int(link)
    value = st.session_state.get(MAPS_HIGHLIGHT_STATE)
    return int(value) if value is not None else None


def open_as_query(index: str, row_id: int) -> None:
    """Make this id the comparison page's query and go there (the URL carries it too), as the
    Evaluation page's "Side by side" does."""
    st.session_state[QUERY_STATE] = {"kind": "id", "id": int(row_id)}
    st.session_state[INDEX_STATE] = index
    st.switch_page("app.py", query_params={"index": index, "id": str(row_id)})


def map_frame(maps: MapsResponse) -> pd.DataFrame:
    """One row per (model, point): model, id, x, y, label, file. Ids travel as text: they are 64-bit and
    JavaScript numbers keep 53 bits, so a numeric id would come back from a click as another image's."""
    frames = []
    labels = [p.label or UNLABELLED for p in maps.points]
    for m in maps.models:
        frames.append(
            pd.DataFrame(
                {
                    "model": m.model,
                    "id": [str(p.id) for p in maps.points],
                    "x": m.x,
                    "y": m.y,
                    "label": labels,
                    "file": [p.rel_path or "" for p in maps.points],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def maps_chart(maps: MapsResponse, highlight: int | None) -> alt.HConcatChart:
    """One scatter per model, side by side, sharing the label colours and the hover/click selections."""
    frame = map_frame(maps)
    hover = alt.selection_point(name=HOVER, fields=["id"], on="pointerover", clear="pointerout", empty=False)
    pick = alt.selection_point(name=PICK, fields=["id"], on="click", empty=False)
    size = 60 if maps.n_points <= 500 else 25 if maps.n_points <= 5000 else 10
    views = []
    for m in maps.models:
        data = frame[frame["model"] == m.model]
        points = (
            alt.Chart(data)
            .mark_circle()
            .encode(
                x=alt.X("x:Q", axis=None, scale=alt.Scale(zero=False)),
                y=alt.Y("y:Q", axis=None, scale=alt.Scale(zero=False)),
                color=alt.Color("label:N", title="label", legend=alt.Legend(orient="bottom", columns=6)),
                size=alt.condition(hover, alt.value(size * 6), alt.value(size)),
                opacity=alt.condition(hover, alt.value(1.0), alt.value(0.7)),
                stroke=alt.condition(hover, alt.value("black"), alt.value("transparent")),
                description=alt.Description("id:N"),  # each point's aria-label: its image id
                tooltip=[
                    alt.Tooltip("label:N"),
                    alt.Tooltip("file:N"),
                    alt.Tooltip("id:N", title="id"),
                ],
            )
            .add_params(hover, pick)
        )
        layer = points
        marked = data[data["id"] == str(highlight)]
        if len(marked):
            ring = (
                alt.Chart(marked)
                .mark_point(shape="circle", filled=False, size=size * 14, strokeWidth=3, color="black")
                .encode(x="x:Q", y="y:Q", description=alt.value(f"marked {highlight}"))
            )
            layer = alt.layer(points, ring)
        title = f"{m.display_name or m.model} ({m.method.upper()})"
        views.append(layer.properties(title=title, width=MAP_SIDE, height=MAP_SIDE))
    chart = alt.hconcat(*views).resolve_scale(color="shared", x="independent", y="independent")
    if maps.n_points <= SVG_MAX_POINTS:
        chart = chart.properties(usermeta={"embedOptions": {"renderer": "svg"}})
    return chart


def picked_id(event: object) -> int | None:
    """The id of a new click in the chart's selection event, or None (none, or already acted on)."""
    selection = getattr(event, "selection", None) or {}
    chosen = selection.get(PICK) if isinstance(selection, dict) else None
    if not chosen:
        st.session_state[LAST_PICK] = None
        return None
    row_id = chosen[0].get("id") if isinstance(chosen, list) and isinstance(chosen[0], dict) else None
    if row_id is None or not str(row_id).isdigit() or row_id == st.session_state.get(LAST_PICK):
        return None
    st.session_state[LAST_PICK] = row_id
    return int(row_id)


@st.cache_data(show_spinner=False, max_entries=64, ttl=3600)
def thumbnail(base_url: str, index: str, row_id: int) -> bytes | None:
    try:
        return client().thumbnail_bytes(index, row_id)
    except (ApiError, ApiUnavailableError):
        return None


def show_marked(maps: MapsResponse, highlight: int) -> None:
    """The marked image beside the maps, with a way to query it or drop the mark."""
    point = next((p for p in maps.points if p.id == highlight), None)
    cols = st.columns([1, 5])
    with cols[0]:
        data = thumbnail(api_url(), maps.index, highlight)
        if data:
            st.image(data, width="stretch")
    with cols[1]:
        if point is None:
            st.markdown(f"Image **#{highlight}** is not in this sample: raise the sample size or change the seed.")
        else:
            st.markdown(f"Marked: **#{highlight}**, {point.label or UNLABELLED}, `{point.rel_path or ''}`")
        left, right = st.columns(2)
        if left.button("Open as query", key="maps-open-marked", icon=":material/compare:"):
            open_as_query(maps.index, highlight)
        if right.button("Clear the mark", key="maps-clear-mark", icon=":material/close:"):
            st.session_state.pop(MAPS_HIGHLIGHT_STATE, None)
            st.query_params.pop("id", None)
            st.rerun()


def main() -> None:
    st.set_page_config(page_title="embedsvc: embedding maps", page_icon=":material/scatter_plot:", layout="wide")
    sidebar_links()
    st.title("Embedding maps")
    listing = api_call(client().indexes, what="Listing indexes")
    info = choose_index(listing)
    if info is None:
        st.stop()
    rows = index_rows(info)
    if rows < 3:
        st.info(f"Index **{info.name}** has {rows} row(s): a map needs at least three images.", icon=":material/inbox:")
        st.stop()
    most = min(rows, MAX_SAMPLE)
    sample = int(
        st.sidebar.number_input(
            "Points per map",
            3,
            most,
            min(most, DEFAULT_SAMPLE),
            step=500,
            key="maps-sample",
            help="A seeded sample of the index, the same images in every model's map. Larger takes longer.",
        )
    )
    seed = int(st.sidebar.number_input("Sample seed", 0, 2**31 - 1, 0, key="maps-seed"))
    method = st.sidebar.selectbox(
        "Projection",
        METHODS,
        key="maps-method",
        help="UMAP keeps neighbourhoods (umap-learn on the server); PCA keeps the main directions of variance; "
        "auto is UMAP where the server has umap-learn.",
    )
    highlight = highlighted_id()
    with st.spinner(f"Mapping {info.name} ({sample:,} points per model)…"):
        maps = api_call(client().maps, info.name, sample=sample, seed=seed, method=method, what="The maps")
    took = f"computed in {maps.compute_seconds:.1f} s"
    st.caption(
        f"{maps.n_points:,} of {maps.total_rows:,} images (seed {maps.seed}), one map per model, coloured by label. "
        "Hover an image to see it in every map; click it to open it as the query on the comparison page. "
        f"{f'Cached ({took}).' if maps.cached else took.capitalize() + '.'}"
    )
    if highlight is not None:
        show_marked(maps, highlight)
    with warnings.catch_warnings():  # one selection shared by every map is the point, not a mistake
        warnings.filterwarnings("ignore", message="Automatically deduplicated selection parameter")
        event = st.altair_chart(maps_chart(maps, highlight), on_select="rerun", selection_mode=[PICK], key=CHART_KEY)
    row_id = picked_id(event)
    if row_id is not None:
        open_as_query(maps.index, row_id)


main()
