"""Index overview: what the API has indexed, with which models and weights, and bulk-index jobs.

A job indexes a folder on the *server* (under one of its allowed roots) in the background; the page
starts it through the API and polls its progress in a fragment, so the rest of the page stays put.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from embedsvc.client import ApiError, ApiUnavailableError, IndexList, JobInfo, ModelList
from embedsvc.webui.common import api_call, api_down_message, client, sidebar_links

JOB_STATE = "overview_job"  # (index, job id) of the job this session started last
FINISHED = ("succeeded", "failed", "cancelled")


def show_readiness() -> None:
    ready = api_call(client().ready, what="Readiness check")
    if ready.ready:
        st.success(
            f"API ready: models {', '.join(ready.models_loaded) or '(none)'}; Milvus {ready.milvus}.",
            icon=":material/check_circle:",
        )
    else:
        st.warning(
            f"API not ready: {ready.reason or 'no reason given'} (Milvus {ready.milvus}).",
            icon=":material/hourglass_empty:",
        )


def index_table(listing: IndexList) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "index": i.name,
                "rows": i.row_count,
                "models": ", ".join(m.model_key for m in i.models),
                "labels": max((len(m.manifest.get("label_names") or []) for m in i.models), default=0),
                "dataset root": next((m.manifest.get("dataset_root") for m in i.models if m.manifest), None),
            }
            for i in listing.data
        ]
    )


def model_table(models: ModelList) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model": m.key,
                "name": m.display_name,
                "timm": m.model_name,
                "dim": m.dim,
                "device": m.device,
                "weights": m.provenance.label,
                "untrained": m.untrained,
            }
            for m in models.data
        ]
    )


def show_indexes(listing: IndexList) -> None:
    st.subheader("Indexes")
    if not listing.data:
        st.info(
            "No index yet: start one with the form below, or run `embedsvc index FOLDER --name NAME`.",
            icon=":material/inbox:",
        )
        return
    st.dataframe(index_table(listing), hide_index=True, width="stretch")
    for info in listing.data:
        with st.expander(f"{info.name}: {info.row_count or 0} rows, {len(info.models)} model(s)"):
            rows = [
                {
                    "model": m.model_key,
                    "rows": m.row_count,
                    "served here": m.loaded,
                    "matches the served model": m.compatible,
                    "weights": (m.manifest.get("weights") or {}).get("label"),
                    "dim": m.manifest.get("dim"),
                    "updated": m.manifest.get("updated_at"),
                }
                for m in info.models
            ]
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
            if any(m.compatible is False for m in info.models):
                st.warning("A served model differs from the one this index was built with: re-index before searching.")
            for m in info.models:
                st.markdown(f"**Manifest of `{m.model_key}`**")
                st.json(m.manifest, expanded=False)


def show_job(job: JobInfo) -> None:
    p = job.progress
    total = p.total or 0
    fraction = min(1.0, p.done / total) if total else (1.0 if job.state == "succeeded" else 0.0)
    text = f"Job {job.id} on **{job.index}**: {job.state}"
    text += f" · {p.phase}" if p.phase else ""
    text += f" · {p.done}/{total}" if total else f" · {p.done} done"
    st.progress(fraction, text=text)
    if p.per_model_rate:
        st.caption(" · ".join(f"{k}: {v:.1f} img/s" for k, v in p.per_model_rate.items()))
    if job.state == "failed":
        st.error(f"Job failed: {job.error}", icon=":material/block:")
    elif job.state == "succeeded" and job.summary:
        st.success("Job finished.", icon=":material/check_circle:")
        st.json(job.summary, expanded=False)


def job_progress_body() -> None:
    """One look at this session's job; a full rerun once it finishes (new row counts above)."""
    current = st.session_state.get(JOB_STATE)
    if not current:
        return
    index, job_id = current
    try:
        job = client().job(index, job_id)
    except ApiUnavailableError as exc:
        st.error(api_down_message(exc), icon=":material/power_off:")
        return
    except ApiError as exc:
        st.error(f"Job {job_id}: {exc.detail}", icon=":material/block:")
        return
    show_job(job)
    if job.state in FINISHED and not st.session_state.get(f"{JOB_STATE}-done-{job_id}"):
        st.session_state[f"{JOB_STATE}-done-{job_id}"] = True
        st.rerun()  # refresh the index table with the new row counts


def job_progress() -> None:
    """Poll once a second (as a fragment, so only this part reruns) while the job is unfinished."""
    current = st.session_state.get(JOB_STATE)
    polling = bool(current) and not st.session_state.get(f"{JOB_STATE}-done-{current[1]}")
    st.fragment(job_progress_body, run_every=1.0 if polling else None)()


def start_job_form(listing: IndexList, models: ModelList) -> None:
    st.subheader("Bulk-index a server folder")
    st.caption("The folder is on the API's machine and must lie under one of its allowed roots (`--allowed-root`).")
    with st.form("bulk-index"):
        existing = [i.name for i in listing.data]
        name = st.text_input("Index name", value=existing[0] if existing else "", key="job-index",
                             help="An existing index to update, or a new name.")
        root = st.text_input("Folder on the server", key="job-root", placeholder="/data/photos")
        chosen = st.multiselect("Models", [m.key for m in models.data], key="job-models",
                                help="Empty: the index's models (a new index: every served model).")
        labels_from_dirs = st.checkbox("Labels from first-level folder names", value=True, key="job-labels")
        prune = st.checkbox("Remove rows whose files are gone", key="job-prune")
        submitted = st.form_submit_button("Start indexing")
    if not submitted:
        return
    if not name.strip() or not root.strip():
        st.error("Give both an index name and a folder.")
        return
    try:
        job = client().start_job(
            name.strip(), root.strip(), labels_from_dirs=labels_from_dirs, prune=prune, models=chosen or None
        )
    except ApiUnavailableError as exc:
        st.error(api_down_message(exc), icon=":material/power_off:")
        return
    except ApiError as exc:
        st.error(f"The API refused the job: {exc.detail} (HTTP {exc.status}, `{exc.code}`)", icon=":material/block:")
        return
    st.session_state[JOB_STATE] = (job.index, job.id)
    st.toast(f"Started job {job.id} on {job.index}")


def main() -> None:
    st.set_page_config(page_title="embedsvc: indexes", page_icon=":material/folder_open:", layout="wide")
    sidebar_links()
    st.title("Index overview")
    show_readiness()
    listing = api_call(client().indexes, what="Listing indexes")
    models = api_call(client().models, what="Listing models")
    show_indexes(listing)
    st.subheader("Served models")
    st.dataframe(model_table(models), hide_index=True, width="stretch")
    if any(m.untrained for m in models.data):
        st.warning(
            "Some served models run UNTRAINED random weights: their neighbours are meaningless.",
            icon=":material/warning:",
        )
    start_job_form(listing, models)
    job_progress()


main()
