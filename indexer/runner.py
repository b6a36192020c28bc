"""The indexing run: one pass over a dataset that feeds every selected model, resumable at any point.

Pipeline: DataLoader workers read, hash, decode once and preprocess per model (``reader``); the
calling thread runs the models (``embedder``); a writer thread upserts rows (``writer``). Rows are keyed
by ``row_id(index, rel_path)`` and carry the file's content hash, so a rerun after a kill skips what
is already stored with the same hash (and label), re-embeds what changed, and never duplicates a row.

Counts per model in the summary:
``indexed``: rows written this run (a file stored with the same content but another label is re-embedded
and counted here); ``unchanged``: files already stored with the same content hash and label;
``failed``: files that could not be read or decoded (listed in the failures report); ``skipped``:
selected files not reached because the run was stopped; ``pruned``: rows deleted because their file
is gone (``prune=True``).
"""

from __future__ import annotations

import csv
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from embedsvc.core.config import Settings
from embedsvc.embedder import Embedder
from embedsvc.indexer.datasets import DatasetSource
from embedsvc.indexer.embedder import ComputeTimer, embed_batch, transforms_of
from embedsvc.indexer.reader import ImageReadDataset, ReadBatch, make_loader
from embedsvc.indexer.writer import StoreWriter
from embedsvc.manifest import incompatibilities
from embedsvc.store import Store, row_id

log = logging.getLogger(__name__)

MAX_LABELS_JSON = 32_000


class IndexerError(RuntimeError):
    """A run that cannot start or must not continue; the message is meant for the user as is."""


class StrictModeError(IndexerError):
    """``strict=True`` and at least one file failed."""


@dataclass
class ModelCounts:
    indexed: int = 0
    unchanged: int = 0
    skipped: int = 0
    failed: int = 0
    pruned: int = 0
    images_per_s: float = 0.0  # this model's own forward-pass throughput in this run


@dataclass
class IndexSummary:
    index: str
    per_model: dict[str, ModelCounts]
    wall_s: float
    images_per_s: float  # files embedded (by at least one model) per second of wall time
    failures: list[tuple[str, str]]  # (rel_path, reason)
    failures_report: Path | None
    stopped: bool = False
    total: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProgressUpdate:
    done: int
    total: int
    per_model_rate: dict[str, float]
    phase: str  # prepare | prune | index | flush | done | stopped


def failures_report_path(settings: Settings, index_name: str, shard: tuple[int, int] | None) -> Path:
    """``data_dir/reports/<index>/failures-<UTC time>[-shard-i-of-n].csv``: beside the index's data."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    suffix = f"-shard-{shard[0]}-of-{shard[1]}" if shard else ""
    return Path(settings.data_dir) / "reports" / index_name / f"failures-{stamp}{suffix}.csv"


def write_failures_report(path: Path, failures: list[tuple[str, str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "reason", "detail"])
        writer.writerows(failures)
    return path


def _merge_labels(source: DatasetSource, stored: list[str] | None) -> list[str] | None:
    """Keep the ids an index already uses: stored names first, names new to this run appended."""
    if source.label_names is None:
        return stored
    if not stored or stored == source.label_names:
        return source.label_names
    merged = list(stored) + [n for n in source.label_names if n not in set(stored)]
    ids = {name: i for i, name in enumerate(merged)}
    source.items = [
        type(it)(it.rel_path, ids[it.label_name], it.label_name) if it.label_id >= 0 else it for it in source.items
    ]
    return merged


def _check_compatible(index_name: str, key: str, stored: Mapping[str, Any], source: DatasetSource) -> None:
    """Same index name, different dataset: refuse rather than mix rows whose paths mean different files."""
    problems = incompatibilities(stored, {"index_kind": source.kind, "dataset_root": str(source.root)})
    if problems:
        raise IndexerError(
            f"index {index_name!r} ({key}) was built from another dataset ({'; '.join(problems)}): use another --name"
        )


def run_index(
    source: DatasetSource,
    *,
    index_name: str,
    embedders: dict[str, Embedder],
    store: Store,
    settings: Settings,
    batch_size: int | None = None,
    workers: int = 2,
    prune: bool = False,
    strict: bool = False,
    progress: Callable[[ProgressUpdate], None] | None = None,
    stop_event: threading.Event | None = None,
) -> IndexSummary:
    """Index ``source`` into one collection per model of ``index_name``; safe to rerun after any stop."""
    start = time.perf_counter()
    if not embedders:
        raise IndexerError("no models selected")
    batch_size = batch_size or settings.batch_size
    if batch_size < 1:
        raise IndexerError(f"batch size must be >= 1, got {batch_size}")
    keys = list(embedders)
    items = source.items
    total = len(items)
    counts = {k: ModelCounts() for k in keys}
    timer = ComputeTimer()

    def report(done: int, phase: str) -> None:
        if progress is not None:
            progress(ProgressUpdate(done, total, {k: timer.rate(k) for k in keys}, phase))

    report(0, "prepare")
    # 1. Collections and manifests: a mismatch raises here, before a single row is written.
    stored_labels: list[str] | None = None
    label_changes = False
    for key in keys:
        stored = store.get_manifest(index_name, key)
        if stored:
            _check_compatible(index_name, key, stored, source)
            stored_labels = stored_labels or stored.get("label_names")
    label_names = _merge_labels(source, stored_labels)
    label_changes = stored_labels is not None and label_names != stored_labels
    items = source.items
    date = datetime.now(UTC).isoformat(timespec="seconds")
    for key, emb in embedders.items():
        manifest = emb.manifest() | {
            "index": index_name,
            "index_kind": source.kind,
            "dataset_root": str(source.root),
            "dataset": source.description,
            "label_names": _storable_labels(label_names),
            "date": date,
        }
        store.ensure_collection(index_name, key, manifest)
        if label_changes:
            store.update_manifest(index_name, key, label_names=_storable_labels(label_names))

    # 2. What is already there (id -> content hash, label id, label name) and what to prune.
    known = {k: store.existing_rows(index_name, k) for k in keys}
    ids = [row_id(index_name, it.rel_path) for it in items]
    if prune:
        report(0, "prune")
        alive = {row_id(index_name, rp) for rp in source.all_rel_paths}
        for key in keys:
            gone = [i for i in known[key] if i not in alive]
            if gone:
                store.delete(index_name, key, gone)
                counts[key].pruned = len(gone)
                log.info("pruned %d rows of missing files from %s/%s", len(gone), index_name, key)
                for i in gone:
                    known[key].pop(i, None)

    # 3. Read -> embed -> write. A stored row is kept only if its content (and label) still match.
    labelled = source.label_names is not None or any(it.label_id >= 0 for it in items)
    dataset = ImageReadDataset(
        source.root,
        [it.rel_path for it in items],
        ids,
        transforms_of(embedders),
        {k: _reusable(rows, items, ids, labelled) for k, rows in known.items()},
        max_pixels=settings.max_image_pixels,
    )
    pin = any(getattr(e, "device", None) is not None and e.device.type == "cuda" for e in embedders.values())
    loader = make_loader(dataset, batch_size=batch_size, workers=max(0, workers), pin_memory=pin)
    writer = StoreWriter(store, index_name)
    failures: list[tuple[str, str, str]] = []
    stale: dict[str, list[int]] = {k: [] for k in keys}  # rows of files that now fail to decode
    embedded_files = 0
    done = 0
    stopped = False
    last_report = 0.0
    iterator = iter(loader)
    try:
        for batch in iterator:
            rows_by_model, n_embedded = _handle_batch(
                batch, items, ids, embedders, counts, failures, stale, known, timer
            )
            for key, rows in rows_by_model.items():
                writer.put(key, rows)
            embedded_files += n_embedded
            done += len(batch.results)
            now = time.perf_counter()
            if now - last_report >= 0.5 or done == total:
                report(done, "index")
                last_report = now
            if strict and failures:
                break
            if stop_event is not None and stop_event.is_set():
                stopped = done < total
                break
    except BaseException:
        writer.abort()
        raise
    finally:
        del iterator  # shuts the DataLoader workers down, also on early exit

    # 4. Drain the writer, drop rows of files that turned bad, flush once, record the row count.
    report(done, "flush")
    writer.close()
    for key, doomed in stale.items():
        if doomed:
            store.delete(index_name, key, doomed)
    for key in keys:
        counts[key].indexed = writer.written.get(key, 0)
        counts[key].skipped = total - done
        counts[key].images_per_s = timer.rate(key)
        store.flush(index_name, key)
        finished = datetime.now(UTC).isoformat(timespec="seconds")
        store.update_manifest(index_name, key, row_count=store.count(index_name, key), date=finished)

    report_path = None
    if failures:
        report_path = write_failures_report(failures_report_path(settings, index_name, source.shard), failures)
        log.warning("%d files could not be indexed; see %s", len(failures), report_path)
    wall = time.perf_counter() - start
    summary = IndexSummary(
        index=index_name,
        per_model=counts,
        wall_s=wall,
        images_per_s=embedded_files / wall if wall > 0 else 0.0,
        failures=[(f, r) for f, r, _ in failures],
        failures_report=report_path,
        stopped=stopped,
        total=total,
        extra={"write_requests": writer.requests, "write_s": writer.seconds, "compute_s": dict(timer.seconds)},
    )
    report(done, "stopped" if stopped else "done")
    if strict and failures:
        first = failures[0]
        raise StrictModeError(
            f"{len(failures)} file(s) failed and --strict is set (first: {first[0]}: {first[2]}); "
            f"report: {report_path}"
        )
    return summary


def _storable_labels(label_names: list[str] | None) -> list[str] | None:
    """Label names go into the manifest (a 64 KB JSON field) when they fit; ids still work without."""
    if label_names is None or len(json.dumps(label_names)) <= MAX_LABELS_JSON:
        return label_names
    log.warning("%d label names are too many to record in the manifest; label ids may shift if labels are added",
                len(label_names))
    return None


def _reusable(
    stored: Mapping[int, tuple[str, int, str]], items: list[Any], ids: list[int], labelled: bool
) -> dict[int, str]:
    """id -> content hash of the stored rows a file may keep as they are.

    When this run labels its files, a row whose label differs from the file's label now is left out, so
    the file is re-embedded and its row rewritten with the new label. A run without any labelling
    (a plain folder) leaves stored labels alone, as before.
    """
    if not labelled:
        return {i: h for i, (h, _, _) in stored.items()}
    out = {}
    for item, i in zip(items, ids, strict=True):
        row = stored.get(i)
        if row is not None and row[1:] == (int(item.label_id), str(item.label_name or "")):
            out[i] = row[0]
    return out


def _handle_batch(
    batch: ReadBatch,
    items: list[Any],
    ids: list[int],
    embedders: Mapping[str, Embedder],
    counts: dict[str, ModelCounts],
    failures: list[tuple[str, str, str]],
    stale: dict[str, list[int]],
    known: Mapping[str, Mapping[int, Any]],
    timer: ComputeTimer,
) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Account for unchanged and failed files, embed the rest, and build each model's rows."""
    for result in batch.results:
        if result.error is not None:
            item = items[result.position]
            reason, detail = result.error
            failures.append((item.rel_path, reason, detail))
            log.warning("skipped %s: %s", item.rel_path, detail)
            for key in counts:
                counts[key].failed += 1
                if ids[result.position] in known[key]:
                    stale[key].append(ids[result.position])
        else:
            for key in counts:
                if key not in result.needed:
                    counts[key].unchanged += 1
    vectors = embed_batch(embedders, batch.tensors, timer)
    rows_by_model: dict[str, list[dict[str, Any]]] = {}
    embedded: set[int] = set()
    for key, positions in batch.rows.items():
        rows = []
        for vector, pos in zip(vectors[key], positions, strict=True):
            result = batch.results[pos]
            item = items[result.position]
            embedded.add(pos)
            rows.append(
                {
                    "id": ids[result.position],
                    "vector": vector,
                    "rel_path": item.rel_path,
                    "content_hash": result.content_hash,
                    "label_id": item.label_id,
                    "label_name": item.label_name,
                    "width": result.width,
                    "height": result.height,
                }
            )
        rows_by_model[key] = rows
    return rows_by_model, len(embedded)
