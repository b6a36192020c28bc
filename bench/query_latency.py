"""End-to-end /search latency for three models: today's path vs the new defaults, and vs the floor, in one run.

Two services run side by side on the same store: **today's path** (``precision=fp32``, ``preprocess=exact``,
the models' store searches one after another, as before the data-path issue) and **the new defaults**
(``precision=auto``: bf16 autocast where the CPU has AMX/AVX512-BF16, the fast preprocessing path, store
searches concurrent). Their /search calls alternate, so both see the same machine load; the goal is new
p50 <= 0.6x today's. Floor = sum over the models of (batch-1 forward time with the new defaults + NumPy
exact search over that model's vectors); goal p50 <= 1.3x the floor. Then ``--clients`` concurrent clients
for ``--duration`` seconds against the new service: error count, p50/p99 and throughput.

Setup: the three default models with seeded random weights (timings do not depend on the weights),
``--n`` random unit vectors per model inserted straight through ``embedsvc.store.Store`` with each
model's real manifest (the same ids across models, as the indexer writes them), and the real app
served by uvicorn in this process (``--transport testclient`` uses FastAPI's in-process client).
Floor measurements and sequential queries alternate, so both see the same load on a shared machine.

    .venv/bin/python bench/query_latency.py --n 50000 --queries 30 --duration 60 \\
        --results bench/results/query_latency-cpu.md
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from embedsvc.core.config import Settings  # noqa: E402
from embedsvc.embedder import Embedder, load_embedders  # noqa: E402
from embedsvc.images import decode_image  # noqa: E402
from embedsvc.main import create_app  # noqa: E402
from embedsvc.store import Store, row_id  # noqa: E402

log = logging.getLogger("bench.query_latency")
INDEX = "bench"  # the new defaults' index; today's is INDEX + "_today" (same vectors, its own manifest)
#: What "today's path" was: settings of the service before the data-path issue.
TODAY = {"precision": "fp32", "preprocess": "exact", "compile": "off"}
QUERY_PHOTO = REPO / "embedsvc" / "sample_photos" / "bird" / "erase_heron.jpg"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def numpy_search(base: np.ndarray, sq_norms: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Exact squared-L2 top k (the floor a FLAT index can hope to match)."""
    d2 = sq_norms - 2.0 * (base @ query) + float(query @ query)
    part = np.argpartition(d2, k)[:k]
    return part[np.argsort(d2[part])]


def fill_store(
    store: Store, embedders: dict[str, Embedder], n: int, root: Path, seed: int, index: str = INDEX
) -> dict[str, np.ndarray]:
    """``n`` random unit vectors per model, with consistent manifests and the indexer's row ids."""
    rng = np.random.default_rng(seed)
    rel_paths = [f"img_{i:06d}.jpg" for i in range(n)]
    ids = [row_id(index, p) for p in rel_paths]
    labels = rng.integers(0, 100, n)
    base: dict[str, np.ndarray] = {}
    for key, emb in embedders.items():
        manifest = emb.manifest() | {
            "index": index,
            "index_kind": "folder",
            "dataset_root": str(root),
            "label_names": [f"class_{i}" for i in range(100)],
        }
        store.ensure_collection(index, key, manifest)
        have = store.count(index, key)
        vectors = rng.standard_normal((n, emb.dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        base[key] = vectors
        if have == n:
            continue
        t0 = time.perf_counter()
        step = 2000
        for start in range(0, n, step):
            store.upsert(
                index,
                key,
                [
                    {
                        "id": ids[i],
                        "vector": vectors[i],
                        "rel_path": rel_paths[i],
                        "content_hash": "",
                        "label_id": int(labels[i]),
                        "label_name": f"class_{labels[i]}",
                        "width": 224,
                        "height": 224,
                    }
                    for i in range(start, min(n, start + step))
                ],
            )
        store.flush(index, key)
        log.info("%s: %d x %d vectors in %.1f s", key, n, emb.dim, time.perf_counter() - t0)
    return base


class InThreadServer:
    """uvicorn serving the app on 127.0.0.1 in a background thread of this process."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", workers=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def search_once(http: httpx.Client, data: bytes, k: int, index: str = INDEX) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    resp = http.post("/search", params={"index": index, "k": k}, files={"image": ("q.jpg", data, "image/jpeg")})
    elapsed = time.perf_counter() - t0
    if resp.status_code != 200:
        raise RuntimeError(f"/search -> {resp.status_code}: {resp.text[:300]}")
    return elapsed, resp.json()


def measure(
    http: httpx.Client,
    embedders: dict[str, Embedder],
    base: dict[str, np.ndarray],
    args: argparse.Namespace,
    today: httpx.Client | None = None,
):
    """Alternate floor components, today's /search and the new /search; medians of each."""
    data = QUERY_PHOTO.read_bytes()
    image = decode_image(data).image
    tensors = {k: e.preprocess(image).unsqueeze(0) for k, e in embedders.items()}
    sq = {k: (v * v).sum(1) for k, v in base.items()}
    queries = {k: e.embed(tensors[k])[0] for k, e in embedders.items()}
    for _ in range(args.warmup):
        search_once(http, data, args.k)
        if today is not None:
            search_once(today, data, args.k, INDEX + "_today")
    forward: dict[str, list[float]] = {k: [] for k in embedders}
    npsearch: dict[str, list[float]] = {k: [] for k in embedders}
    latencies: list[float] = []
    today_latencies: list[float] = []
    stages: dict[str, dict[str, list[float]]] = {k: {} for k in embedders}
    decode_ms: list[float] = []
    for _ in range(args.queries):
        for key, emb in embedders.items():
            t0 = time.perf_counter()
            emb.embed(tensors[key])
            forward[key].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            numpy_search(base[key], sq[key], queries[key], args.k)
            npsearch[key].append(time.perf_counter() - t0)
        if today is not None:
            today_latencies.append(search_once(today, data, args.k, INDEX + "_today")[0])
        elapsed, body = search_once(http, data, args.k)
        latencies.append(elapsed)
        decode_ms.append(body["decode_ms"])
        for m in body["models"]:
            for stage, value in m["timings"].items():
                stages[m["model_key"]].setdefault(stage, []).append(value)
    floor_parts = {k: (statistics.median(forward[k]), statistics.median(npsearch[k])) for k in embedders}
    floor = sum(f + s for f, s in floor_parts.values())
    return latencies, floor, floor_parts, stages, decode_ms, today_latencies


def wait_for_compile(app: Any) -> str:
    """Under ``compile=auto`` the service compiles its CPU models after start-up: measure it once they run
    compiled, as it runs from then on. Returns a line saying what was compiled and how long it took."""
    compiler = app.state.svc.compiler
    if compiler is None or not (compiler.pending or compiler.failed):
        return "no model compiled (compile is not auto, or no CPU model)"
    keys = [e.key for e in compiler.pending]
    start = time.perf_counter()
    log.info("waiting for the background compile of %s", ", ".join(keys))
    compiler.join()
    failed = "; failed: " + ", ".join(compiler.failed) if compiler.failed else ""
    took = time.perf_counter() - start
    return f"background compile of {', '.join(keys)} finished {took:.0f} s after start-up{failed}"


def one_after_another(app: Any) -> None:
    """Today's engine ran each model's store search in the query's own thread, one after another."""

    def inline(fn: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)
        return future

    app.state.svc.engine._in_background = inline


def concurrent(url: str | None, app_client: Any, data: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """``args.clients`` threads, each with its own connection, searching for ``args.duration`` s."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + args.duration

    def worker() -> None:
        http = httpx.Client(base_url=url, timeout=120) if url else app_client
        try:
            while time.monotonic() < stop_at:
                try:
                    elapsed, _ = search_once(http, data, args.k)
                    with lock:
                        latencies.append(elapsed)
                except Exception as exc:  # counted, reported
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
        finally:
            if url:
                http.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": max(latencies) if latencies else float("nan"),
        "throughput": len(latencies) / wall,
        "wall": wall,
    }


def report(args: argparse.Namespace, embedders: dict[str, Embedder], res: dict[str, Any]) -> str:
    ms = 1000.0
    lines = [
        "# /search latency: three models, one query image (CPU)",
        "",
        f"Run {datetime.now(UTC).isoformat(timespec='seconds')} on {os.cpu_count()} CPUs "
        f"(torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, device {args.device}); "
        f"transport: {args.transport}; Milvus: {res['uri_kind']}.",
        "",
        "```",
        "python bench/query_latency.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "```",
        "",
        f"{args.n:,} vectors per model, k = {args.k}, input size {res['input']}, seeded random weights.",
        "",
        "## Sequential: p50 vs floor",
        "",
        "| model | dim | batch-1 forward ms | NumPy exact search ms | service forward ms | service search ms | "
        "service preprocess ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, (fwd, nps) in res["floor_parts"].items():
        st = res["stages"][key]
        lines.append(
            f"| {key} | {embedders[key].dim} | {fwd * ms:.1f} | {nps * ms:.1f} | "
            f"{statistics.median(st['forward_ms']):.1f} | {statistics.median(st['search_ms']):.1f} | "
            f"{statistics.median(st['preprocess_ms']):.1f} |"
        )
    lat = res["latencies"]
    if res["today_latencies"]:
        today_p50 = percentile(res["today_latencies"], 50)
        ratio = percentile(lat, 50) / today_p50
        lines += [
            "",
            f"- today's path ({', '.join(f'{k}={v}' for k, v in TODAY.items())}, store searches one after "
            f"another) p50 over {len(res['today_latencies'])} queries: **{today_p50 * ms:.1f} ms**; new defaults "
            f"({res['new_settings']}) p50: **{percentile(lat, 50) * ms:.1f} ms**",
            f"- ratio new / today: **{ratio:.2f}x** (goal <= 0.6x): {'met' if ratio <= 0.6 else 'NOT met'}",
            f"- new defaults measured after the {res['compiled']}",
        ]
    lines += [
        "",
        f"- floor (sum of forwards + NumPy searches): **{res['floor'] * ms:.1f} ms**",
        f"- /search p50 over {len(lat)} sequential queries: **{percentile(lat, 50) * ms:.1f} ms** "
        f"(p90 {percentile(lat, 90) * ms:.1f} ms); decode (once per query) "
        f"{statistics.median(res['decode_ms']):.1f} ms",
        f"- ratio p50 / floor: **{res['ratio']:.2f}x** (goal <= 1.3x): {'met' if res['ratio'] <= 1.3 else 'NOT met'}",
        "",
        f"## {args.clients} concurrent clients for {args.duration:.0f} s",
        "",
    ]
    c = res["concurrent"]
    lines += [
        f"- requests: {c['requests']}, errors: **{c['errors']}**",
        f"- latency p50 {c['p50'] * ms:.0f} ms, **p99 {c['p99'] * ms:.0f} ms**, max {c['max'] * ms:.0f} ms",
        f"- throughput {c['throughput']:.2f} queries/s (each query = {len(embedders)} forwards + "
        f"{len(embedders)} searches)",
    ]
    if c["first_errors"]:
        lines += ["", "First errors:", *[f"- `{e}`" for e in c["first_errors"]]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: the registry's default models")
    parser.add_argument("--n", type=int, default=50_000, help="Vectors per model.")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=30, help="Sequential queries (each paired with a floor).")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--input-size", type=int, default=None, help="Default: each model's own (224).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--uri", default="", help="Milvus URI; default: a Milvus Lite file in a temp dir.")
    parser.add_argument("--transport", choices=["uvicorn", "testclient"], default="uvicorn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=None, help="Write the markdown report here.")
    parser.add_argument("--no-today", action="store_true", help="Skip today's-path service (no comparison).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    tmp = Path(tempfile.mkdtemp(prefix="embedsvc-qbench-"))

    def settings_for(**overrides: Any) -> Settings:
        return Settings(
            data_dir=tmp,
            milvus_uri=args.uri,
            models=args.models or [],
            offline=True,
            allow_random_weights=True,
            device=args.device,
            input_size=args.input_size,
            max_k=max(100, args.k),
            **overrides,
        )

    settings = settings_for()
    missing = [name for name in TODAY if name not in Settings.model_fields]
    if missing:
        raise SystemExit(f"error: this checkout has no {', '.join(missing)} setting: nothing to compare")
    embedders = load_embedders(settings.model_keys(), settings=settings)
    today_embedders = None if args.no_today else load_embedders(settings.model_keys(), settings=settings_for(**TODAY))
    log.info(
        "models %s; torch threads %d",
        ", ".join(f"{k} ({e.dim})" for k, e in embedders.items()),
        torch.get_num_threads(),
    )
    store = Store.from_settings(settings, owner="bench/query_latency")
    try:
        base = fill_store(store, embedders, args.n, tmp / "images", args.seed)
        if today_embedders is not None:
            fill_store(store, today_embedders, args.n, tmp / "images", args.seed, index=INDEX + "_today")
        app = create_app(settings, embedders=embedders)
        today_app = None if today_embedders is None else create_app(settings_for(**TODAY), embedders=today_embedders)
        data = QUERY_PHOTO.read_bytes()
        with contextlib.ExitStack() as stack:
            if args.transport == "uvicorn":
                url = stack.enter_context(InThreadServer(app))
                http = stack.enter_context(httpx.Client(base_url=url, timeout=120))
            else:
                from fastapi.testclient import TestClient

                url, http = None, stack.enter_context(TestClient(app))
            today_http = None
            if today_app is not None:
                if args.transport == "uvicorn":
                    today_url = stack.enter_context(InThreadServer(today_app))
                    today_http = stack.enter_context(httpx.Client(base_url=today_url, timeout=120))
                else:
                    today_http = stack.enter_context(TestClient(today_app))
                one_after_another(today_app)
            compiled = wait_for_compile(app)
            latencies, floor, parts, stages, decode_ms, today_latencies = measure(
                http, embedders, base, args, today_http
            )
            conc = concurrent(url, http, data, args)
    finally:
        store.close()
    res = {
        "today_latencies": today_latencies,
        "new_settings": ", ".join(f"{k}={getattr(settings, k)}" for k in TODAY)
        + f"; resolved precision {sorted({e.precision for e in embedders.values()})}",
        "compiled": compiled,
        "latencies": latencies,
        "floor": floor,
        "floor_parts": parts,
        "stages": stages,
        "decode_ms": decode_ms,
        "ratio": percentile(latencies, 50) / floor,
        "concurrent": conc,
        "uri_kind": "server " + args.uri if args.uri else "Milvus Lite 2.5.1 (temp file)",
        "input": f"{args.input_size} px" if args.input_size else "224 px (each model's default)",
    }
    text = report(args, embedders, res)
    sys.stdout.write(text)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text)
        log.info("wrote %s", args.results)


if __name__ == "__main__":
    main()
