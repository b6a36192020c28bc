"""Milvus bulk import against the real Milvus 2.3.5 test server (local storage, no MinIO): the writer's switch sends
a model past the threshold through parquet files and import jobs, counts are verified, and a rerun that imports the
same ids again leaves exactly one row per id. Milvus Lite refuses a forced bulk import with one clear line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedsvc.cli import app
from embedsvc.core.config import Settings, get_settings
from embedsvc.export import export_index
from embedsvc.indexer.plan import RunPlan
from embedsvc.indexer.writer import DEFAULT_BULK_THRESHOLD, StoreWriter, bulk_models, rows_to_write
from embedsvc.store import Store
from embedsvc.store.bulk import BulkConfig, BulkImporter, BulkImportError, BulkImportUnsupportedError
from tests.store.conftest import fresh_index, make_rows, manifest, stored_by_id
from tests.support import write_images


@pytest.fixture(scope="module")
def server_store(milvus_server_uri: str) -> Iterator[Store]:
    with Store(milvus_server_uri, owner="pytest test_bulk_import") as store:
        yield store


@pytest.fixture
def index(server_store: Store) -> Iterator[str]:
    with fresh_index(server_store, "bulk") as name:
        yield name


@pytest.mark.integration
def test_switch_imports_past_threshold_verifies_and_rerun_does_not_duplicate(
    server_store: Store, index: str, tmp_path: Path
) -> None:
    for key in ("big", "small"):
        server_store.ensure_collection(index, key, manifest())
    settings = Settings(bulk_threshold=5, bulk_dir=tmp_path / "staging")
    big, small = make_rows(index, 30), make_rows(index, 3, seed=5)
    # The planned run: 30 files, of which 27 have a reusable row for "small" (3 to write: stays upserts).
    ids = [r["id"] for r in big]
    plan = RunPlan(index_name=index, source=None, keys=["big", "small"], items=list(ids), ids=ids, known={},  # type: ignore[arg-type]
                   reusable={"big": {}, "small": {i: "h" for i in ids[3:]} | {12345: "a row not in this run"}})
    assert rows_to_write(plan) == {"big": 30, "small": 3}

    writer = StoreWriter.for_plan(server_store, plan, settings, max_latency_s=60)
    assert set(writer.bulk) == {"big"}
    for start in range(0, 30, 8):
        writer.put("big", big[start : start + 8])
    writer.put("small", small)
    writer.close()
    assert writer.written == {"big": 30, "small": 3}
    assert writer.importers["big"].jobs == 1 and "small" not in writer.importers
    assert server_store.count(index, "big") == 30 and server_store.count(index, "small") == 3
    got = stored_by_id(server_store, index, "big", big)
    for row in big:
        assert got[row["id"]]["content_hash"] == row["content_hash"]
        np.testing.assert_array_equal(got[row["id"]]["vector"], row["vector"])
    assert not any((tmp_path / "staging").rglob("*.parquet")), "imported files are removed"

    # A killed run's import job still running: that run had deleted the file's ids and submitted the job (here the
    # export's part, which is bulk-import input as it is) when it died. The rerun imports 10 changed rows and 10
    # unchanged ones; it must wait for that job before its delete, or the job's rows would land as duplicates.
    out = export_index(server_store, index, tmp_path / "export", models=["big"])
    part = str((out.models["big"].directory / "part-00000.parquet").resolve())
    name = server_store.collection_name(index, "big")
    server_store.delete(index, "big", [r["id"] for r in big])
    server_store._call("import", lambda c, **kw: c._get_connection().do_bulk_insert(name, "", [part], **kw))
    changed = make_rows(index, 30, seed=9)[:10]
    for row in changed:
        row["content_hash"] = "new-" + row["content_hash"]
    again = StoreWriter(server_store, index, max_latency_s=60, bulk={"big": BulkConfig(tmp_path / "staging")})
    again.put("big", changed + big[10:20])
    again.close()
    assert again.written == {"big": 20} and again.importers["big"].jobs == 1
    assert server_store.count(index, "big") == 30  # count(*) counts duplicate ids: there are none
    got = stored_by_id(server_store, index, "big", big)
    for row in changed + big[10:]:  # the rerun's rows, and the killed run's job's (from the export) for the rest
        assert got[row["id"]]["content_hash"] == row["content_hash"]
        np.testing.assert_array_equal(got[row["id"]]["vector"], row["vector"])
        assert got[row["id"]]["rel_path"] == row["rel_path"] and got[row["id"]]["width"] == row["width"]


@pytest.mark.integration
def test_unreadable_staging_fails_with_the_servers_reason(server_store: Store, index: str, tmp_path: Path) -> None:
    """A server that cannot read the staged files fails the first file's job, with the server's reason; files are cut
    by size (``file_bytes``: ~15 of these rows), so the failure comes while rows are still being added. The rows
    the file's ids had before (the import deletes them first) are stored again, as they were."""
    server_store.ensure_collection(index, "m", manifest())
    before = make_rows(index, 4, seed=3)  # same ids as the first rows imported below, other vectors
    server_store.upsert(index, "m", before)
    config = BulkConfig(tmp_path / "staging", server_dir=Path("/nonexistent/milvus-import"), file_bytes=3000)
    importer = BulkImporter(server_store, index, "m", config)
    rows = make_rows(index, 40)
    with pytest.raises(BulkImportError, match=r"failed: .*/nonexistent/milvus-import/.*EMBEDSVC_BULK_SERVER_DIR"):
        for row in rows:
            importer.add([row])
    assert 10 < rows.index(row) < 39  # the file was cut by size before the last row
    importer.abort()
    assert server_store.count(index, "m") == len(before)
    got = stored_by_id(server_store, index, "m", before)
    for row in before:
        np.testing.assert_array_equal(got[row["id"]]["vector"], row["vector"])
        assert got[row["id"]]["content_hash"] == row["content_hash"]
    assert not any((tmp_path / "staging").rglob("*.parquet"))


@pytest.mark.integration
def test_default_threshold_on_a_server(server_store: Store) -> None:
    settings = Settings(bulk_threshold=None)
    assert bulk_models(server_store, {"m": DEFAULT_BULK_THRESHOLD - 1}, settings) == {}
    assert set(bulk_models(server_store, {"m": DEFAULT_BULK_THRESHOLD, "e": 0}, settings)) == {"m"}


def test_lite_upserts_by_default_and_refuses_a_forced_bulk_import(lite_uri: str, tmp_path: Path) -> None:
    with Store(lite_uri, owner="pytest bulk lite") as store:
        assert bulk_models(store, {"m": 5_000_000}, Settings()) == {}  # unset threshold: Lite upserts
        assert bulk_models(store, {"m": 4}, Settings(bulk_threshold=5)) == {}  # not reached
        with pytest.raises(BulkImportUnsupportedError, match="Milvus Lite .* cannot bulk import"):
            bulk_models(store, {"m": 5}, Settings(bulk_threshold=5))


def test_bulk_threshold_flag_on_lite_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photos = tmp_path / "photos"
    write_images(photos, 2)
    for var in ("MILVUS_URI", "EMBEDSVC_MILVUS_URI", "EMBEDSVC_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("EMBEDSVC_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["index", "folder", str(photos), "--name", "p", "--bulk-threshold", "1"])
    finally:
        get_settings.cache_clear()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "data" / "milvus.db").exists()  # refused before any store or model was opened
    assert errors == [
        f"error: --bulk-threshold needs a Milvus server: Milvus Lite ({tmp_path / 'data' / 'milvus.db'}) cannot bulk "
        "import; drop the flag (rows are upserted) or pass --milvus-uri http://host:19530"
    ]
