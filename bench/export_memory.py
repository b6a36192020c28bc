"""Peak memory of `embedsvc export` at two index sizes, beside reading the same rows at once (``Store.fetch_all``).

The streamed export should grow by the same amount whatever the size (one iterator page and one row group), while
holding every vector grows with the rows. Each measurement runs in a fresh interpreter against one Milvus Lite file
(Lite's server is its own process, so the client's ``ru_maxrss`` is the exporter's own) and reports the growth of
peak RSS over the process after imports (pyarrow's included) and opening the store.

    .venv/bin/python bench/export_memory.py [--rows 10000] [--factor 4] [--dim 384] \
        [--out bench/results/export_memory.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
import pyarrow.parquet  # noqa: F401 - imported before the baseline (the libraries are not the export's data)
from embedsvc.export import export_index
from embedsvc.store import Store

mode, uri, index, out = sys.argv[1:5]
with Store(uri, owner="bench export_memory") as store:
    store.count(index, "m")  # connection, manifest and load done before the baseline
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "export":
        rows = export_index(store, index, out).models["m"].rows
    else:
        rows = len(store.fetch_all(index, "m")[0])
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rows": rows, "growth_kib": after - before, "seconds": seconds}))
"""


def fill(uri: str, index: str, rows: int, dim: int) -> None:
    from embedsvc.store import Store, row_id

    rng = np.random.default_rng(0)
    manifest = {"model_name": "bench.v1", "dim": dim, "normalize": True, "weights": {"source": "random", "seed": 0}}
    with Store(uri, owner="bench export_memory fill") as store:
        store.ensure_collection(index, "m", manifest)
        for start in range(0, rows, 2000):
            n = min(2000, rows - start)
            vectors = rng.standard_normal((n, dim)).astype(np.float32)
            names = [f"img_{start + i:07d}.jpg" for i in range(n)]
            store.upsert(index, "m", [
                {"id": row_id(index, name), "vector": vectors[i], "rel_path": name, "content_hash": f"{start + i:064x}",
                 "label_id": (start + i) % 10, "label_name": f"c{(start + i) % 10}", "width": 500, "height": 375}
                for i, name in enumerate(names)
            ])


def measure(mode: str, uri: str, index: str, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, uri, index, str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} {index} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--out", type=Path, default=None, help="Also write the table as markdown here.")
    args = parser.parse_args()
    sizes = {"small": args.rows, "large": args.rows * args.factor}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        uri = str(Path(tmp) / "milvus.db")
        start = time.perf_counter()
        for index, rows in sizes.items():
            fill(uri, index, rows, args.dim)
        print(f"filled {sum(sizes.values()):,} rows x {args.dim} in {time.perf_counter() - start:.0f} s", flush=True)
        results = {}
        for index in sizes:
            results[index] = {mode: measure(mode, uri, index, Path(tmp) / f"out-{index}-{mode}") for mode in
                              ("export", "fetch_all")}
    lines = [
        f"| rows (dim {args.dim}) | vectors MiB | export: RSS growth MiB | export rows/s | fetch_all: RSS growth MiB |",
        "|---|---|---|---|---|",
    ]
    for index, rows in sizes.items():
        exp, full = results[index]["export"], results[index]["fetch_all"]
        assert exp["rows"] == rows == full["rows"], (exp, full)
        lines.append(
            f"| {rows:,} | {rows * args.dim * 4 / 2**20:.0f} | {exp['growth_kib'] / 1024:.0f} | "
            f"{rows / exp['seconds']:,.0f} | {full['growth_kib'] / 1024:.0f} |"
        )
    small, large = (results[i] for i in sizes)
    ratio_export = large["export"]["growth_kib"] / max(1, small["export"]["growth_kib"])
    ratio_full = large["fetch_all"]["growth_kib"] / max(1, small["fetch_all"]["growth_kib"])
    lines.append("")
    lines.append(f"{args.factor}x the rows: export grows {ratio_export:.2f}x, fetch_all {ratio_full:.2f}x.")
    table = "\n".join(lines)
    print(table)
    if args.out:
        command = "python bench/export_memory.py " + " ".join(sys.argv[1:])
        args.out.write_text(f"# Export memory\n\nProduced by `{command}` on this machine.\n\n{table}\n")


if __name__ == "__main__":
    main()
