"""Milvus bulk import through an object store, end to end and without mocks: the Milvus 2.3.5 test server keeps its
data in a moto S3 server (``common.storageType: minio``, both in one loopback-only namespace; tests/milvus_server.py),
as a Helm/Operator deployment keeps it in MinIO/S3. The importer uploads each parquet file with pymilvus'
``RemoteBulkWriter`` to that bucket, passes the object keys to ``do_bulk_insert``, and the server reads them from its
bucket. Counts are verified, a rerun of the same ids does not duplicate them, uploaded objects are removed; a missing
bucket or a dead endpoint fails when the importer is made; a job the server fails (the files went to another bucket
than the server's) keeps the rows those ids had."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from embedsvc.core.config import Settings
from embedsvc.indexer.writer import StoreWriter, bulk_models
from embedsvc.store import Store
from embedsvc.store.bulk import BulkConfig, BulkImporter, BulkImportError, JobRefusedError, S3Staging
from tests.milvus_server import MilvusHarnessError, MilvusTestServer
from tests.store.conftest import fresh_index, make_rows, manifest, stored_by_id


@pytest.fixture(scope="module")
def s3_server() -> Iterator[MilvusTestServer]:
    """A Milvus 2.3.5 server whose object storage is a moto S3 bucket (started once for this module)."""
    # Its data is thrown away: no need to wait out the graceful stop (10 s, more with import jobs behind it).
    server = MilvusTestServer(object_store=True, stop_timeout=3)
    try:
        server.start()
    except MilvusHarnessError as exc:
        pytest.fail(f"Milvus test server (object-store mode) unavailable: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server_store(s3_server: MilvusTestServer) -> Iterator[Store]:
    with Store(s3_server.uri, owner="pytest test_bulk_import_s3") as store:
        yield store


@pytest.fixture
def index(server_store: Store) -> Iterator[str]:
    with fresh_index(server_store, "s3") as name:
        yield name


def staging(server: MilvusTestServer, bucket: str | None = None, endpoint: str | None = None) -> S3Staging:
    return S3Staging(
        endpoint=endpoint or server.s3_endpoint,
        bucket=bucket or server.s3_bucket,
        access_key=server.s3_access_key,
        secret_key=server.s3_secret_key,
        prefix="embedsvc-bulk",
    )


def staged_objects(server: MilvusTestServer, bucket: str | None = None) -> list[str]:
    client = staging(server, bucket).client()
    return [o.object_name for o in client.list_objects(bucket or server.s3_bucket, prefix="embedsvc-bulk/",
                                                       recursive=True)]


def test_bucket_needs_an_endpoint() -> None:
    with pytest.raises(ValidationError, match="EMBEDSVC_BULK_S3_BUCKET='b' needs EMBEDSVC_BULK_S3_ENDPOINT"):
        Settings(bulk_s3_bucket="b")
    with pytest.raises(ValidationError, match="host:port without a scheme"):
        Settings(bulk_s3_bucket="b", bulk_s3_endpoint="http://minio:9000")
    assert Settings(bulk_s3_endpoint="minio:9000").bulk_s3_bucket == ""  # no bucket: local staging


@pytest.mark.integration
def test_s3_import_reads_from_the_bucket_verifies_and_rerun_does_not_duplicate(
    s3_server: MilvusTestServer, server_store: Store, index: str, tmp_path: Path
) -> None:
    server_store.ensure_collection(index, "big", manifest())
    settings = Settings(
        bulk_threshold=5,
        bulk_dir=tmp_path / "staging",
        bulk_s3_bucket=s3_server.s3_bucket,
        bulk_s3_endpoint=s3_server.s3_endpoint,
        bulk_s3_access_key=s3_server.s3_access_key,
        bulk_s3_secret_key=s3_server.s3_secret_key,
    )
    bulk = bulk_models(server_store, {"big": 30}, settings)
    assert bulk["big"].remote == staging(s3_server)
    assert "secret" not in repr(bulk["big"])  # the secret key stays out of logs

    rows = make_rows(index, 30)
    writer = StoreWriter(server_store, index, max_latency_s=60, bulk=bulk)
    for start in range(0, 30, 8):
        writer.put("big", rows[start : start + 8])
    writer.close()
    assert writer.written == {"big": 30} and writer.importers["big"].jobs == 1
    assert server_store.count(index, "big") == 30
    got = stored_by_id(server_store, index, "big", rows)
    for row in rows:
        assert got[row["id"]]["content_hash"] == row["content_hash"]
        np.testing.assert_array_equal(got[row["id"]]["vector"], row["vector"])
    # The server was given object keys (no local path) and read them from its bucket; they are removed afterwards.
    name = server_store.collection_name(index, "big")
    tasks = server_store._call("jobs", lambda c, **kw: c._get_connection().list_bulk_insert_tasks(0, name, **kw))
    assert len(tasks) == 1 and tasks[0].files.startswith("embedsvc-bulk/") and tasks[0].files.endswith(".parquet")
    assert not staged_objects(s3_server), "uploaded objects are removed after the import"
    assert not any((tmp_path / "staging").rglob("*.parquet")), "local buffers are removed after the upload"

    # A rerun: 10 changed rows and 10 unchanged ones of the same ids, imported again: one row per id.
    changed = make_rows(index, 30, seed=9)[:10]
    for row in changed:
        row["content_hash"] = "new-" + row["content_hash"]
    again = StoreWriter(server_store, index, max_latency_s=60, bulk=bulk_models(server_store, {"big": 20}, settings))
    again.put("big", changed + rows[10:20])
    again.close()
    assert again.written == {"big": 20} and again.importers["big"].jobs == 1
    assert server_store.count(index, "big") == 30  # count(*) counts duplicate ids: there are none
    got = stored_by_id(server_store, index, "big", rows)
    for row in changed + rows[10:]:
        assert got[row["id"]]["content_hash"] == row["content_hash"]
        np.testing.assert_array_equal(got[row["id"]]["vector"], row["vector"])
    assert not staged_objects(s3_server)


@pytest.mark.integration
def test_s3_missing_bucket_dead_endpoint_and_failed_upload(
    s3_server: MilvusTestServer, server_store: Store, index: str, tmp_path: Path
) -> None:
    server_store.ensure_collection(index, "m", manifest())
    with pytest.raises(BulkImportError) as missing:
        BulkImporter(server_store, index, "m", BulkConfig(tmp_path, remote=staging(s3_server, "no-such-bucket")))
    assert str(missing.value).startswith(
        f"the bulk-import bucket s3://no-such-bucket at {s3_server.s3_endpoint} does not exist; "
    )
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    t0 = time.monotonic()
    with pytest.raises(BulkImportError, match=rf"^cannot reach the bulk-import bucket s3://{s3_server.s3_bucket} "
                       rf"at {dead}: .*(Connection refused|Max retries)"):
        BulkImporter(server_store, index, "m", BulkConfig(tmp_path, remote=staging(s3_server, endpoint=dead)))
    assert time.monotonic() - t0 < 15

    # The bucket goes away after the check: the upload fails, with the reason, before anything is deleted.
    before = make_rows(index, 4, seed=3)
    server_store.upsert(index, "m", before)
    client = staging(s3_server).client()
    client.make_bucket("gone-bucket")
    importer = BulkImporter(server_store, index, "m", BulkConfig(tmp_path / "st", remote=staging(s3_server,
                                                                                                 "gone-bucket")))
    client.remove_bucket("gone-bucket")
    importer.add(make_rows(index, 4))
    with pytest.raises(BulkImportError, match=r"^uploading bulk-import files to s3://gone-bucket at .* failed: .*"
                       r"doesn't exist"):
        importer.close()
    importer.abort()
    assert server_store.count(index, "m") == 4 and stored_by_id(server_store, index, "m", before)[before[0]["id"]][
        "content_hash"] == before[0]["content_hash"]
    assert not any((tmp_path / "st").rglob("*.parquet"))


@pytest.mark.integration
def test_s3_job_on_another_bucket_fails_and_keeps_the_previous_rows(
    s3_server: MilvusTestServer, server_store: Store, index: str, tmp_path: Path
) -> None:
    """Files uploaded to a bucket that is not the server's: the server looks the keys up in its own bucket and fails
    the job; the rows the file's ids had are stored again. The uploaded object is the importer's parquet (read back
    with pyarrow), and ``abort`` removes it."""
    server_store.ensure_collection(index, "m", manifest())
    before = make_rows(index, 4, seed=3)  # same ids as the first rows imported below, other vectors
    server_store.upsert(index, "m", before)
    client = staging(s3_server).client()
    if not client.bucket_exists("other-bucket"):
        client.make_bucket("other-bucket")
    config = BulkConfig(tmp_path / "staging", remote=staging(s3_server, "other-bucket"), file_bytes=3000)
    importer = BulkImporter(server_store, index, "m", config)
    rows = make_rows(index, 40)
    refused = (
        rf"failed: .*s3://other-bucket at {s3_server.s3_endpoint} must be its bucket \(minio.bucketName "
        r".*EMBEDSVC_BULK_S3_BUCKET\); the rows those ids had before are kept"
    )
    with pytest.raises(JobRefusedError, match=refused):
        for row in rows:
            importer.add([row])
    cut = rows.index(row) + 1
    assert 10 < cut < 40  # the file was cut by size before the last row
    (key,) = staged_objects(s3_server, "other-bucket")
    table = pq.read_table(io.BytesIO(client.get_object("other-bucket", key).read()))
    assert table.column("id").to_pylist() == [r["id"] for r in rows[:cut]]
    np.testing.assert_array_equal(np.array(table.column("vector").to_pylist()[0], np.float32), rows[0]["vector"])
    importer.abort()
    assert not staged_objects(s3_server, "other-bucket")
    assert server_store.count(index, "m") == len(before)
    got = stored_by_id(server_store, index, "m", before)
    for row in before:
        np.testing.assert_array_equal(got[row["id"]]["vector"], row["vector"])
        assert got[row["id"]]["content_hash"] == row["content_hash"]
    assert not any((tmp_path / "staging").rglob("*.parquet"))
