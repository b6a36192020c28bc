"""Progress output: a live bar on a terminal, periodic plain log lines otherwise, and the summary table."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from rich.console import Console

from embedsvc.indexer.progress import ProgressReporter, summary_table
from embedsvc.indexer.runner import IndexSummary, ModelCounts, ProgressUpdate


def updates() -> list[ProgressUpdate]:
    rates = {"convnext_tiny": 12.5, "deit3_small": 20.0}
    return [
        ProgressUpdate(0, 100, rates, "prepare"),
        *(ProgressUpdate(d, 100, rates, "index") for d in (10, 20, 30)),
        ProgressUpdate(100, 100, rates, "done"),
    ]


def test_plain_lines_when_not_a_tty(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="embedsvc.indexer.progress")
    with ProgressReporter("index photos", stream=io.StringIO(), interval_s=3600) as progress:
        for update in updates():
            progress(update)
    lines = [r.getMessage() for r in caplog.records]
    # one line per phase change; within a phase at most one per interval
    assert len(lines) == 3
    assert lines[1].startswith("index photos [index] 10/100 (10.0%) convnext_tiny 12.5 im/s  deit3_small 20.0 im/s")
    assert "ETA" in lines[1]


def test_live_bar_on_a_terminal() -> None:
    stream = io.StringIO()
    console = Console(file=stream, width=200, force_terminal=True)
    with ProgressReporter("index photos", stream=stream, interactive=True, console=console) as progress:
        for update in updates():
            progress(update)
    out = stream.getvalue()
    assert "index photos [done]" in out and "100/100" in out and "deit3_small 20.0 im/s" in out


def test_summary_table_lists_every_count() -> None:
    summary = IndexSummary(
        index="photos",
        per_model={"convnext_tiny": ModelCounts(8, 2, 0, 1, 3, 11.0)},
        wall_s=4.0,
        images_per_s=2.0,
        failures=[("bad.jpg", "empty")],
        failures_report=Path("r.csv"),
        total=11,
    )
    console = Console(file=io.StringIO(), width=200)
    console.print(summary_table(summary, {"convnext_tiny": "convnext_tiny (untrained)"}))
    text = console.file.getvalue()
    for word in ("indexed", "unchanged", "skipped", "failed", "pruned", "convnext_tiny (untrained)", "11 files"):
        assert word in text
    row = next(line for line in text.splitlines() if "untrained" in line)
    assert [c.strip() for c in row.split("│") if c.strip()] == ["convnext_tiny (untrained)", "8", "2", "0", "1", "3",
                                                               "11.0"]
