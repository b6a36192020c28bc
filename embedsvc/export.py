"""Data out: an index's rows and vectors as parquet, one folder per model, readable by any parquet tool.

``export_index`` writes ``OUT/<model>/part-00000.parquet ...`` (columns ``EXPORT_COLUMNS``: the collection's own
fields, so a part is also Milvus bulk-import input), the stored manifest as ``OUT/<model>/_manifest.json`` (also in
every part's schema metadata, key ``embedsvc.manifest``) and a ``_SUCCESS`` marker. The ``_`` prefix is the
Spark/Hive convention every parquet reader skips, so ``pandas.read_parquet("OUT/<model>")`` reads the folder as is
(a plain ``manifest.json`` there makes pyarrow's and pandas' folder reads fail on a non-parquet file).

Constant memory for any size, by construction: rows stream from a pymilvus query iterator (pages of at most
``page_rows``) into a ``pyarrow.parquet.ParquetWriter`` one row group (``group_rows``) at a time, and a part holds at
most ``part_rows`` rows. Nothing is ever collected per index.

A partial export never looks complete: each model is written into a hidden ``OUT/.<model>.partial-*`` folder and
renamed to ``OUT/<model>`` only once its last part and marker are on disk; on any failure the partial folder is
removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedsvc.core.errors import EmbedsvcError
from embedsvc.store import Store
from embedsvc.store.errors import DiskFullError, IndexNotFoundError, is_disk_full
from embedsvc.store.rows import OUTPUT_FIELDS

log = logging.getLogger(__name__)

#: Column order of every part: the collection's fields (``vector`` last, as list<float32>).
EXPORT_COLUMNS = ("id", "rel_path", "label_id", "label_name", "content_hash", "width", "height", "vector")
MANIFEST_FILE = "_manifest.json"
SUCCESS_FILE = "_SUCCESS"
DEFAULT_PART_ROWS = 1_000_000
#: Bytes of vectors one row group (and one iterator page) may hold: bounds the export's memory.
_GROUP_BYTES = 8 * 1024 * 1024
_PAGE_BYTES = 4 * 1024 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_PARTIAL = re.compile(r"\.[^/]+\.(?:partial|old)-(\d+)(?:-[0-9a-f]+)?")

#: (model key, rows written so far for it, its total rows)
ExportProgress = Callable[[str, int, int], None]


class ExportError(EmbedsvcError):
    """An export that cannot start or could not finish (bad output folder, name clash); one line for the user."""

    code = "export_failed"
    http_status = 400


@dataclass
class ModelExport:
    """What was written for one model."""

    model_key: str
    directory: Path
    rows: int
    parts: list[str] = field(default_factory=list)


@dataclass
class ExportSummary:
    index: str
    out: Path
    models: dict[str, ModelExport]


def model_dir_name(model_key: str) -> str:
    """A folder name for a model key (``timm:arch.tag`` keeps its letters; other characters become ``_``)."""
    name = _SAFE_NAME.sub("_", model_key).lstrip(".") or "model"
    return name


def arrow_schema(dim: int, manifest: dict[str, Any] | None = None) -> Any:
    """The parquet schema of every part: int64 scalars as the collection stores them, vectors as list<float32>;
    the manifest (JSON) rides in the schema metadata."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("rel_path", pa.string()),
            pa.field("label_id", pa.int64()),
            pa.field("label_name", pa.string()),
            pa.field("content_hash", pa.string()),
            pa.field("width", pa.int64()),
            pa.field("height", pa.int64()),
            pa.field("vector", pa.list_(pa.float32())),
        ],
        metadata={"embedsvc.dim": str(dim), "embedsvc.manifest": json.dumps(manifest or {}, sort_keys=True)},
    )


def _record_batch(rows: list[dict[str, Any]], dim: int, labels: Sequence[str], schema: Any) -> Any:
    """One row group from store rows; an empty label name is filled from the manifest's label list."""
    import pyarrow as pa

    def label_of(row: dict[str, Any]) -> str:
        name, lid = str(row.get("label_name") or ""), int(row["label_id"])
        return name or (labels[lid] if 0 <= lid < len(labels) else "")

    flat = np.stack([np.asarray(r["vector"], dtype=np.float32) for r in rows]).reshape(-1)
    offsets = np.arange(0, (len(rows) + 1) * dim, dim, dtype=np.int64)
    vectors = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat)).cast(pa.list_(pa.float32()))
    columns = [
        pa.array([int(r["id"]) for r in rows], pa.int64()),
        pa.array([str(r["rel_path"]) for r in rows], pa.string()),
        pa.array([int(r["label_id"]) for r in rows], pa.int64()),
        pa.array([label_of(r) for r in rows], pa.string()),
        pa.array([str(r["content_hash"]) for r in rows], pa.string()),
        pa.array([int(r["width"]) for r in rows], pa.int64()),
        pa.array([int(r["height"]) for r in rows], pa.int64()),
        vectors,
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _rows(store: Store, name: str, page_rows: int) -> Iterator[dict[str, Any]]:
    """Every row of collection ``name`` with its vector, from the store's query iterator (pages of ``page_rows``)."""
    return store._iterate(name, ["id", *OUTPUT_FIELDS, "vector"], batch_size=page_rows)


@contextlib.contextmanager
def _disk_full_as_error(out: Path, what: str) -> Iterator[None]:
    """ENOSPC/EDQUOT inside the block (also pyarrow's, which carry the text, not always the errno) -> DiskFullError."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(out, what, log_detail=str(exc)) from exc
        raise


def _remove_dead_partials(out: Path) -> None:
    """Remove what killed exports left (``.<model>.partial-<pid>-*`` of a process that is gone): never content."""
    for entry in out.iterdir():
        match = _PARTIAL.fullmatch(entry.name)
        if match is None or not entry.is_dir() or entry.is_symlink():
            continue
        try:
            os.kill(int(match.group(1)), 0)
            continue  # that export is still running
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
            log.info("removed %s, left by an export that did not finish", entry)
        except PermissionError:
            continue  # alive, someone else's


def check_out_dir(out: Path, *, overwrite: bool) -> None:
    """Refuse an --out that is a file, holds something already (unless ``overwrite``), or cannot be written.

    Folders a killed export left behind are removed first, so a rerun needs no ``--overwrite``."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a directory")
    if out.is_dir():
        _remove_dead_partials(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out} is not empty; pass --overwrite to replace the exported models in it")
    try:
        with _disk_full_as_error(out, f"creating {out}"):
            out.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=out).close()  # a directory we may list is not always one we may write
    except DiskFullError:
        raise
    except OSError as exc:
        raise ExportError(f"cannot write to --out {out}: {(exc.strerror or str(exc)).lower()}") from None


def export_index(
    store: Store,
    index: str,
    out: str | os.PathLike[str],
    *,
    models: Sequence[str] | None = None,
    overwrite: bool = False,
    part_rows: int = DEFAULT_PART_ROWS,
    group_rows: int | None = None,
    page_rows: int | None = None,
    progress: ExportProgress | None = None,
) -> ExportSummary:
    """Write every row of ``index`` (only ``models`` when given) under ``out``; see the module docstring.

    ``IndexNotFoundError`` for an unknown index or model (naming what exists), ``ExportError`` for a bad ``out``,
    ``DiskFullError`` when the disk fills up (the partial folder is removed).
    """
    if part_rows < 1:
        raise ExportError(f"rows per part must be >= 1, got {part_rows}")
    out = Path(out)
    stored = store.models_of(index)
    if not stored:
        known = ", ".join(sorted(store.list_indexes())) or "none"
        raise IndexNotFoundError(f"no index {index!r} (existing: {known})")
    keys = list(dict.fromkeys(models)) if models else stored
    missing = [k for k in keys if k not in stored]
    if missing:
        raise IndexNotFoundError(
            f"index {index!r} has no model {', '.join(map(repr, missing))} (it has: {', '.join(stored)})"
        )
    dirs = {k: model_dir_name(k) for k in keys}
    if len(set(dirs.values())) != len(dirs):
        raise ExportError(f"model keys {', '.join(keys)} map to the same folder name; export them one at a time")
    check_out_dir(out, overwrite=overwrite)
    summary = ExportSummary(index=index, out=out, models={})
    for key in keys:
        summary.models[key] = _export_model(
            store, index, key, out, dirs[key], part_rows=part_rows, group_rows=group_rows, page_rows=page_rows,
            progress=progress,
        )
    return summary


def _export_model(
    store: Store, index: str, key: str, out: Path, dir_name: str, *, part_rows: int, group_rows: int | None,
    page_rows: int | None, progress: ExportProgress | None,
) -> ModelExport:
    import pyarrow.parquet as pq

    manifest = store.get_manifest(index, key)
    if manifest is None:
        raise IndexNotFoundError(f"no index {index!r} for model {key!r}")
    name = store.collection_name(index, key)
    dim = int(manifest["dim"])
    labels = list(manifest.get("label_names") or [])
    total = store.count(index, key)
    group = max(1, min(part_rows, group_rows or _GROUP_BYTES // (4 * dim)))
    page = max(1, min(1000, page_rows or _PAGE_BYTES // (4 * dim)))
    schema = arrow_schema(dim, manifest)
    final = out / dir_name
    with _disk_full_as_error(out, f"exporting {index}/{key}"):
        partial = out / f".{dir_name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        partial.mkdir()  # not mkdtemp: the finished folder keeps the umask's permissions
    result = ModelExport(model_key=key, directory=final, rows=0)
    writer: pq.ParquetWriter | None = None
    in_part = 0
    try:
        with _disk_full_as_error(out, f"exporting {index}/{key}"):
            buffer: list[dict[str, Any]] = []

            def flush() -> None:
                nonlocal writer, in_part
                while buffer:
                    if writer is None:
                        part = f"part-{len(result.parts):05d}.parquet"
                        writer = pq.ParquetWriter(partial / part, schema)
                        result.parts.append(part)
                    take = min(len(buffer), part_rows - in_part)
                    writer.write_batch(_record_batch(buffer[:take], dim, labels, schema))
                    del buffer[:take]
                    in_part += take
                    result.rows += take
                    if in_part >= part_rows:
                        writer.close()
                        writer, in_part = None, 0
                if progress is not None:
                    progress(key, result.rows, total)

            if progress is not None:
                progress(key, 0, total)
            for row in _rows(store, name, page):
                row["vector"] = np.asarray(row["vector"], dtype=np.float32)  # 4 bytes a float, not a Python float's 32
                buffer.append(row)
                if len(buffer) >= group:
                    flush()
            flush()
            if writer is not None:
                writer.close()
                writer = None
            if not result.parts:  # an empty index still exports a readable (empty) part
                pq.write_table(schema.empty_table(), partial / "part-00000.parquet")
                result.parts.append("part-00000.parquet")
            (partial / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            marker = {"index": index, "model_key": key, "rows": result.rows, "parts": result.parts}
            (partial / SUCCESS_FILE).write_text(json.dumps(marker, indent=2) + "\n")
            _replace(partial, final)
    except BaseException:
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info("exported %d rows of %s/%s into %s (%d parts)", result.rows, index, key, final, len(result.parts))
    return result


def _replace(partial: Path, final: Path) -> None:
    """Move the finished folder into place; an older export of the same model is removed only after that."""
    old: Path | None = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(partial, final)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
