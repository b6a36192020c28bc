"""What every page shares: the API client, API errors turned into messages, thumbnails, the sidebar.

The pages talk to the service only through :class:`embedsvc.client.EmbedsvcClient`. Every call goes
through :func:`api_call`, which shows the API's own message (or "not reachable") instead of a
traceback and stops the page there, so the rest of a page can assume it has data.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st
from PIL import Image, ImageOps, UnidentifiedImageError

from embedsvc.client import ApiError, ApiUnavailableError, EmbedsvcClient, IndexInfo, IndexList
from embedsvc.core.config import get_settings

T = TypeVar("T")

INDEX_STATE = "index_name"  # survives page switches (widget keys do not)
QUERY_STATE = "query"
MAPS_PAGE = "pages/3_Maps.py"
MAPS_HIGHLIGHT_STATE = "maps_highlight"  # a row id the Maps page marks in every model's map
PAGES = (
    ("app.py", "Compare models", ":material/compare:"),
    ("pages/1_Index_overview.py", "Index overview", ":material/folder_open:"),
    ("pages/2_Evaluation.py", "Evaluation", ":material/insights:"),
    (MAPS_PAGE, "Embedding maps", ":material/scatter_plot:"),
)


def api_url() -> str:
    return get_settings().api_url.rstrip("/")


@st.cache_resource(show_spinner=False)
def _client_for(url: str) -> EmbedsvcClient:
    """One HTTP client (connection pool) per API URL for the whole Streamlit process."""
    return EmbedsvcClient(url, timeout=120.0)


def client() -> EmbedsvcClient:
    return _client_for(api_url())


def api_down_message(exc: Exception) -> str:
    return (
        f"The embedsvc API at {api_url()} is not reachable, so there is nothing to show. "
        f"Start it with `embedsvc serve` (or `make demo`), or point the UI at it with "
        f"`embedsvc ui --api-url URL`. ({exc.__class__.__name__})"
    )


def api_call(fn: Callable[..., T], *args: Any, what: str = "The API", **kwargs: Any) -> T:
    """Call the client; on failure show the API's message (never a traceback) and stop this run."""
    try:
        return fn(*args, **kwargs)
    except ApiUnavailableError as exc:
        st.error(api_down_message(exc), icon=":material/power_off:")
        st.stop()
    except ApiError as exc:
        st.error(f"{what} refused: {exc.detail} (HTTP {exc.status}, `{exc.code}`)", icon=":material/block:")
        st.stop()
    raise AssertionError("unreachable")  # st.stop() raises; this keeps type checkers honest


@st.cache_data(show_spinner=False, max_entries=2048, ttl=3600)
def fetch_bytes(base_url: str, url: str) -> bytes | None:
    """Bytes of an API-relative image URL, fetched by the UI server (the browser may not reach the API)."""
    try:
        return _client_for(base_url).fetch(url)
    except (ApiError, ApiUnavailableError):
        return None


def image_bytes(url: str | None) -> bytes | None:
    return fetch_bytes(api_url(), url) if url else None


@st.cache_data(show_spinner=False, max_entries=2048, ttl=3600)
def _square(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        side = min(img.size)
        out = ImageOps.fit(img.convert("RGB"), (side, side))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def square_image_bytes(url: str | None) -> bytes | None:
    """A thumbnail centre-cropped to a square, so a column's grid lines up whatever the aspect ratios."""
    data = image_bytes(url)
    if data is None:
        return None
    try:
        return _square(data)
    except (UnidentifiedImageError, OSError):
        return data


def sidebar_links() -> None:
    """Our own page links with readable names (the CLI turns Streamlit's file-name navigation off)."""
    with st.sidebar:
        for path, label, icon in PAGES:
            st.page_link(path, label=label, icon=icon)
        st.caption(f"API: {api_url()}")
        st.divider()


def index_rows(info: IndexInfo) -> int:
    """Rows of an index: the API's largest row count across models (0 when unknown)."""
    return int(info.row_count or 0)


def index_version(info: IndexInfo) -> str:
    """Changes whenever the index does (rows added, re-indexed): part of every cached result's key."""
    return "|".join(f"{m.model_key}:{m.row_count}:{m.manifest.get('updated_at')}" for m in info.models)


def choose_index(listing: IndexList, *, where: Any = None) -> IndexInfo | None:
    """Sidebar index picker whose choice survives page switches; None (with a message) if there is none."""
    target = where or st.sidebar
    if not listing.data:
        st.warning(
            "No index yet. Build one with `embedsvc index FOLDER --name NAME`, or start a bulk-index job "
            "on the **Index overview** page.",
            icon=":material/inbox:",
        )
        return None
    names = [i.name for i in listing.data]
    wanted = st.query_params.get("index") or st.session_state.get(INDEX_STATE)
    if wanted not in names:
        wanted = names[0]
    choice = target.selectbox(
        "Index",
        names,
        index=names.index(wanted),
        key="index_widget",
        help="Indexes the API knows, with their row counts on the Index overview page.",
    )
    if choice != st.session_state.get(INDEX_STATE):
        st.session_state[INDEX_STATE] = choice
    return next(i for i in listing.data if i.name == choice)


def label_names(info: IndexInfo) -> list[str]:
    """Every label name any model's manifest of this index records, in manifest order."""
    seen: dict[str, None] = {}
    for model in info.models:
        for name in model.manifest.get("label_names") or []:
            seen.setdefault(str(name), None)
    return list(seen)
