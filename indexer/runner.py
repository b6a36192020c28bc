"""The indexing run: one pass over a dataset that feeds every selected model, resumable at any point.

``run_index`` only wires the stages and times them (clip-retrieval's runner is the model):
``plan`` (check name, manifests, labels; set up collections; prune) -> reader (DataLoader workers read,
hash, decode once and preprocess per model: ``reader``) -> mapper (the calling thread runs the models and
builds rows: ``BatchMapper``) -> writer (a thread upserts rows: ``writer``) -> ``report`` (flush, counts,
failures report, summary). Rows are keyed by ``row_id(index, rel_path)`` and carry the file's content
hash, so a rerun after a kill skips what is already stored with the same hash (and label), re-embeds
what changed, and never duplicates a row. The counts are described in ``report``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from embedsvc.core.config import Settings
from embedsvc.embedder import Embedder
from embedsvc.indexer.datasets import DatasetSource
from embedsvc.indexer.embedder import (
    ComputeTimer,
    decode_device,
    decode_short_side_of,
    decoder_of,
    embed_batch,
    model_inputs,
    transforms_of,
)
from embedsvc.indexer.plan import IndexerError, RunPlan, plan_run, refused_ids
from embedsvc.indexer.reader import ImageReadDataset, ReadBatch, decode_on_device, make_loader
from embedsvc.indexer.report import (
    Failure,
    IndexSummary,
    ModelCounts,
    ProgressUpdate,
    StrictModeError,
    failures_report_path,
    report_failures,
    strict_error,
    write_failures_report,
)
from embedsvc.indexer.writer import StoreWriter
from embedsvc.manifest import combined_precision
from embedsvc.store import Store
from embedsvc.store.naming import check_index_name

__all__ = [
    "BatchMapper",
    "IndexSummary",
    "IndexerError",
    "ModelCounts",
    "ProgressUpdate",
    "StrictModeError",
    "failures_report_path",
    "run_index",
    "write_failures_report",
]

log = logging.getLogger(__name__)


class BatchMapper:
    """The map stage: accounts for unchanged and failed files, embeds the rest, builds each model's rows."""

    def __init__(self, plan: RunPlan, embedders: Mapping[str, Embedder], timer: ComputeTimer) -> None:
        self.plan = plan
        self.embedders = embedders
        self.timer = timer
        self.counts = {k: ModelCounts(pruned=plan.pruned.get(k, 0)) for k in plan.keys}
        self.failures: list[Failure] = list(plan.refused)
        # rows of files that now fail (to decode, or the listing's policy): deleted after the run
        self.stale: dict[str, list[int]] = {k: [] for k in plan.keys}
        self.embedded_files = 0
        for key in plan.keys:
            self.counts[key].failed = len(plan.refused)
            self.stale[key] = [i for i in refused_ids(plan) if i in plan.known[key]]

    def __call__(self, batch: ReadBatch) -> dict[str, list[dict[str, Any]]]:
        items, ids = self.plan.items, self.plan.ids
        if batch.encoded:  # decoder="device": first, so a JPEG it cannot decode is counted as failed below
            decode_on_device(batch, decode_device(self.embedders), lambda position: items[position].stored)
        for result in batch.results:
            if result.error is not None:
                item = items[result.position]
                reason, detail = result.error
                self.failures.append((item.stored, reason, detail))
                log.warning("skipped %s: %s", item.stored, detail)
                for key in self.counts:
                    self.counts[key].failed += 1
                    if ids[result.position] in self.plan.known[key]:
                        self.stale[key].append(ids[result.position])
            else:
                for key in self.counts:
                    if key not in result.needed:
                        self.counts[key].unchanged += 1
        vectors = embed_batch(self.embedders, model_inputs(self.embedders, batch), self.timer)
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
                        "rel_path": item.stored,
                        "content_hash": result.content_hash,
                        "label_id": item.label_id,
                        "label_name": item.label_name,
                        "width": result.width,
                        "height": result.height,
                    }
                )
            rows_by_model[key] = rows
        self.embedded_files += len(embedded)
        return rows_by_model


def check_run(index_name: str, embedders: Mapping[str, Embedder], batch_size: int | None, settings: Settings) -> int:
    """What either engine checks before it starts; returns the batch size to use."""
    check_index_name(index_name)
    if not embedders:
        raise IndexerError("no models selected")
    batch_size = batch_size or settings.batch_size
    if batch_size < 1:
        raise IndexerError(f"batch size must be >= 1, got {batch_size}")
    return batch_size


def progress_reporter(
    progress: Callable[[ProgressUpdate], None] | None, total: int, keys: list[str], timer: Any
) -> Callable[[int, str], None]:
    """Progress to the caller; "index" updates at most every 0.5 s (and at the last file)."""
    last_report = [0.0]

    def report(done: int, phase: str) -> None:
        now = time.perf_counter()
        if progress is None or (phase == "index" and now - last_report[0] < 0.5 and done != total):
            return
        if phase == "index":
            last_report[0] = now
        progress(ProgressUpdate(done, total, {k: timer.rate(k) for k in keys}, phase))

    return report


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
    batch_size = check_run(index_name, embedders, batch_size, settings)
    timer = ComputeTimer()
    report = progress_reporter(progress, len(source.items), list(embedders), timer)
    report(0, "prepare")
    plan = plan_run(
        source, index_name=index_name, embedders=embedders, store=store, prune=prune,
        on_prune=lambda: report(0, "prune"),
    )
    t_plan = time.perf_counter() - start

    if decoder_of(embedders) == "device" and decode_device(embedders).type == "cpu":
        log.warning("--decode device with the models on the CPU: the model thread decodes, the workers only read; "
                    "it pays on a GPU (nvJPEG), here --decode worker is faster")
    dataset = ImageReadDataset(
        source.root, [it.rel_path for it in plan.items], plan.ids, transforms_of(embedders), plan.reusable,
        max_pixels=settings.max_image_pixels, decode_short_side=decode_short_side_of(embedders),
        decoder=decoder_of(embedders),
    )
    pin = any(getattr(e, "device", None) is not None and e.device.type == "cuda" for e in embedders.values())
    loader = make_loader(dataset, batch_size=batch_size, workers=max(0, workers), pin_memory=pin)
    mapper = BatchMapper(plan, embedders, timer)
    writer = StoreWriter.for_plan(store, plan, settings)
    done, stopped = _run(loader, mapper, writer, strict=strict, stop_event=stop_event,
                         on_batch=lambda n: report(n, "index"))
    t_run = time.perf_counter() - start - t_plan

    report(done, "flush")
    summary = _finish(plan, mapper, writer, store, settings, done=done, stopped=stopped, start=start)
    summary.extra["stage_s"] = {"plan": t_plan, "run": t_run, "report": time.perf_counter() - start - t_plan - t_run}
    report(done, "stopped" if stopped else "done")
    if strict and mapper.failures:
        raise strict_error(mapper.failures, summary.failures_report)
    return summary


def _run(
    loader: Iterable[ReadBatch], mapper: BatchMapper, writer: StoreWriter, *, strict: bool,
    stop_event: threading.Event | None, on_batch: Callable[[int], None],
) -> tuple[int, bool]:
    """Reader -> mapper -> writer until the data ends, a stop is asked, or (``strict``) a file failed.

    Returns (files handled, stopped early). On any error the writer is aborted (what is queued is dropped;
    rows already written stay, and a rerun finishes the rest).
    """
    done, stopped, total = 0, False, len(mapper.plan.items)
    iterator = iter(loader)
    try:
        while not (strict and mapper.failures):  # --strict: stop at the first failure (listing's included)
            batch = next(iterator, None)
            if batch is None:
                break
            for key, rows in mapper(batch).items():
                writer.put(key, rows)
            done += len(batch.results)
            on_batch(done)
            if stop_event is not None and stop_event.is_set():
                stopped = done < total
                break
    except BaseException:
        writer.abort()
        raise
    finally:
        del iterator  # shuts the DataLoader workers down, also on early exit
    return done, stopped


def _finish(
    plan: RunPlan, mapper: BatchMapper, writer: StoreWriter, store: Store, settings: Settings, *,
    done: int, stopped: bool, start: float,
) -> IndexSummary:
    """Drain the writer, drop rows of files that turned bad, flush once, record row counts, report failures."""
    index_name, total = plan.index_name, len(plan.items)
    writer.close()
    for key, doomed in mapper.stale.items():
        if doomed:
            store.delete(index_name, key, doomed)
    for key, counts in mapper.counts.items():
        counts.indexed = writer.written.get(key, 0)
        counts.skipped = total - done
        counts.images_per_s = mapper.timer.rate(key)
        store.flush(index_name, key)
        finished = datetime.now(UTC).isoformat(timespec="seconds")
        rows = store.count(index_name, key)
        fields: dict[str, Any] = {"row_count": rows, "date": finished}
        if counts.indexed:  # the precision(s) that made the rows (manifest.combined_precision); unknown stays unknown
            stored = store.get_manifest(index_name, key) or {}
            if stored.get("precision") or rows <= counts.indexed:
                fields["precision"] = combined_precision(stored.get("precision"), mapper.embedders[key].precision)
        store.update_manifest(index_name, key, **fields)
    report_path = report_failures(settings, index_name, plan.source.shard, mapper.failures)
    wall = time.perf_counter() - start
    return IndexSummary(
        index=index_name,
        per_model=mapper.counts,
        wall_s=wall,
        images_per_s=mapper.embedded_files / wall if wall > 0 else 0.0,
        failures=[(f, r) for f, r, _ in mapper.failures],
        failures_report=report_path,
        stopped=stopped,
        total=total,
        extra={
            "write_requests": writer.requests,
            "write_s": writer.seconds,
            "compute_s": dict(mapper.timer.seconds),
        },
    )
