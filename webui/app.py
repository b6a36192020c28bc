"""Compare models: one query image, one column of nearest neighbours per model, side by side.

Run with ``embedsvc ui``. The page is a client of the REST API only (see ``embedsvc.webui.common``): it asks
the API to search, fetches thumbnails from it, and draws. The current query lives in session state
(``query``): an uploaded file's bytes, or the id of an indexed image; clicking a neighbour's button
makes that neighbour's id the next query, and the URL (``?index=..&id=..``) follows id queries so a
view can be shared or opened from the Evaluation page.
"""

from __future__ import annotations

import math
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from embedsvc.client import (
    FUSED_KEY,
    ApiError,
    ApiUnavailableError,
    ImagePage,
    IndexInfo,
    ModelResult,
    Neighbour,
    QueryInfo,
    SearchResponse,
)
from embedsvc.webui import compare
from embedsvc.webui.common import (
    INDEX_STATE,
    QUERY_STATE,
    api_call,
    api_down_message,
    api_url,
    choose_index,
    client,
    image_bytes,
    index_rows,
    index_version,
    label_names,
    sidebar_links,
    square_image_bytes,
)

ANY_LABEL = "(any label)"
K_DEFAULT = 8
PICK_PAGE = 100  # images per page of the "pick an indexed image" list (the API allows up to 500)
REQUERY_LABEL = "Use as query"
UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"]


# -- state ------------------------------------------------------------------------------------------


def set_query_id(row_id: int, index: str | None = None) -> None:
    """Button callback: make an indexed image the query (runs before the rerun that shows it)."""
    st.session_state[QUERY_STATE] = {"kind": "id", "id": int(row_id)}
    if index:
        st.session_state[INDEX_STATE] = index


def sync_url(query: dict[str, Any] | None, index: str) -> None:
    """Keep ``?index=..&id=..`` in step with the view, so it can be bookmarked or shared."""
    wanted = {"index": index}
    if query and query["kind"] == "id":
        wanted["id"] = str(query["id"])
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)


def query_from_url() -> None:
    """A deep link (``?id=``) sets the query once per distinct link, not on every rerun."""
    link_id = st.query_params.get("id")
    if link_id and link_id.isdigit() and st.session_state.get("url_applied") != link_id:
        st.session_state["url_applied"] = link_id
        if st.session_state.get(QUERY_STATE, {}).get("id") != int(link_id):
            st.session_state[QUERY_STATE] = {"kind": "id", "id": int(link_id)}


# -- API calls (cached: a rerun for a click must not re-run three forward passes) ----------------------


@st.cache_data(show_spinner=False, max_entries=256, ttl=600)
def run_search(
    base_url: str,
    index: str,
    models: tuple[str, ...],
    k: int,
    label: str | None,
    kind: str,
    payload: bytes | int,
    filename: str = "query",
    version: str = "",
    fuse: bool = False,
) -> SearchResponse:
    """One search; errors are raised, so they are never cached. ``version`` only keys the cache.
    ``fuse`` adds the API's fused (RRF) entry."""
    api = client()
    how = "rrf" if fuse else None
    if kind == "id":
        return api.search_by_id(int(payload), index=index, k=k, models=list(models), label=label, fuse=how)
    assert isinstance(payload, bytes)
    return api.search_upload(
        payload, index=index, k=k, models=list(models), label=label, filename=filename, fuse=how
    )


@st.cache_data(show_spinner=False, max_entries=64, ttl=300)
def image_page(base_url: str, index: str, offset: int, label: str | None, version: str = "") -> ImagePage:
    """One page of the index's images in id order (the API lists them); ``version`` only keys the cache."""
    return client().list_images(index, offset=offset, limit=PICK_PAGE, label=label)


# -- drawing ----------------------------------------------------------------------------------------


def show_query(query: dict[str, Any], info: QueryInfo | None) -> None:
    st.subheader("Query")
    if query["kind"] == "upload":
        st.image(query["data"], caption=f"uploaded: {query['name']}", width="stretch")
    else:
        data = image_bytes(info.thumbnail_url) if info else None
        if data:
            st.image(data, caption=f"indexed image #{query['id']}", width="stretch")
        else:
            st.caption(f"indexed image #{query['id']} (no thumbnail)")
    if info is None:
        return
    if info.label_name or info.label_id is not None:
        st.markdown(f"**Label:** {info.label_name or info.label_id}")
    else:
        st.caption("Label unknown: same-label marks need a labelled (indexed) query.")
    if info.rel_path:
        st.caption(info.rel_path)
    if info.width and info.height:
        st.caption(f"{info.width}×{info.height} px" + (f" · {info.format}" if info.format else ""))


def show_neighbour(model: ModelResult, n: Neighbour, shared: set[int], index: str) -> None:
    data = square_image_bytes(n.thumbnail_url)
    if data:
        st.image(data, caption=compare.caption(n), width="stretch")
    else:
        st.caption(f"{compare.caption(n)} (thumbnail unavailable)")
    marks = compare.marks_for(n, shared)
    badges = []
    if marks.same_label is True:
        badges.append(f":green-badge[:material/check: {compare.SAME_LABEL_MARK}]")
    elif marks.same_label is False:
        badges.append(f":gray-badge[:material/close: {compare.OTHER_LABEL_MARK}]")
    if marks.shared:
        badges.append(f":violet-badge[:material/join_inner: {compare.SHARED_MARK}]")
    if badges:
        st.markdown(" ".join(badges))
    st.button(
        REQUERY_LABEL,
        key=f"requery-{model.model_key}-{n.rank}-{n.id}",
        on_click=set_query_id,
        args=(n.id,),
        help=f"Make #{n.id} ({n.rel_path}) the next query: more like this",
        width="stretch",
    )


def show_model(model: ModelResult, shared: set[int], index: str, per_row: int) -> None:
    with st.container(key=f"model-{model.model_key}"):
        st.subheader(model.display_name)
        if model.model_key == FUSED_KEY:
            st.markdown(f":blue-badge[:material/merge: {compare.FUSED_LABEL}] not a model: the columns' rankings fused")
            st.caption(f"`{model.model_key}` · {model.provenance.label} · ranked by RRF score")
        else:
            st.caption(f"`{model.model_key}` · {model.model_name} · {model.dim}-d")
            if model.untrained:
                st.error(f"**UNTRAINED** (random weights): {model.provenance.label}. Its neighbours mean nothing.",
                         icon=":material/warning:")
            else:
                st.caption(f"Weights: {model.provenance.label}")
            st.caption(compare.timings_line(model))
        line = compare.precision_line(model)
        if line:
            st.markdown(f"**{line}**")
        if not model.neighbours:
            st.info("No neighbours (the label filter may exclude every image).")
        for start in range(0, len(model.neighbours), per_row):
            cells = st.columns(per_row) if per_row > 1 else [st.container()]
            for cell, n in zip(cells, model.neighbours[start : start + per_row], strict=False):
                with cell:
                    show_neighbour(model, n, shared, index)


def show_overlap(response: SearchResponse) -> None:
    keys = [m.model_key for m in compare.split_fused(response.models)[0]]
    if len(keys) < 2:
        return
    st.subheader(f"Overlap between models (Jaccard@{response.k})")
    frame = compare.jaccard_matrix(keys, response.overlap)
    left, right = st.columns([1, 1])
    with left:
        chart_data = compare.jaccard_long(frame)
        base = alt.Chart(chart_data).encode(
            x=alt.X("b:N", title=None, sort=keys, axis=alt.Axis(labelAngle=0, orient="top")),
            y=alt.Y("a:N", title=None, sort=keys),
        ).properties(height=48 * len(keys))
        heat = base.mark_rect().encode(
            color=alt.Color("jaccard:Q", scale=alt.Scale(domain=[0, 1], scheme="blues"), title="Jaccard")
        )
        text = base.mark_text(baseline="middle").encode(
            text=alt.Text("jaccard:Q", format=".2f"),
            color=alt.condition("datum.jaccard > 0.5", alt.value("white"), alt.value("black")),
        )
        st.altair_chart(heat + text, width="stretch")
    with right:
        st.dataframe(frame.style.format("{:.2f}"), width="stretch")
        st.caption("|A ∩ B| / |A ∪ B| of two models' neighbour ids: 1 = same set, 0 = nothing in common.")
    st.dataframe(pd.DataFrame(compare.summary_rows(response)), hide_index=True, width="stretch")


def sidebar_controls(info: IndexInfo, max_k: int) -> tuple[list[str], int, str | None, bool]:
    keys = [m.model_key for m in info.models]
    models = st.sidebar.multiselect(
        "Models (1–4)",
        keys,
        default=keys[: compare.MAX_MODELS],
        max_selections=compare.MAX_MODELS,
        key=f"models-{info.name}",
        help="Which of this index's models to compare.",
    )
    if max_k > 1:  # the API's limit (a server setting, sent with the index list)
        k = st.sidebar.slider(
            "k (neighbours per model)", 1, max_k, min(K_DEFAULT, max_k), key="k", help=f"The API allows up to {max_k}."
        )
    else:
        k = 1
        st.sidebar.caption("k = 1 (the API allows no more)")
    labels = label_names(info)
    label = st.sidebar.selectbox(
        "Label filter", [ANY_LABEL, *labels], key=f"label-{info.name}", help="Only neighbours with this label."
    )
    fuse = st.sidebar.checkbox(
        compare.FUSED_LABEL,
        key="fuse",
        help="Add a column: the models' rankings fused by reciprocal rank fusion (k=60), ranked by RRF score.",
    )
    return models, k, None if label == ANY_LABEL else label, fuse


def pick_controls(info: IndexInfo) -> str | None:
    """The "pick an indexed image" list: a label filter, pages of PICK_PAGE images from the API, a button.

    Returns the label the list is filtered by (None: any), which Random draws from too.
    """
    labels = label_names(info)
    label = None
    if labels:
        chosen = st.selectbox(
            "Pick from label", [ANY_LABEL, *labels], key=f"pick-label-{info.name}", help="Narrows the list and Random."
        )
        label = None if chosen == ANY_LABEL else chosen
    page_key = f"pick-page-{info.name}-{label}"
    page_no = int(st.session_state.get(page_key, 1))
    try:
        page = image_page(api_url(), info.name, (page_no - 1) * PICK_PAGE, label, index_version(info))
        if page_no > 1 and not page.data:  # the index shrank under this page: back to the first
            page_no = 1
            page = image_page(api_url(), info.name, 0, label, index_version(info))
    except (ApiError, ApiUnavailableError) as exc:
        st.caption(f"Cannot list the indexed images: {getattr(exc, 'detail', exc)}")
        return label
    if not page.data:
        st.caption("No indexed images to pick from" + (f" with label {label}." if label else "."))
        return label
    pages = math.ceil(page.total / PICK_PAGE)
    if pages > 1:
        st.session_state[page_key] = min(page_no, pages)
        st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, step=1, key=page_key)
    names = {r.id: f"{r.label_name or '?'} · {r.rel_path}" for r in page.data}
    picked = st.selectbox("…or pick an indexed image", list(names), format_func=names.get, key="pick")
    first = page.offset + 1
    st.caption(f"Images {first}–{first + page.count - 1} of {page.total}, in id order.")
    st.button("Use this image", on_click=set_query_id, args=(picked,), key="pick-go")
    return label


def query_controls(info: IndexInfo) -> None:
    """Upload, pick an indexed image, or a random one; each sets the session's query."""
    up_col, pick_col, rand_col = st.columns([2, 2, 1], vertical_alignment="bottom")
    with up_col:
        upload = st.file_uploader("Upload a query image", type=UPLOAD_TYPES, key="upload")
    if upload is not None and st.session_state.get("upload_seen") != upload.file_id:
        st.session_state["upload_seen"] = upload.file_id
        st.session_state[QUERY_STATE] = {"kind": "upload", "name": upload.name, "data": upload.getvalue()}
    with pick_col:
        label = pick_controls(info)
    with rand_col:
        what = f"with label {label}" if label else "from the index"
        if st.button("Random", key="random", icon=":material/casino:", help=f"A random image {what}."):
            drawn = api_call(client().random_images, info.name, count=1, label=label, what="Drawing a random image")
            if drawn.data:
                set_query_id(drawn.data[0].id)
            else:
                st.caption(f"No image {what}.")


def main() -> None:
    st.set_page_config(page_title="embedsvc: compare models", page_icon=":material/compare:", layout="wide")
    sidebar_links()
    st.title("Which model finds what?")
    listing = api_call(client().indexes, what="Listing indexes")
    info = choose_index(listing)
    if info is None:
        st.stop()
    if index_rows(info) == 0:
        st.info(
            f"Index **{info.name}** is empty: index some images first (Index overview page).",
            icon=":material/inbox:",
        )
        st.stop()
    models, k, label, fuse = sidebar_controls(info, listing.max_k)
    if not models:
        st.warning("Choose at least one model in the sidebar.")
        st.stop()
    query_from_url()
    query_controls(info)
    query = st.session_state.get(QUERY_STATE)
    sync_url(query, info.name)
    if not query:
        st.info("Upload an image, pick an indexed one, or press **Random** to see each model's neighbours.",
                icon=":material/upload:")
        st.stop()
    payload = query["data"] if query["kind"] == "upload" else query["id"]
    try:
        with st.spinner("Searching with every model…"):
            response = run_search(
                api_url(), info.name, tuple(models), k, label, query["kind"], payload, query.get("name", "query"),
                index_version(info), fuse,
            )
    except ApiUnavailableError as exc:
        st.error(api_down_message(exc), icon=":material/power_off:")
        st.stop()
    except ApiError as exc:
        what = "The upload was rejected" if query["kind"] == "upload" else "The search failed"
        st.error(f"{what}: {exc.detail} (HTTP {exc.status}, `{exc.code}`)", icon=":material/block:")
        st.stop()
    for skipped in response.skipped:
        st.warning(f"`{skipped.model_key}` left out: {skipped.reason}")
    per_model, _ = compare.split_fused(response.models)
    shared = compare.shared_ids(per_model)  # "found by every model": the models, not the fused column
    n = len(response.models)
    per_row = {1: 5, 2: 3}.get(n, 2)  # thumbnails per row inside a model's column
    query_col, *model_cols = st.columns([1.2] + [float(per_row)] * n, gap="medium")
    with query_col:
        show_query(query, response.query)
        if len(per_model) >= 2:
            st.caption(f"{len(shared)} image(s) found by every model (marked *{compare.SHARED_MARK}*).")
        st.caption(f"Search took {response.total_ms:.0f} ms in all (decode {response.decode_ms:.1f} ms).")
    for col, model in zip(model_cols, response.models, strict=True):
        with col:
            show_model(model, shared, info.name, per_row)
    show_overlap(response)


main()
