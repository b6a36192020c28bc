"""Milvus bulk import: a large ingest reaches a server as parquet files and import jobs instead of row upserts.

The parquet is written by pymilvus' ``LocalBulkWriter`` from the collection's own schema (read from the server, so
the catalog stays its one owner) into ``staging_dir``, which the server must read at ``server_dir`` (its local
storage, or a volume both share; the same path when unset). Each file is one job of Milvus' import API (gRPC
``Import``, pymilvus ``do_bulk_insert``: Milvus 2.3 takes one parquet file per job and reads it by absolute path from
local storage, measured on the 2.3.5 standalone; 2.4+ keeps the same call). After a job completes the collection is
reloaded with ``refresh`` (imported segments are otherwise invisible for seconds) and the row counts are verified.

Object-store staging (``BulkConfig.remote``, an ``S3Staging``; Helm/Operator deployments, whose servers keep their data
in MinIO/S3 and read import files from there): pymilvus' ``RemoteBulkWriter`` writes each file under ``staging_dir``
and uploads it to the bucket under ``prefix``; the object keys go to ``do_bulk_insert`` as they are, and the server
resolves them in its own bucket, which therefore must be this one (its ``minio.bucketName``). The bucket is checked
when the importer is made (one clear error for a wrong endpoint or a missing bucket, before anything is deleted), and
uploaded objects are removed after their job, and on ``abort``/``close``. Measured against Milvus 2.3.5 standalone
on a moto S3 server (tests/store/test_bulk_import_s3.py).

Upsert semantics, because an import *inserts* (a server then keeps two rows under one id, measured on 2.3.5):
before each file is imported, every id in it is deleted (stored or not; a delete is idempotent), after waiting for any
import job of the collection still running (one a killed run left behind would otherwise land after the delete).
Then a rerun or a resumed run re-imports a row without duplicating it, and the verification, ``count(*)`` of the
file's ids, which counts duplicates, proves exactly one row per id. The rows those ids had are read before the delete
and upserted back when the server fails the job (a failed job stores none of its rows), so a refused import loses
nothing that was stored.

Milvus Lite has no import API: ``BulkImporter`` refuses it with ``BulkImportUnsupportedError``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedsvc.store.errors import StoreError
from embedsvc.store.milvus import Store
from embedsvc.store.rows import clean_row

log = logging.getLogger(__name__)

#: Buffered bytes (vectors and scalars, as pymilvus estimates them) that make one parquet file and one import job.
FILE_BYTES = 128 * 1024 * 1024
#: The first file of an importer is small, so that a server that cannot read ``server_dir`` fails in seconds.
FIRST_FILE_ROWS = 1000
_ID_CHUNK = 1000  # ids per delete / count request (keeps filter expressions small)
_COUNT_CHUNK = 10_000
_POLL_S = 0.5
_REFRESH_S = 10.0
#: pymilvus ``BulkInsertState`` states: done, failed, and the states of a job still running.
_DONE, _FAILED, _RUNNING = 6, (1, 7), (0, 2, 5)  # Completed; Failed, FailedAndCleaned; Pending, Started, Persisted


class BulkImportError(StoreError):
    """A bulk import job failed, timed out, or left other row counts than it was given."""

    code = "bulk_import_failed"
    public_message = "bulk import into the vector database failed (details are in the server log)"


class JobRefusedError(BulkImportError):
    """The server failed an import job (all or nothing: none of its rows were stored), e.g. it cannot read the file."""


class BulkImportUnsupportedError(BulkImportError):
    """Bulk import was asked of a store that cannot do it (Milvus Lite)."""

    code = "bulk_import_unsupported"
    http_status = 400
    public_message = None


@dataclass(frozen=True)
class S3Staging:
    """The MinIO/S3 bucket import files are uploaded to: the Milvus server's own object storage (``minio.*`` of
    its config), since the server resolves the object keys it is given in its own bucket."""

    endpoint: str  # host:port, no scheme
    bucket: str
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    secure: bool = False
    prefix: str = "embedsvc-bulk"

    @property
    def where(self) -> str:
        return f"s3://{self.bucket} at {self.endpoint}"

    def http_client(self) -> Any:
        """Bounded waits: minio's default pool retries an unreachable endpoint for a long time."""
        import urllib3

        return urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5, read=300),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )

    def client(self) -> Any:
        """A ``minio.Minio`` client of the bucket's server (minio comes with pymilvus)."""
        from minio import Minio

        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            http_client=self.http_client(),
        )


@dataclass(frozen=True)
class BulkConfig:
    """Where the parquet is staged and how long a job may take; ``remote`` set: uploaded to that bucket (then
    ``staging_dir`` only buffers each file until its upload, and ``server_dir`` is unused)."""

    staging_dir: Path
    server_dir: Path | None = None
    timeout_s: float = 1800.0
    file_bytes: int = FILE_BYTES
    remote: S3Staging | None = None

    def server_path(self, local: Path) -> str:
        """``local`` (under ``staging_dir``) as the Milvus server sees it."""
        if self.server_dir is None:
            return str(local.resolve())
        return str(self.server_dir / local.resolve().relative_to(self.staging_dir.resolve()))


def check_bulk_capable(store: Store) -> None:
    """``BulkImportUnsupportedError`` for Milvus Lite (it has no import API; row upserts are its only write)."""
    if store.is_lite:
        raise BulkImportUnsupportedError(
            f"Milvus Lite ({store.uri}) cannot bulk import; index into a Milvus server (MILVUS_URI=http://...), "
            "or leave the bulk threshold unset so that rows are upserted"
        )


class BulkImporter:
    """Rows of one (index, model) in, imported and verified files out; ``close()`` imports the rest.

    Not thread-safe: one writer thread feeds it (``embedsvc.indexer.writer``). ``imported``, ``jobs`` and
    ``seconds`` (time in jobs, verification included) are for the run's summary.
    """

    def __init__(self, store: Store, index: str, model_key: str, config: BulkConfig) -> None:
        check_bulk_capable(store)
        from pymilvus import CollectionSchema
        from pymilvus.bulk_writer import BulkFileType, LocalBulkWriter, RemoteBulkWriter

        self.store, self.index, self.model_key, self.config = store, index, model_key, config
        self.name, manifest = store._manifest(index, model_key)
        self.dim = int(manifest["dim"])
        described = store._call(f"describing {self.name}", lambda c, **kw: c.describe_collection(self.name, **kw))
        schema = CollectionSchema.construct_from_dict(described)
        remote = config.remote
        self._s3: Any = None
        self._staged: list[str] = []  # object keys uploaded and not removed yet (remote staging)
        self._upload_error: BaseException | None = None
        if remote is not None:
            self._s3 = remote.client()
            self._check_bucket(remote)
        try:
            config.staging_dir.mkdir(parents=True, exist_ok=True)
            if remote is None:
                self._writer = LocalBulkWriter(
                    schema=schema, local_path=str(config.staging_dir), chunk_size=2**62,
                    file_type=BulkFileType.PARQUET,
                )
                self._local_dir = Path(self._writer.data_path)
            else:
                connect = RemoteBulkWriter.S3ConnectParam(
                    bucket_name=remote.bucket, endpoint=remote.endpoint, access_key=remote.access_key,
                    secret_key=remote.secret_key, secure=remote.secure, http_client=remote.http_client(),
                )
                self._writer = RemoteBulkWriter(
                    schema=schema, remote_path=remote.prefix, connect_param=connect, chunk_size=2**62,
                    file_type=BulkFileType.PARQUET, local_path=str(config.staging_dir),
                )
                self._local_dir = Path(LocalBulkWriter.data_path.fget(self._writer))  # type: ignore[attr-defined]
                self._hook_upload()
        except OSError as exc:
            raise BulkImportError(f"cannot stage bulk-import files in {config.staging_dir}: {exc}") from exc
        self._ids: list[int] = []
        self._file_limit = FIRST_FILE_ROWS
        self.imported = 0
        self.jobs = 0
        self.seconds = 0.0

    # -- feeding --------------------------------------------------------------------------------
    def add(self, rows: Sequence[dict[str, Any]]) -> None:
        """Buffer rows (checked as an upsert would check them); a full buffer becomes one import job."""
        for row in rows:
            clean = clean_row(row, self.dim)
            self._writer.append_row(clean)
            self._ids.append(clean["id"])
            if len(self._ids) >= self._file_limit or self._writer.buffer_size >= self.config.file_bytes:
                self._import_buffer()

    def close(self) -> int:
        """Import what is buffered; returns the rows imported by this importer."""
        if self._ids:
            self._import_buffer()
        self._cleanup()
        return self.imported

    def abort(self) -> None:
        """Drop what is buffered (nothing half-imported stays behind: a job is all or nothing)."""
        self._ids = []
        self._cleanup()

    def _cleanup(self) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(self._local_dir, ignore_errors=True)
        self._remove_objects()

    # -- object-store staging -------------------------------------------------------------------
    def _check_bucket(self, remote: S3Staging) -> None:
        """The endpoint answers and the bucket exists, before anything is deleted or written."""
        try:
            exists = self._s3.bucket_exists(remote.bucket)
        except Exception as exc:  # noqa: BLE001 - urllib3 (unreachable) or S3 (credentials) errors alike
            raise BulkImportError(f"cannot reach the bulk-import bucket {remote.where}: {exc}") from exc
        if not exists:
            raise BulkImportError(
                f"the bulk-import bucket {remote.where} does not exist; EMBEDSVC_BULK_S3_BUCKET must be the Milvus "
                "server's own bucket (minio.bucketName of its config), which it reads import files from"
            )

    def _hook_upload(self) -> None:
        """``RemoteBulkWriter`` uploads in its flush thread, where an error is only logged: record it instead, so
        that ``_import_buffer`` raises it (nothing is deleted or imported then)."""
        upload = self._writer._upload

        def recording_upload(file_list: list[str]) -> Any:
            try:
                return upload(file_list)
            except BaseException as exc:  # noqa: BLE001 - re-raised by _import_buffer, in the caller's thread
                self._upload_error = exc
                return None

        self._writer._upload = recording_upload

    def _remove_objects(self) -> None:
        if self._s3 is None or self.config.remote is None:
            return
        keys, self._staged = self._staged, []
        for key in keys:
            try:
                self._s3.remove_object(self.config.remote.bucket, key)
            except Exception as exc:  # noqa: BLE001 - best effort: an import never depends on it
                log.warning("could not remove staged bulk-import object %s from %s: %s", key,
                            self.config.remote.where, exc)

    # -- one file, one job ----------------------------------------------------------------------
    def _import_buffer(self) -> None:
        start = time.monotonic()
        ids, self._ids = self._ids, []
        self._file_limit = 2**62  # after the first (small) file only ``file_bytes`` cuts files
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids within one bulk import")
        batches = len(self._writer.batch_files)
        self._writer.commit()
        remote = self.config.remote
        if remote is not None:
            error, self._upload_error = self._upload_error, None
            if error is not None or len(self._writer.batch_files) != batches + 1:
                raise BulkImportError(
                    f"uploading bulk-import files to {remote.where} failed: {error or 'no file was uploaded'}"
                ) from error
            server_files = [str(key) for key in self._writer.batch_files[-1]]  # keys in the server's own bucket
            self._staged += server_files
            files: list[Path] = []
        else:
            files = [Path(f) for f in self._writer.batch_files[-1]]
            server_files = [self.config.server_path(f) for f in files]
        deadline = start + self.config.timeout_s
        self._wait_idle(deadline)
        previous = self.store.get_rows(self.index, self.model_key, ids, with_vectors=True)  # put back if refused
        self.store.delete(self.index, self.model_key, ids)  # an import inserts: no id may be stored twice
        try:
            task = self.store._call(
                f"starting a bulk import into {self.name}",
                lambda c, **kw: c._get_connection().do_bulk_insert(self.name, "", server_files, **kw),
            )
            self._wait_job(task, deadline)
        except JobRefusedError:
            self.store.upsert(self.index, self.model_key, previous)  # a refused job stored nothing: undo the delete
            raise
        self._verify(ids, deadline)
        for f in files:
            f.unlink(missing_ok=True)
        self._remove_objects()
        self.imported += len(ids)
        self.jobs += 1
        self.seconds += time.monotonic() - start
        log.info("bulk-imported %d rows into %s/%s (job %s, %.1f s)", len(ids), self.index, self.model_key, task,
                 time.monotonic() - start)

    def _state(self, task: int) -> Any:
        return self.store._call(
            f"reading bulk import job {task}", lambda c, **kw: c._get_connection().get_bulk_insert_state(task, **kw)
        )

    def _wait_idle(self, deadline: float) -> None:
        """Wait for import jobs of this collection that are still running (e.g. left by a killed run)."""
        while True:
            tasks = self.store._call(
                f"listing bulk import jobs of {self.name}",
                lambda c, **kw: c._get_connection().list_bulk_insert_tasks(0, self.name, **kw),
            )
            running = [t for t in tasks if t.state in _RUNNING]
            if not running:
                return
            if time.monotonic() > deadline:
                raise BulkImportError(f"import jobs {[t.task_id for t in running]} into {self.name} still running")
            time.sleep(_POLL_S)

    def _wait_job(self, task: int, deadline: float) -> None:
        while True:
            state = self._state(task)
            if state.state == _DONE:
                return
            if state.state in _FAILED:
                reason = state.infos.get("failed_reason") or state.state_name
                remote = self.config.remote
                if remote is not None:
                    where = (
                        f"the server reads the uploaded files from its own object storage, so {remote.where} must be "
                        "its bucket (minio.bucketName of its config); see EMBEDSVC_BULK_S3_BUCKET"
                    )
                else:
                    where = (
                        f"the server must read the staged files at {self.config.server_dir or self.config.staging_dir}"
                        "; see EMBEDSVC_BULK_SERVER_DIR"
                    )
                raise JobRefusedError(
                    f"bulk import job {task} into {self.name} failed: {reason} ({where}); the rows those ids had "
                    "before are kept"
                )
            if time.monotonic() > deadline:
                raise BulkImportError(
                    f"bulk import job {task} into {self.name} not done after {self.config.timeout_s:.0f} s "
                    f"({state.state_name}, {state.row_count} rows)"
                )
            time.sleep(_POLL_S)

    def _verify(self, ids: list[int], deadline: float) -> None:
        """Every id of the file stored exactly once (``count(*)`` counts duplicates), once the segments are loaded.

        A refreshing load makes the new segments visible in ~6 s on 2.3.5 (~18 s without); waiting for the load call
        itself takes longer than polling the counts, so it is started without waiting (and again every 10 s). Chunks
        are checked in order, each polled until complete: one pass over the ids once the segments are visible."""
        refreshed = [0.0]

        def refresh() -> None:
            if time.monotonic() - refreshed[0] > _REFRESH_S:
                self.store._call(
                    f"loading {self.name}",
                    lambda c, **kw: c.load_collection(self.name, refresh=True, _async=True, **kw),
                )
                refreshed[0] = time.monotonic()

        refresh()
        for begin in range(0, len(ids), _COUNT_CHUNK):
            chunk = ids[begin : begin + _COUNT_CHUNK]
            while True:
                got = self.store._count(self.name, f"id in [{', '.join(map(str, chunk))}]")
                if got > len(chunk):
                    raise BulkImportError(
                        f"bulk import into {self.name} stored {got} rows for {len(chunk)} ids (duplicates)"
                    )
                if got == len(chunk):
                    break
                if time.monotonic() > deadline:
                    raise BulkImportError(
                        f"bulk import into {self.name}: {begin + got} of {len(ids)} rows visible after the job"
                    )
                time.sleep(_POLL_S)
                refresh()
