"""How a run shows itself: a live bar on a terminal, plain periodic log lines otherwise, a summary table."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from embedsvc.indexer.runner import IndexSummary, ProgressUpdate

log = logging.getLogger(__name__)


def _rates(rates: Mapping[str, float]) -> str:
    return "  ".join(f"{k} {v:,.1f} im/s" for k, v in rates.items())


def _eta(done: int, total: int, elapsed: float) -> str:
    if done <= 0 or done >= total:
        return "-"
    seconds = elapsed / done * (total - done)
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


class ProgressReporter:
    """Callable progress sink for :func:`embedsvc.indexer.runner.run_index`; use as a context manager."""

    def __init__(
        self,
        title: str,
        *,
        stream: TextIO | None = None,
        interactive: bool | None = None,
        interval_s: float = 10.0,
        console: Console | None = None,
    ) -> None:
        stream = stream or sys.stderr
        self.title = title
        self.interactive = stream.isatty() if interactive is None else interactive
        self.interval_s = interval_s
        self._start = time.monotonic()
        self._last_line = 0.0
        self._last_phase = ""
        self._progress: Progress | None = None
        self._task: int | None = None
        if self.interactive:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=30),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rates]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console or Console(file=stream),
                transient=False,
            )

    def __enter__(self) -> ProgressReporter:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, update: ProgressUpdate) -> None:
        if self._progress is not None:
            if self._task is None:
                self._task = self._progress.add_task(escape(self.title), total=update.total, rates="")
            self._progress.update(
                self._task,
                completed=update.done,
                total=update.total,
                description=escape(f"{self.title} [{update.phase}]"),  # "[done]" is not markup
                rates=_rates(update.per_model_rate),
            )
            return
        now = time.monotonic()
        if update.phase != self._last_phase or now - self._last_line >= self.interval_s:
            self._last_line, self._last_phase = now, update.phase
            pct = 100.0 * update.done / update.total if update.total else 100.0
            log.info(
                "%s [%s] %d/%d (%.1f%%) %s ETA %s",
                self.title,
                update.phase,
                update.done,
                update.total,
                pct,
                _rates(update.per_model_rate),
                _eta(update.done, update.total, now - self._start),
            )


def summary_table(summary: IndexSummary, labels: Mapping[str, str] | None = None) -> Table:
    """Indexed / unchanged / skipped / failed / pruned per model, with wall time and images/s."""
    labels = labels or {}
    table = Table(
        title=f"index {summary.index!r}: {summary.total} files, {summary.wall_s:,.1f} s, "
        f"{summary.images_per_s:,.2f} images/s" + (" (stopped early)" if summary.stopped else "")
    )
    for column in ("model", "indexed", "unchanged", "skipped", "failed", "pruned", "model im/s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for key, c in summary.per_model.items():
        table.add_row(
            labels.get(key, key),
            str(c.indexed),
            str(c.unchanged),
            str(c.skipped),
            str(c.failed),
            str(c.pruned),
            f"{c.images_per_s:,.1f}",
        )
    return table
