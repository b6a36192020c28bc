"""The Ray engine's overhead against the local engine, and the per-stage rates Ray measures, in one run.

The same folder of ImageNet-like JPEGs (500x375, made from the bundled real photos), the same models and
batch size, each engine into its own fresh Milvus Lite file, engines alternating over ``--rounds``:

- wall time of each engine and the ratio ray / local (Ray's fixed cost: starting Ray, worker processes,
  one model load per actor, on top of the same work);
- the Ray run split into its phases (``ray_start``, ``first_batch`` = workers start and actors load their
  models, ``stream`` = first batch to the last) and the streaming rate against the local engine's;
- per-stage rates as the stages measured them: files/s of one read task (read + hash + decode +
  preprocess), images/s of one actor per model (forward only), rows/s of the driver's Milvus writes.

These per-stage rates are what ``docs/deployment.md``'s cost model is built from.

    python bench/ray_index.py --images 48 --batch-size 16 --rounds 1 --results bench/results/ray_index-cpu.md
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.index_throughput import make_images  # noqa: E402
from embedsvc.core.config import Settings  # noqa: E402
from embedsvc.embedder import load_embedder  # noqa: E402
from embedsvc.indexer.folder import folder_source  # noqa: E402
from embedsvc.indexer.ray_engine import RayOptions, run_index_ray  # noqa: E402
from embedsvc.indexer.report import IndexSummary  # noqa: E402
from embedsvc.indexer.runner import run_index  # noqa: E402
from embedsvc.store import Store  # noqa: E402

DEFAULT_MODELS = ("gresnet50", "convnext_tiny", "deit3_small")


def one_run(engine: str, root: Path, work: Path, embedders: dict, settings: Settings, args: argparse.Namespace,
            round_no: int) -> tuple[float, IndexSummary]:
    with Store(str(work / f"{engine}-{round_no}.db")) as store:
        start = time.perf_counter()
        if engine == "local":
            summary = run_index(folder_source(root), index_name="bench", embedders=embedders, store=store,
                                settings=settings, batch_size=args.batch_size, workers=args.workers)
        else:
            summary = run_index_ray(folder_source(root), index_name="bench", embedders=embedders, store=store,
                                    settings=settings, batch_size=args.batch_size,
                                    options=RayOptions(num_cpus=args.ray_cpus))
        return time.perf_counter() - start, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1, help="Local engine's decode workers.")
    parser.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray (default: all).")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("-m", "--model", action="append", default=None, help=f"Default: {' '.join(DEFAULT_MODELS)}.")
    parser.add_argument("--input-size", type=int, default=None, help="Override every model's input size.")
    parser.add_argument("--results", type=Path, default=None, help="Append a dated Markdown section here.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    models = args.model or list(DEFAULT_MODELS)

    with tempfile.TemporaryDirectory(prefix="ray-index-bench-") as tmp:
        work = Path(tmp)
        settings = Settings(data_dir=work / "data", milvus_uri="", offline=True, allow_random_weights=True,
                            device="cpu", input_size=args.input_size, batch_size=args.batch_size)
        root = work / "photos"
        make_images(root, args.images, (500, 375))
        embedders = {k: load_embedder(k, settings=settings) for k in models}
        walls: dict[str, list[float]] = {"local": [], "ray": []}
        last: dict[str, IndexSummary] = {}
        for round_no in range(args.rounds):
            for engine in ("local", "ray"):
                wall, summary = one_run(engine, root, work, embedders, settings, args, round_no)
                assert all(c.indexed == args.images for c in summary.per_model.values()), summary.per_model
                walls[engine].append(wall)
                last[engine] = summary
                logging.warning("round %d %s: %.1f s", round_no, engine, wall)

    local, ray = statistics.median(walls["local"]), statistics.median(walls["ray"])
    phases = last["ray"].extra["stage_s"]
    rates = last["ray"].extra["stage_rates"]
    local_run = last["local"].extra["stage_s"]["run"]
    precision = {k: str(getattr(e, "precision", "?")) for k, e in embedders.items()}
    lines = [
        f"images: {args.images} x 500x375 JPEG, models: {', '.join(models)} (random weights, "
        f"input size {args.input_size or 'each model’s own'}, precision {precision}), batch {args.batch_size}, "
        f"rounds {args.rounds}, Ray: {last['ray'].extra['ray']}",
        "",
        "| engine | wall s (median) | images/s | ratio to local |",
        "|---|---:|---:|---:|",
        f"| local ({args.workers} decode worker) | {local:.1f} | {args.images / local:.2f} | 1.00 |",
        f"| ray (local Ray) | {ray:.1f} | {args.images / ray:.2f} | {ray / local:.2f} |",
        "",
        "Ray run phases (last round): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items() if k != "run")
        + f"; streaming rate {args.images / max(phases['stream'], 1e-9):.2f} images/s vs the local engine's "
        f"run stage {args.images / local_run:.2f} images/s",
        "",
        "| stage (as Ray measured it) | rows | busy s | rows/s per worker |",
        "|---|---:|---:|---:|",
        *(f"| {stage} | {r['rows']} | {r['seconds']:.2f} | {r['rows_per_s']:.1f} |" for stage, r in rates.items()),
    ]
    text = "\n".join(lines)
    print(text)  # noqa: T201
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        command = "python bench/ray_index.py " + shlex.join(sys.argv[1:])
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write(f"\n## {stamp}\n\n`{command}`\n\n{text}\n")


if __name__ == "__main__":
    main()
