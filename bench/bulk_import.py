"""Ingest rate into a Milvus server: the writer's row upserts vs its bulk import path, same rows, one run.

Starts the Milvus 2.3.5 test server (``tests/milvus_server.py``: loopback-only network namespace, needs root) and
writes the same random rows into two fresh collections through ``StoreWriter``: once as upserts (250-row requests),
once through ``BulkImporter`` (LocalBulkWriter parquet, import jobs, verified counts). The bulk path's time
includes staging, the jobs, the refreshing load and the verification.

    .venv/bin/python bench/bulk_import.py [--rows 100000] [--dim 384] [--out bench/results/bulk_import.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rows(index: str, n: int, dim: int, start: int = 0) -> list[dict]:
    from embedsvc.store import row_id

    rng = np.random.default_rng(start)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return [
        {"id": row_id(index, f"img_{start + i:08d}.jpg"), "vector": vectors[i], "rel_path": f"img_{start + i:08d}.jpg",
         "content_hash": f"{start + i:064x}", "label_id": i % 10, "label_name": f"c{i % 10}", "width": 500,
         "height": 375}
        for i in range(n)
    ]


def ingest(store: object, index: str, n: int, dim: int, bulk: dict | None) -> tuple[float, int]:
    from embedsvc.indexer.writer import StoreWriter

    writer = StoreWriter(store, index, bulk=bulk)  # type: ignore[arg-type]
    seconds = 0.0
    for start in range(0, n, 10_000):  # rows are made outside the timed part
        batch = rows(index, min(10_000, n - start), dim, start)
        t0 = time.perf_counter()
        for s in range(0, len(batch), 64):
            writer.put("m", batch[s : s + 64])
        seconds += time.perf_counter() - t0
    t0 = time.perf_counter()
    writer.close()
    seconds += time.perf_counter() - t0
    jobs = writer.importers["m"].jobs if "m" in writer.importers else 0
    return seconds, jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from embedsvc.store import Store
    from embedsvc.store.bulk import BulkConfig
    from tests.milvus_server import MilvusTestServer

    manifest = {"model_name": "bench.v1", "dim": args.dim, "normalize": True,
                "weights": {"source": "random", "seed": 0}}
    results = {}
    with MilvusTestServer() as server, Store(server.uri, owner="bench bulk_import") as store, \
            tempfile.TemporaryDirectory(prefix="bench-bulk-") as staging:
        for mode in ("upsert", "bulk"):
            index = f"bench-{mode}"
            store.ensure_collection(index, "m", manifest)
            bulk = {"m": BulkConfig(Path(staging))} if mode == "bulk" else None
            seconds, jobs = ingest(store, index, args.rows, args.dim, bulk)
            count = store.count(index, "m")
            assert count == args.rows, (mode, count)
            results[mode] = (seconds, jobs)
            print(f"{mode}: {args.rows:,} rows in {seconds:.1f} s ({jobs} import jobs)", flush=True)
    up, bulk_s = results["upsert"][0], results["bulk"][0]
    table = "\n".join([
        f"| path ({args.rows:,} rows x {args.dim}, Milvus 2.3.5 standalone) | seconds | rows/s | import jobs |",
        "|---|---|---|---|",
        f"| upserts (250-row requests) | {up:.1f} | {args.rows / up:,.0f} | 0 |",
        f"| bulk import (parquet + jobs + verify) | {bulk_s:.1f} | {args.rows / bulk_s:,.0f} | {results['bulk'][1]} |",
        "",
        f"bulk / upsert time: {bulk_s / up:.2f}x",
    ])
    print(table)
    if args.out:
        command = "python bench/bulk_import.py " + " ".join(sys.argv[1:])
        args.out.write_text(f"# Bulk import vs upserts\n\nProduced by `{command}` on this machine.\n\n{table}\n")


if __name__ == "__main__":
    main()
