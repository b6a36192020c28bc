"""Cost of the per-model 2-D maps (embedsvc.maps) against the issue's goal: 5,000 points x 3 models in under a minute.

Synthetic clustered vectors at the default models' dims (GResNet-50 2048, ConvNeXt-T 768, DeiT-III-S 384)
go into a Milvus Lite index in a temp dir; ``compute_maps`` then reads one seeded sample of every model
and projects it, end to end as the API does. UMAP runs first in the process (numba compiles its kernels
then: the "first call"), then again (warm), then PCA. Each line gives the wall time against the goal
and the 2-D map's 10-NN label agreement beside the full vectors' (how much neighbourhood survives).

    .venv/bin/python bench/maps_cost.py [--n 5000] [--clusters 20] [--write bench/results/maps_cost-cpu.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from embedsvc import maps
from embedsvc.store import Store, row_id

INDEX = "bench-maps"
DIMS = {"gresnet50": 2048, "convnext_tiny": 768, "deit3_small": 384}
GOAL_S = 60.0
AGREEMENT_K = 10
SEPARATION = 1.3

console = Console(width=160)


def clustered(labels: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """One model's vectors: unit noise around its label's random centre. Centres ``SEPARATION / dim**0.25``
    apart per dimension overlap alike at every dim: the full vectors' 10-NN label agreement is ~0.8."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((int(labels.max()) + 1, dim)).astype(np.float32) * (SEPARATION / dim**0.25)
    return centres[labels] + rng.standard_normal((len(labels), dim)).astype(np.float32)


def label_agreement(points: np.ndarray, labels: np.ndarray, k: int = AGREEMENT_K, queries: int = 1000) -> float:
    """Mean share of each query's k nearest (euclidean, itself excluded) that share its label."""
    x = np.asarray(points, dtype=np.float32)
    rows = np.random.default_rng(0).choice(len(x), min(queries, len(x)), replace=False)
    d2 = (x[rows] ** 2).sum(1)[:, None] + (x**2).sum(1)[None, :] - 2 * x[rows] @ x.T
    d2[np.arange(len(rows)), rows] = np.inf
    nearest = np.argpartition(d2, k, axis=1)[:, :k]
    return float((labels[nearest] == labels[rows][:, None]).mean())


def fill(store: Store, n: int, clusters: int) -> dict[int, int]:
    """Every model gets the same ids and labels; returns id -> label."""
    label_of: dict[int, int] = {}
    labels = np.random.default_rng(100).integers(0, clusters, n)  # the same images (ids, labels) in every model
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("writing vectors", total=n * len(DIMS))
        for j, (key, dim) in enumerate(DIMS.items()):
            vectors = clustered(labels, dim, seed=j)
            store.ensure_collection(INDEX, key, {"model_name": key, "weights": {}, "dim": dim, "normalize": False})
            for start in range(0, n, 1000):
                rows = []
                for i in range(start, min(start + 1000, n)):
                    rel = f"c{labels[i]}/{i}.jpg"
                    rid = row_id(INDEX, rel)
                    label_of[rid] = int(labels[i])
                    rows.append(
                        {
                            "id": rid,
                            "vector": vectors[i],
                            "rel_path": rel,
                            "content_hash": str(i),
                            "label_id": int(labels[i]),
                            "label_name": f"c{labels[i]}",
                            "width": 1,
                            "height": 1,
                        }
                    )
                store.upsert(INDEX, key, rows)
                progress.advance(task, len(rows))
    return label_of


def run(store: Store, n: int, method: maps.Method, label_of: dict[int, int], name: str) -> list[str]:
    with console.status(f"{name}: {n:,} points x {len(DIMS)} models by {method}…"):
        t0 = time.perf_counter()
        result = maps.compute_maps(store, INDEX, sample=n, seed=0, method=method)
        wall = time.perf_counter() - t0
    labels = np.array([label_of[r["id"]] for r in result.rows])
    ids = [r["id"] for r in result.rows]
    per_model = []
    for m in result.models:
        full = np.stack([r["vector"] for r in store.get_rows(INDEX, m.model, ids, with_vectors=True)])
        per_model.append(
            f"{m.model} {m.seconds:.1f} s, 10-NN label agreement 2-D {label_agreement(np.c_[m.x, m.y], labels):.2f}"
            f" vs full {label_agreement(maps.normalise(full), labels):.2f}"
        )
    verdict = "met" if wall < GOAL_S else "NOT met"
    return [
        f"{name:<22} {wall:6.1f} s for {len(result.rows):,} points x {len(result.models)} models "
        f"= {wall / GOAL_S:.2f} of the {GOAL_S:.0f} s goal ({verdict})",
        *[f"    {line}" for line in per_model],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--write", type=Path, default=None, help="also write the results as Markdown here")
    args = parser.parse_args()

    load = os.getloadavg()
    header = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at start; umap-learn available: {maps.umap_available()}"
    )
    console.print(header)
    lines: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="embedsvc-bench-maps-") as tmp,
        Store(str(Path(tmp) / "maps.db"), owner="bench/maps_cost.py", timeout=600) as store,
    ):
        t0 = time.perf_counter()
        label_of = fill(store, args.n, args.clusters)
        console.print(
            f"wrote {args.n:,} x {len(DIMS)} models ({', '.join(map(str, DIMS.values()))}-d) "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        t0 = time.perf_counter()
        store.sample_aligned(INDEX, list(DIMS), args.n, seed=0)
        read = f"reading the sample alone (every model's vectors of {args.n:,} ids): {time.perf_counter() - t0:.1f} s"
        console.print(read)
        lines.append(read)
        for method, name in (("umap", "UMAP, first call (JIT)"), ("umap", "UMAP, warm"), ("pca", "PCA")):
            out = run(store, args.n, method, label_of, name)
            lines += out
            for line in out:
                console.print(line, highlight=False)
    if args.write:
        command = " ".join(["python", *map(shlex.quote, sys.argv)])
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        body = "\n".join(lines)
        args.write.write_text(
            f"# Cost of the per-model 2-D maps (`bench/maps_cost.py`)\n\n"
            f"Goal (issue #14): 5,000 points x 3 models in under a minute on this CPU. Synthetic clustered vectors "
            f"({args.clusters} clusters) at the default models' dims in a Milvus Lite index; `compute_maps` end to "
            f"end (seeded sample read from every model, L2-normalised, projected). The 10-NN label agreement of "
            f"the 2-D map is printed beside the full vectors' (1,000 query points, the same in both).\n\n"
            f"## {stamp}\n\n```\n{command}\n```\n\n{header}\n\n```\n{body}\n```\n",
            encoding="utf-8",
        )
        console.print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
