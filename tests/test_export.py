"""`embedsvc export`: an index's rows as parquet, through a real Milvus Lite store, read back by pyarrow and pandas.

The round trip compares every id, field and vector with what the store returns; the memory bound is checked by
construction (the rows the exporter holds between two writes never exceed one row group); the error cases each give
one ``error:`` line, disk full and a read-only --out on real tmpfs mounts (``unshare -m``, needs root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from embedsvc import export as export_mod
from embedsvc.cli import app
from embedsvc.core.config import get_settings
from embedsvc.export import EXPORT_COLUMNS, MANIFEST_FILE, SUCCESS_FILE, ExportError, export_index
from embedsvc.store import IndexNotFoundError, Store
from tests.store.conftest import make_rows, manifest
from tests.support import REPO

INDEX = "photos"
LABELS = ["class_0", "class_1", "class_2", "class_3"]
N = 300


def fill(store: Store) -> dict[str, list[dict]]:
    """Two models; half of model ``m``'s rows carry no label name (the export fills it from the manifest)."""
    rows = {"m": make_rows(INDEX, N), "timm:tiny.v1": make_rows(INDEX, 20, dim=8, seed=1)}
    for row in rows["m"][::2]:
        row["label_name"] = ""
    store.ensure_collection(INDEX, "m", manifest(label_names=LABELS))
    store.ensure_collection(INDEX, "timm:tiny.v1", manifest(dim=8, model_name="tiny_other.v1"))
    for key, model_rows in rows.items():
        store.upsert(INDEX, key, model_rows)
    return rows


@pytest.fixture
def filled(lite_uri: str) -> Iterator[tuple[Store, dict[str, list[dict]]]]:
    with Store(lite_uri, owner="pytest test_export") as store:
        yield store, fill(store)


def test_round_trip_parts_manifest_and_readers(filled: tuple[Store, dict[str, list[dict]]], tmp_path: Path) -> None:
    store, rows = filled
    out = tmp_path / "out"
    summary = export_index(store, INDEX, out, part_rows=64, group_rows=16)

    assert set(summary.models) == {"m", "timm:tiny.v1"}
    folder = out / "m"
    parts = sorted(p.name for p in folder.glob("part-*.parquet"))
    assert parts == [f"part-{i:05d}.parquet" for i in range(5)]  # 300 rows, 64 a part
    for part in parts:
        meta = pq.ParquetFile(folder / part).metadata
        assert meta.num_rows <= 64
        assert all(meta.row_group(g).num_rows <= 16 for g in range(meta.num_row_groups))
    assert sorted(p.name for p in out.iterdir()) == ["m", "timm_tiny.v1"]  # no partial folders left

    table = pq.read_table(folder)  # the folder as a dataset: _manifest.json and _SUCCESS are skipped
    assert table.column_names == list(EXPORT_COLUMNS)
    assert str(table.schema.field("vector").type) == "list<element: float>"
    frame = pd.read_parquet(folder).sort_values("id").reset_index(drop=True)
    stored = store.get_rows(INDEX, "m", [r["id"] for r in rows["m"]], with_vectors=True)
    stored.sort(key=lambda r: r["id"])
    assert frame["id"].tolist() == [r["id"] for r in stored]
    assert len(frame) == N
    for column in ("rel_path", "label_id", "content_hash", "width", "height"):
        assert frame[column].tolist() == [r[column] for r in stored], column
    assert frame["label_name"].tolist() == [LABELS[r["label_id"]] for r in stored]  # filled from the manifest
    np.testing.assert_array_equal(np.stack(frame["vector"].to_numpy()), np.stack([r["vector"] for r in stored]))

    assert json.loads((folder / MANIFEST_FILE).read_text()) == store.get_manifest(INDEX, "m")
    assert json.loads(table.schema.metadata[b"embedsvc.manifest"]) == store.get_manifest(INDEX, "m")
    marker = json.loads((folder / SUCCESS_FILE).read_text())
    assert marker["rows"] == N and marker["parts"] == parts

    other = pd.read_parquet(out / "timm_tiny.v1")
    assert sorted(other["id"]) == sorted(r["id"] for r in rows["timm:tiny.v1"])
    assert {len(v) for v in other["vector"]} == {8}


def test_one_model_and_overwrite(filled: tuple[Store, dict[str, list[dict]]], tmp_path: Path) -> None:
    store, _ = filled
    out = tmp_path / "out"
    export_index(store, INDEX, out, models=["timm:tiny.v1"])
    assert [p.name for p in out.iterdir()] == ["timm_tiny.v1"]
    with pytest.raises(ExportError, match="not empty; pass --overwrite"):
        export_index(store, INDEX, out, models=["timm:tiny.v1"])
    (out / "timm_tiny.v1" / "stale.txt").write_text("from an older export")
    export_index(store, INDEX, out, models=["timm:tiny.v1"], overwrite=True)
    assert not (out / "timm_tiny.v1" / "stale.txt").exists()
    assert pq.read_table(out / "timm_tiny.v1").num_rows == 20


def test_memory_is_bounded_by_one_row_group(
    filled: tuple[Store, dict[str, list[dict]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By construction, not by timing: rows come from the store's iterator in pages of ``page_rows``, and between two
    writes the exporter never holds more than one row group of them."""
    store, _ = filled
    pages: list[int] = []
    held: list[int] = []
    written = [0]
    real_rows = export_mod._rows

    def spying_rows(store: Store, name: str, page_rows: int) -> Iterator[dict]:
        pages.append(page_rows)
        for pulled, row in enumerate(real_rows(store, name, page_rows), start=1):
            held.append(pulled - written[0])
            yield row

    monkeypatch.setattr(export_mod, "_rows", spying_rows)
    export_index(store, INDEX, tmp_path / "out", models=["m"], part_rows=100, group_rows=10, page_rows=7,
                 progress=lambda key, done, total: written.__setitem__(0, done))
    assert pages == [7]
    assert len(held) == N and max(held) <= 10


def test_unknown_index_and_model(filled: tuple[Store, dict[str, list[dict]]], tmp_path: Path) -> None:
    store, _ = filled
    with pytest.raises(IndexNotFoundError, match=r"no index 'nope' \(existing: photos\)"):
        export_index(store, "nope", tmp_path / "a")
    with pytest.raises(IndexNotFoundError, match=r"has no model 'zz' \(it has: m, timm:tiny.v1\)"):
        export_index(store, INDEX, tmp_path / "b", models=["zz"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before anything is written


# -- the command: one error line each --------------------------------------------------------------------------
@pytest.fixture
def cli_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for var in ("MILVUS_URI", "EMBEDSVC_MILVUS_URI", "EMBEDSVC_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("EMBEDSVC_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    uri = str(tmp_path / "data" / "milvus.db")
    (tmp_path / "data").mkdir()
    with Store(uri, owner="pytest fill") as store:
        fill(store)
    yield uri
    get_settings.cache_clear()


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def test_cli_exports_and_refuses_bad_input(cli_store: str, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    done = runner.invoke(app, ["export", INDEX, "--out", str(out), "-m", "m", "--part-rows", "100"])
    assert done.exit_code == 0, done.output
    assert "m: 300 rows in 3 part(s)" in done.stdout
    assert pq.read_table(out / "m").num_rows == N

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = {
        "unknown index": (["export", "nope", "--out", str(tmp_path / "o1")], "no index 'nope' (existing: photos)"),
        "unknown model": (["export", INDEX, "--out", str(tmp_path / "o2"), "-m", "zz"], "has no model 'zz'"),
        "not empty": (["export", INDEX, "--out", str(out)], f"--out {out} is not empty; pass --overwrite"),
        "a file": (["export", INDEX, "--out", str(a_file)], "exists and is not a directory"),
        "bad part rows": (["export", INDEX, "--out", str(tmp_path / "o3"), "--part-rows", "0"], "--part-rows"),
    }
    for name, (args, expect) in cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code != 0, (name, result.output)
        assert expect in one_error_line(result.stderr), (name, result.stderr)
    again = runner.invoke(app, ["export", INDEX, "--out", str(out), "--overwrite"])
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in out.iterdir()) == ["m", "timm_tiny.v1"]


def test_disk_full_and_read_only_out(cli_store: str, tmp_path: Path) -> None:
    """Real tmpfs mounts in a private mount namespace: a 16 KB one fills up mid-export, a read-only one refuses."""
    full, read_only = tmp_path / "full", tmp_path / "ro"
    full.mkdir()
    read_only.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), MILVUS_URI=cli_store)
    cli = f"{sys.executable} -m embedsvc.cli export {INDEX} --part-rows 50"
    script = (
        f"mount -t tmpfs -o size=16k tmpfs {full} && mount -t tmpfs -o ro,size=64k tmpfs {read_only} && "
        f"{cli} --out {full}/x 2>{tmp_path}/full.err; echo rc=$?; "
        f"ls -A {full}/x; {cli} --out {read_only}/x 2>{tmp_path}/ro.err; echo rc=$?"
    )
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)
    lines = proc.stdout.split()
    assert lines.count("rc=1") == 2, (proc.stdout, proc.stderr)
    listing = lines[lines.index("rc=1") + 1 : len(lines) - 1]
    assert not any(name in ("m", "timm_tiny.v1") or "partial" in name for name in listing), listing  # nothing complete
    full_line = one_error_line((tmp_path / "full.err").read_text())
    assert full_line.startswith(f"error: disk full: no space left in {full}/x"), full_line
    ro_line = one_error_line((tmp_path / "ro.err").read_text())
    assert ro_line == f"error: cannot write to --out {read_only}/x: read-only file system", ro_line


def test_export_help_fits_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain click help, as every command's (tests/test_cli_errors.py): at 80 columns, at most two lines an option."""
    monkeypatch.setenv("COLUMNS", "80")
    result = CliRunner().invoke(app, ["export", "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "<bool>" not in result.stdout and max(len(line) for line in lines) <= 80
    options = [i for i, line in enumerate(lines) if line.lstrip().startswith("-")]
    assert {"--out", "--model", "--overwrite", "--part-rows"} <= {w for i in options for w in lines[i].split()}
    for i, start in enumerate(options):
        end = options[i + 1] if i + 1 < len(options) else len(lines)
        assert len([line for line in lines[start:end] if line.strip()]) <= 2, lines[start:end]


def test_leftovers_of_a_killed_export_are_not_content(
    filled: tuple[Store, dict[str, list[dict]]], tmp_path: Path
) -> None:
    """A killed export leaves only its hidden partial folder; the rerun removes it (its pid is gone) and needs no
    --overwrite, while one of a running export (this process' pid) counts as content and is left alone."""
    store, _ = filled
    out = tmp_path / "out"
    dead = out / ".m.partial-999999999-0123abcd"  # above any pid_max: no such process
    dead.mkdir(parents=True)
    (dead / "part-00000.parquet").write_bytes(b"half a file")
    export_index(store, INDEX, out, models=["m"])
    assert sorted(p.name for p in out.iterdir()) == ["m"]

    live = tmp_path / "out2" / f".m.partial-{os.getpid()}-0123abcd"
    live.mkdir(parents=True)
    with pytest.raises(ExportError, match="not empty"):
        export_index(store, INDEX, tmp_path / "out2", models=["m"])
    assert live.is_dir()
