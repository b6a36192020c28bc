"""FLAT search latency of embedsvc.store against a NumPy exact-search floor measured in the same run.

Default: 50,000 x 768 random float32 vectors in the embedded default (a Milvus Lite file in a temp
dir). Reports insert rate, p50 single-query latency (top 10) vs NumPy, one batch of 64 queries, and
recall@10 against NumPy. Goal: p50 <= 2x the NumPy floor.

    .venv/bin/python bench/search_latency.py [--n 50000] [--dim 768] [--uri http://127.0.0.1:19530]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from embedsvc.store import Store

INDEX, MODEL = "bench", "random"


def numpy_topk(base: np.ndarray, sq_norms: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact squared-L2 top k: the floor a FLAT index can hope to match on this CPU."""
    d2 = sq_norms[None, :] - 2.0 * (queries @ base.T) + (queries * queries).sum(1)[:, None]
    part = np.argpartition(d2, k, axis=1)[:, :k]
    order = np.take_along_axis(d2, part, axis=1).argsort(axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    return idx, np.take_along_axis(d2, idx, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--uri", default="", help="Milvus URI; default a Lite file in a temp dir")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    base = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    ids = np.arange(1, args.n + 1, dtype=np.int64)
    singles = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    batch = rng.standard_normal((args.batch, args.dim), dtype=np.float32)

    with tempfile.TemporaryDirectory(prefix="embedsvc-bench-") as tmp:
        uri = args.uri or str(Path(tmp) / "bench.db")
        with Store(uri, owner="bench/search_latency.py", timeout=600) as store:
            engine = "Milvus Lite (embedded default)" if store.is_lite else f"Milvus server at {uri}"
            print(f"engine: {engine}; {args.n:,} x {args.dim} float32, FLAT/L2, top {args.k}")
            if store.models_of(INDEX):
                store.drop_index(INDEX)
            store.ensure_collection(INDEX, MODEL, {"model_name": "random", "dim": args.dim, "normalize": False})

            t0 = time.perf_counter()
            chunk = 5000
            for start in range(0, args.n, chunk):
                rows = [
                    {"id": int(ids[i]), "vector": base[i], "rel_path": f"r/{i}.jpg", "content_hash": "h"}
                    for i in range(start, min(start + chunk, args.n))
                ]
                store.upsert(INDEX, MODEL, rows)
            store.flush(INDEX, MODEL)
            insert_s = time.perf_counter() - t0
            assert store.count(INDEX, MODEL) == args.n
            print(f"insert: {args.n / insert_s:,.0f} vec/s ({insert_s:.1f} s, 250-row batches)")

            # NumPy floor and Milvus alternate query by query, so both see the same machine state
            # (Lite's search threads keep a core busy for a moment after each call).
            sq_norms = (base * base).sum(1)
            numpy_topk(base, sq_norms, singles[:2], args.k)  # warm-up
            for q in singles[:3]:
                store.search(INDEX, MODEL, q, k=args.k)  # warm-up
            np_times, np_single_idx, mv_times, mv_single = [], [], [], []
            for q in singles:
                t = time.perf_counter()
                idx, _ = numpy_topk(base, sq_norms, q[None, :], args.k)
                np_times.append(time.perf_counter() - t)
                np_single_idx.append(idx[0])
                t = time.perf_counter()
                hits = store.search(INDEX, MODEL, q, k=args.k)
                mv_times.append(time.perf_counter() - t)
                mv_single.append(hits[0])
            t = time.perf_counter()
            np_batch_idx, np_batch_d2 = numpy_topk(base, sq_norms, batch, args.k)
            np_batch_s = time.perf_counter() - t

            t = time.perf_counter()
            mv_batch = store.search(INDEX, MODEL, batch, k=args.k)
            mv_batch_s = time.perf_counter() - t
            batch_ok = len(mv_batch) == args.batch and all(len(h) == args.k for h in mv_batch)

            def recall(hits: list, ref_idx: np.ndarray) -> float:
                want = {int(ids[j]) for j in ref_idx}
                return len(want & {h.id for h in hits}) / len(want)

            rec = [recall(h, r) for h, r in zip(mv_single, np_single_idx, strict=True)]
            rec += [recall(h, r) for h, r in zip(mv_batch, np_batch_idx, strict=True)]
            max_d_err = max(
                abs(h.distance - float(d)) / max(1.0, float(d))
                for hits, row in zip(mv_batch, np_batch_d2, strict=True)
                for h, d in zip(hits, row, strict=True)
            )

            p50_np, p50_mv = statistics.median(np_times) * 1e3, statistics.median(mv_times) * 1e3
            ratio = p50_mv / p50_np
            print(f"NumPy exact floor: single p50 {p50_np:.1f} ms; batch of {args.batch}: {np_batch_s * 1e3:.0f} ms")
            print(
                f"Milvus FLAT:       single p50 {p50_mv:.1f} ms (p90 {np.percentile(mv_times, 90) * 1e3:.1f} ms); "
                f"batch of {args.batch}: {mv_batch_s * 1e3:.0f} ms ({'succeeded' if batch_ok else 'FAILED'})"
            )
            print(f"p50 ratio Milvus/NumPy: {ratio:.2f}x (goal <= 2x: {'met' if ratio <= 2 else 'NOT met'})")
            print(f"recall@{args.k} vs NumPy: {np.mean(rec):.4f} over {len(rec)} queries", end="; ")
            print(f"max relative distance error {max_d_err:.1e}")
            store.drop_index(INDEX)


if __name__ == "__main__":
    main()
