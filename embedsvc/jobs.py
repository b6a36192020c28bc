"""Background bulk-index jobs started through the API: one per index at a time, only under allowed roots.

A job is a thread running the indexer's ``run_index`` with the service's own embedders and store (a
Milvus Lite file can only be open in one process, so the service indexes in-process). Progress is
kept in memory; the indexer itself makes re-runs resumable, so a job lost with the process is simply
started again.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cachetools import LRUCache
from pydantic_core import to_jsonable_python

from embedsvc.core.config import Settings
from embedsvc.core.errors import EmbedsvcError
from embedsvc.embedder import Embedder
from embedsvc.manifest import incompatibilities
from embedsvc.search import ModelNotLoadedError, StoreHolder, UnknownModelError
from embedsvc.store import StoreUnavailableError
from embedsvc.store.naming import check_index_name

log = logging.getLogger(__name__)


class JobError(EmbedsvcError, ValueError):
    """A bulk-index job the service refuses."""

    code = "bad_job"
    http_status = 400


class RootNotAllowedError(JobError):
    code = "root_not_allowed"
    http_status = 403


class JobConflictError(JobError):
    code = "job_running"
    http_status = 409


class JobNotFoundError(JobError):
    code = "unknown_job"
    http_status = 404


class BadRootError(JobError):
    code = "bad_root"
    http_status = 400


class IndexRootMismatchError(JobError):
    """The index exists and was built from another folder (its rows' paths mean other files)."""

    code = "index_root_mismatch"
    http_status = 409


def _now() -> datetime:
    return datetime.now(UTC)


def jsonable(value: Any) -> Any:
    """Summaries are dataclasses with Paths, numpy scalars and datetimes inside: plain JSON values."""
    return to_jsonable_python(value, fallback=lambda v: v.item() if hasattr(v, "item") else str(v))


@dataclasses.dataclass
class Job:
    id: str
    index: str
    root: Path
    models: list[str]
    labels_from_dirs: bool
    prune: bool
    state: str = "queued"
    created_at: datetime = dataclasses.field(default_factory=_now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    done: int = 0
    total: int | None = None
    phase: str | None = None
    per_model_rate: dict[str, float] = dataclasses.field(default_factory=dict)
    summary: dict[str, Any] | None = None
    error: str | None = None
    stop_event: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False)
    thread: threading.Thread | None = dataclasses.field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")


def _shown(root: str, limit: int = 200) -> str:
    """The client's root as it sent it (quoted), cut to a readable length."""
    return repr(root if len(root) <= limit else root[:limit] + "...")


def check_root(root: str, allowed_roots: Sequence[Path]) -> Path:
    """The resolved folder, only if it lies under one of the allowed roots (symlinks resolved first).

    The root comes from a client: every way it can fail (NUL bytes, over-long names, loops,
    permissions) is a 4xx here, and the messages only echo what the client sent.
    """
    if not allowed_roots:
        raise RootNotAllowedError("bulk indexing through the API is disabled: no allowed roots are configured")
    if "\x00" in root:
        raise BadRootError("root contains a NUL character")
    path = Path(root)
    if not path.is_absolute():
        raise BadRootError(f"root must be an absolute server-side path, got {_shown(root)}")
    try:
        resolved = path.resolve()
        inside = any(resolved.is_relative_to(Path(allowed).resolve()) for allowed in allowed_roots)
        is_dir = inside and resolved.is_dir()
    except (OSError, RuntimeError, ValueError) as exc:  # ENAMETOOLONG, ELOOP, EACCES, surrogates, ...
        reason = errno.errorcode.get(getattr(exc, "errno", None) or 0, type(exc).__name__)
        raise BadRootError(
            f"cannot use root {_shown(root)}: {getattr(exc, 'strerror', None) or 'invalid path'}",
            log_detail=f"{reason}: {exc}",
        ) from None
    if not inside:
        raise RootNotAllowedError(f"root {_shown(root)} is not under an allowed root")
    if not is_dir:
        raise BadRootError(f"root {_shown(root)} is not a folder")
    return resolved


class JobManager:
    def __init__(
        self,
        *,
        store: StoreHolder,
        embedders: Mapping[str, Embedder],
        settings: Settings,
        metrics: Any = None,
        max_history: int = 100,
    ) -> None:
        """Job forwards take turns with searches' through the embedders' own ``ForwardGate``."""
        self.store = store
        self.embedders = dict(embedders)
        self.settings = settings
        self.metrics = metrics
        self.max_history = max_history
        # The last max_history jobs read or started; running ones are also kept apart so that the
        # history's eviction can never lose a job whose progress is still changing.
        self._history: LRUCache[str, Job] = LRUCache(maxsize=max_history)
        self._running: dict[str, Job] = {}  # index -> its running job
        self._lock = threading.Lock()

    def _choose_models(self, index: str, requested: Sequence[str] | None) -> list[str]:
        if requested:
            chosen = []
            for name in requested:
                if name not in self.embedders:
                    from embedsvc.models.registry import get_spec

                    try:
                        key = get_spec(name).key
                    except KeyError:
                        raise UnknownModelError(f"unknown model {name!r}") from None
                    if key not in self.embedders:
                        raise ModelNotLoadedError(
                            f"model {key!r} is not loaded by this service (loaded: {', '.join(self.embedders)})"
                        )
                    name = key
                if name not in chosen:
                    chosen.append(name)
            return chosen
        existing = self.store.call(lambda s: s.models_of(index))  # [] for a new index
        loaded = [m for m in existing if m in self.embedders]
        return loaded or list(self.embedders)

    def _check_same_root(self, index: str, folder: Path) -> None:
        candidate = {"index_kind": "folder", "dataset_root": str(folder)}

        def problems(store: Any) -> list[str]:
            manifests = [store.get_manifest(index, key) for key in store.models_of(index)]
            return [p for manifest in manifests for p in incompatibilities(manifest, candidate)]

        if self.store.call(problems):
            raise IndexRootMismatchError(
                f"index {index!r} was built from another folder; index {str(folder)!r} under a new index name"
            )

    def start(
        self,
        index: str,
        root: str,
        *,
        labels_from_dirs: bool = False,
        prune: bool = False,
        models: Sequence[str] | None = None,
    ) -> Job:
        check_index_name(index)  # the name becomes collection and report names: refuse it before any work
        folder = check_root(root, self.settings.allowed_roots)
        chosen = self._choose_models(index, models)
        self._check_same_root(index, folder)
        with self._lock:
            running = self._running.get(index)
            if running is not None:
                raise JobConflictError(f"job {running.id} is already running for index {index!r}")
            job = Job(
                id=uuid.uuid4().hex,
                index=index,
                root=folder,
                models=chosen,
                labels_from_dirs=labels_from_dirs,
                prune=prune,
            )
            self._running[index] = job
            self._history[job.id] = job
        job.thread = threading.Thread(target=self._run, args=(job,), name=f"index-job-{job.id[:8]}", daemon=True)
        job.thread.start()
        log.info("job %s: indexing %s into %r with %s", job.id, folder, index, ", ".join(chosen))
        return job

    def _progress(self, job: Job, update: Any) -> None:
        job.done = int(getattr(update, "done", job.done) or 0)
        total = getattr(update, "total", None)
        job.total = None if total is None else int(total)
        job.phase = getattr(update, "phase", None)
        rates = getattr(update, "per_model_rate", None) or {}
        job.per_model_rate = {str(k): float(v) for k, v in dict(rates).items()}

    def _run(self, job: Job) -> None:
        from embedsvc.indexer.folder import folder_source
        from embedsvc.indexer.runner import run_index

        job.state = "running"
        job.started_at = _now()
        if self.metrics is not None:
            self.metrics.jobs_running.inc()
        try:
            source = folder_source(job.root, labels_from_dirs=job.labels_from_dirs)
            summary = run_index(
                source,
                index_name=job.index,
                embedders={k: self.embedders[k] for k in job.models},
                store=self.store.get(),
                settings=self.settings,
                # Decode in the job thread: forking DataLoader workers out of a server process that
                # holds gRPC channels and a threadpool is not safe.
                workers=0,
                prune=job.prune,
                progress=lambda update: self._progress(job, update),
                stop_event=job.stop_event,
            )
            job.summary = jsonable(summary)
            job.state = "cancelled" if job.stop_event.is_set() else "succeeded"
        except Exception as exc:
            # The client reads a message without server paths; the details go to the log under the job id.
            log.exception("job %s failed", job.id)
            if isinstance(exc, EmbedsvcError):
                job.error = f"{exc.code}: {exc.client_message()}"
            else:
                job.error = f"internal error (logged on the server under job {job.id})"
            job.state = "failed"
            if isinstance(exc, StoreUnavailableError):
                self.store.invalidate()
        finally:
            job.finished_at = _now()
            with self._lock:
                if self._running.get(job.index) is job:
                    del self._running[job.index]
                self._history[job.id] = job  # back in (as the newest) if evicted while it ran
            if self.metrics is not None:
                self.metrics.jobs_running.dec()
            log.info("job %s: %s", job.id, job.state)

    def _all(self) -> list[Job]:
        with self._lock:
            jobs = {j.id: j for j in (*self._history.values(), *self._running.values())}
        return sorted(jobs.values(), key=lambda j: j.created_at)

    def get(self, index: str, job_id: str) -> Job:
        with self._lock:
            job = self._history.get(job_id)
            if job is None:
                job = self._running.get(index)
        if job is None or job.id != job_id or job.index != index:
            raise JobNotFoundError(f"no job {job_id!r} for index {index!r}")
        return job

    def list(self, index: str | None = None) -> list[Job]:
        return [j for j in self._all() if index is None or j.index == index]

    def shutdown(self, timeout: float = 30.0) -> None:
        """Ask running jobs to stop at the next batch and wait for them (the indexer resumes later)."""
        jobs = [j for j in self._all() if not j.finished]
        for job in jobs:
            job.stop_event.set()
        for job in jobs:
            if job.thread is not None:
                job.thread.join(timeout)
