"""bench/gpu_index.py runs on CPU as a smoke test (tiny inputs): it finishes and its results file has every row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import REPO

MODELS = ["convnext_tiny", "deit3_small"]
PER_MODEL = [
    "batch size that fills the device",
    "forward-only im/s, eager",
    "forward-only im/s, torch.compile",
    "peak RSS MiB (process)",
    "end-to-end im/s (run_index, one model)",
    "end-to-end / forward-only",
    "compute / wall",
    "writer (Milvus upserts) busy / wall",
]
ONE_PASS = [
    "one pass, all 2: forward-only im/s (batch 4)",
    "one pass: end-to-end im/s",
    "one pass: end-to-end / forward-only",
    "one pass: compute / wall",
    "one pass: writer busy / wall",
    "400x300 photos, one pass, --decode worker: im/s",
    "400x300 photos, one pass, --decode device: im/s",
    "400x300 photos: --decode device / worker",
    "/search p50 ms (2 models x 100 rows, Milvus Lite)",
]


def test_gpu_bench_smoke_on_cpu(tmp_path: Path) -> None:
    results = tmp_path / "gpu_index-cpu.md"
    args = ["--device", "cpu", "--models", *MODELS, "--images", "12", "--rows", "100", "--input-size", "32",
            "--batch-sizes", "4", "--no-compile", "--workers", "0", "--queries", "3", "--fwd-seconds", "0.05",
            "--photos", "4", "--photo-size", "400x300",
            "--results", str(results)]
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_index.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = results.read_text()
    assert "python bench/gpu_index.py --device cpu" in text  # the command that produced it
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 5 and cells[0] != "measure":
            rows[(cells[0], cells[1])] = cells[2:]
    expected = [(m, k) for k in MODELS for m in PER_MODEL] + [(m, "all") for m in ONE_PASS]
    missing = [e for e in expected if e not in rows]
    assert not missing, (missing, sorted(rows))
    assert len(rows) == len(expected), sorted(set(rows) - set(expected))
    for (measure, model), (value, goal, met) in rows.items():
        assert value, (measure, model)
        if "compile" in measure:
            assert value == "not measured (--no-compile)"
        elif measure != "batch size that fills the device":
            assert value[0].isdigit(), (measure, model, value)  # a measured number, not a placeholder
        assert (met in ("met", "NOT met")) == bool(goal), (measure, model, goal, met)
    assert rows[("forward-only im/s, eager", "convnext_tiny")][1] == ">= 4,300"
    assert rows[("end-to-end / forward-only", "deit3_small")][1] == ">= 0.85"
    assert rows[("/search p50 ms (2 models x 100 rows, Milvus Lite)", "all")][1] == "< 15"
