"""Report stage of a run: flush, record row counts, write the failures report, build the summary.

Counts per model in the summary:
``indexed``: rows written this run (a file stored with the same content but another label is re-embedded
and counted here); ``unchanged``: files already stored with the same content hash and label;
``failed``: files that could not be read or decoded, and entries the listing refused (special files,
symlinks out of the root, unreadable folders), all listed in the failures report; ``skipped``: selected
files not reached because the run was stopped; ``pruned``: rows deleted because their file is gone
(``prune=True``).

The report is ``data_dir/reports/<index>/failures-<UTC time>[-shard-i-of-n].csv``; file names in it are
in their stored form (``embedsvc.paths``: readable, and any name that is not UTF-8 shown escaped).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from embedsvc.core.config import Settings
from embedsvc.indexer.plan import IndexerError
from embedsvc.store.errors import disk_full_as_error
from embedsvc.store.naming import check_index_name

log = logging.getLogger(__name__)

Failure = tuple[str, str, str]  # (stored rel path, reason, detail)


class StrictModeError(IndexerError):
    """``strict=True`` and at least one file failed."""

    code = "strict_failures"
    http_status = 422


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
    failures: list[tuple[str, str]]  # (stored rel_path, reason)
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
    check_index_name(index_name)  # the name becomes a folder: never one that leaves reports/
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    suffix = f"-shard-{shard[0]}-of-{shard[1]}" if shard else ""
    return Path(settings.data_dir) / "reports" / index_name / f"failures-{stamp}{suffix}.csv"


def write_failures_report(path: Path, failures: list[Failure]) -> Path:
    """A ``file,reason,detail`` CSV; anything unencodable in a detail is written backslash-escaped."""
    with disk_full_as_error(path.parent, "writing the failures report"):  # CLI and jobs: one disk-full error
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file", "reason", "detail"])
            writer.writerows(failures)
    return path


def report_failures(
    settings: Settings, index_name: str, shard: tuple[int, int] | None, failures: list[Failure]
) -> Path | None:
    """Write the failures report when anything failed; its path (None when nothing did)."""
    if not failures:
        return None
    path = write_failures_report(failures_report_path(settings, index_name, shard), failures)
    log.warning("%d files could not be indexed; see %s", len(failures), path)
    return path


def strict_error(failures: list[Failure], report_path: Path | None) -> StrictModeError:
    """The error ``--strict`` raises after the report is written: how many failed, the first one, where."""
    first = failures[0]
    return StrictModeError(
        f"{len(failures)} file(s) failed and --strict is set (first: {first[0]}: {first[2]}); report: {report_path}"
    )
