"""Bulk-index jobs: POST /indexes/{name}/jobs starts one (202), GET .../jobs/{id} reports progress."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.concurrency import run_in_threadpool

from embedsvc.api.deps import IndexPath, JobsDep, SettingsDep, public_path
from embedsvc.api.schemas import JobCreate, JobInfo, JobProgress, error_responses
from embedsvc.core.config import Settings
from embedsvc.jobs import Job

router = APIRouter(prefix="/indexes", tags=["jobs"])

JobIdPath = Annotated[str, Path(min_length=1, max_length=64, description="Job id from the POST.")]


def _public_summary(summary: dict[str, Any] | None, settings: Settings) -> dict[str, Any] | None:
    """The indexer's summary with its server paths relative to the data directory or allowed root."""
    if summary is None:
        return None
    out = dict(summary)
    for key in ("failures_report", "dataset_root"):
        if out.get(key):
            out[key] = public_path(out[key], settings)
    return out


def job_info(job: Job, settings: Settings) -> JobInfo:
    return JobInfo(
        id=job.id,
        index=job.index,
        state=job.state,  # type: ignore[arg-type]
        root=str(job.root),
        models=job.models,
        labels_from_dirs=job.labels_from_dirs,
        prune=job.prune,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        progress=JobProgress(done=job.done, total=job.total, phase=job.phase, per_model_rate=job.per_model_rate),
        summary=_public_summary(job.summary, settings),
        error=job.error,
    )


@router.post(
    "/{name}/jobs",
    status_code=202,
    response_model=JobInfo,
    summary="Bulk-index a server-side folder (under an allowed root) into this index, in the background",
    responses=error_responses(400, 401, 403, 404, 409, 413, 422, 503),
)
async def start_job(name: IndexPath, body: JobCreate, jobs: JobsDep, settings: SettingsDep) -> JobInfo:
    job = await run_in_threadpool(
        jobs.start, name, body.root, labels_from_dirs=body.labels_from_dirs, prune=body.prune, models=body.models
    )
    return job_info(job, settings)


@router.get(
    "/{name}/jobs",
    response_model=list[JobInfo],
    summary="Recent jobs of this index",
    responses=error_responses(401, 422),
)
def list_jobs(name: IndexPath, jobs: JobsDep, settings: SettingsDep) -> list[JobInfo]:
    return [job_info(j, settings) for j in jobs.list(name)]


@router.get(
    "/{name}/jobs/{job_id}",
    response_model=JobInfo,
    summary="Progress and result of one job",
    responses=error_responses(401, 404, 422),
)
def get_job(name: IndexPath, job_id: JobIdPath, jobs: JobsDep, settings: SettingsDep) -> JobInfo:
    return job_info(jobs.get(name, job_id), settings)
