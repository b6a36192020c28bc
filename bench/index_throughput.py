"""Indexing throughput: today's path vs the new defaults vs fp32, forward-only vs end-to-end, in one run.

Three configurations of the same models on the same files (``--configs``):

- ``today``: the path before issue #12: timm's exact PIL preprocessing in the decode workers, fp32 forwards;
- ``fp32``: the new fast preprocessing (reduced-size decode, tensor ops), fp32 forwards;
- ``new``: the new defaults: fast preprocessing and ``--precision auto`` (bf16 autocast where the hardware has it).

Forward-only, on preprocessed tensors already in memory, same batch size: each model alone (``fwd``: repeated
batches of one model, combined as 1 / sum_m 1 / rate_m), and the models in one pass (``1-pass``: batch after
batch, every model on each, as the pipeline runs them). End-to-end: ``run_index`` with all models in one pass
over a folder of JPEGs into a fresh Milvus Lite collection. The pipeline hides decode, preprocessing and
writes behind compute when e2e images/s / 1-pass forward-only images/s is close to 1 (goal >= 0.85; the
ratio to ``fwd`` is printed too); the new defaults' end-to-end images/s should be >= 2x today's.

Configurations and forward-only / end-to-end alternate within every one of ``--rounds`` so all see the same
load on a shared machine; medians are reported.

    python bench/index_throughput.py --images 160 --batch-size 16 --workers 0 1 2 --configs today new \
        --rounds 2 --results bench/results/index_throughput-cpu.md
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import os
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from embedsvc.core.config import Settings  # noqa: E402
from embedsvc.embedder import Embedder, load_embedder  # noqa: E402
from embedsvc.images import decode_image  # noqa: E402
from embedsvc.indexer.cli import default_workers  # noqa: E402
from embedsvc.indexer.folder import folder_source  # noqa: E402
from embedsvc.indexer.runner import run_index  # noqa: E402
from embedsvc.store import Store  # noqa: E402

SAMPLE_PHOTOS = REPO / "embedsvc" / "sample_photos"


def make_images(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """``count`` JPEGs of ``size`` from the bundled real photos (repeated, flipped/rotated to differ)."""
    photos = sorted(SAMPLE_PHOTOS.glob("*/*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        img = decode_image(photos[i % len(photos)]).image
        scale = max(size[0] / img.width, size[1] / img.height)
        img = img.resize((max(size[0], round(img.width * scale)), max(size[1], round(img.height * scale))),
                         Image.Resampling.BICUBIC)
        left, top = (img.width - size[0]) // 2, (img.height - size[1]) // 2
        img = img.crop((left, top, left + size[0], top + size[1]))
        variant = i // len(photos)
        if variant % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if variant // 2 % 2:
            img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        path = folder / f"img_{i:05d}.jpg"
        path.write_bytes(buf.getvalue())
        out.append(path)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_only(emb: Embedder, batch: torch.Tensor, batches: int, warmup: bool) -> float:
    """Images/s of ``emb.embed`` on an in-memory preprocessed batch (after an untimed warm-up call)."""
    if warmup:
        emb.embed(batch)
        sync(emb.device)
    start = time.perf_counter()
    for _ in range(batches):
        emb.embed(batch)
    sync(emb.device)
    return batches * batch.shape[0] / (time.perf_counter() - start)


def combined_rate(rates: dict[str, float]) -> float:
    """Images/s of all models on one image stream from each model's own rate: 1 / sum 1/rate."""
    return 1.0 / sum(1.0 / v for v in rates.values())


def one_pass(embedders: dict[str, Embedder], batches: dict[str, torch.Tensor], rounds: int) -> float:
    """Images/s of every model on each batch in turn (the pipeline's order), on in-memory batches."""
    start = time.perf_counter()
    for _ in range(rounds):
        for key, emb in embedders.items():
            emb.embed(batches[key])
    sync(next(iter(embedders.values())).device)
    return rounds * next(iter(batches.values())).shape[0] / (time.perf_counter() - start)


def peak_rss_mib() -> tuple[float, float]:
    """(this process, largest child) peak resident set size in MiB (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


#: configuration -> (preprocessing path, precision); "today" is the path before issue #12
CONFIGS = {"today": ("exact", "fp32"), "fp32": ("fast", "fp32"), "new": ("fast", "auto")}


def configure(loaded: dict[str, dict[str, Embedder]], config: str) -> dict[str, Embedder]:
    """The models loaded in ``config``'s precision (a low precision stores its weights cast) with its
    preprocessing path."""
    path, precision = CONFIGS[config]
    return {k: dataclasses.replace(e, preprocess_path=path) for k, e in loaded[precision].items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help="default: the registry's default models")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--input-size", type=int, default=None, help="Override every model's input size.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, default=256, help="Images in the end-to-end pass.")
    parser.add_argument("--image-size", default="500x375", help="WxH of the generated JPEGs.")
    parser.add_argument("--folder", type=Path, default=None, help="Index this folder instead of generated JPEGs.")
    parser.add_argument("--fwd-batches", type=int, default=2, help="Timed forward-only batches per model per round.")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds over every configuration.")
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="DataLoader decode workers; several: one end-to-end pass each (default: the CLI's).")
    parser.add_argument("--results", type=Path, default=None, help="Append a dated Markdown section here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    work = Path(tempfile.mkdtemp(prefix="index-bench-"))
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    try:
        settings = Settings(
            data_dir=work / "data", milvus_uri="", offline=True, allow_random_weights=True, device=args.device,
            input_size=args.input_size, batch_size=args.batch_size, precision="fp32",
        )
        device = settings.resolved_device()
        workers = args.workers if args.workers is not None else [default_workers(settings)]
        if args.folder:
            folder = args.folder
        else:
            w, h = (int(x) for x in args.image_size.lower().split("x"))
            folder = work / "images"
            make_images(folder, args.images, (w, h))
        source = folder_source(folder, limit=args.images)
        n = len(source.items)
        keys = args.models or settings.model_keys()
        by_precision = {
            precision: {key: load_embedder(key, settings=settings, precision=precision) for key in keys}
            for precision in dict.fromkeys(CONFIGS[c][1] for c in args.configs)
        }
        loaded = next(iter(by_precision.values()))
        variants = {c: configure(by_precision, c) for c in args.configs}
        hw = torch.cuda.get_device_name() if device.startswith("cuda") else f"{torch.get_num_threads()} threads"
        origin = str(folder) if args.folder else f"{args.image_size} JPEGs made from the sample photos"
        say(f"device {device} ({hw}), torch {torch.__version__}, batch {args.batch_size}, workers {workers}, "
            f"{n} images per pass: {origin}")
        for key, emb in loaded.items():
            size = emb.data_config["input_size"]
            say(f"  {key}: {emb.spec.model_name}, input {size[1]}x{size[2]}, dim {emb.dim}, {emb.provenance.label}")
        for config in args.configs:
            first = next(iter(variants[config].values()))
            say(f"  config {config}: preprocess {first.preprocess_path}, precision {first.precision}")

        # One batch of real preprocessed images per model, reused for every forward-only call.
        sample = [decode_image(p).image for p in sorted(folder.rglob("*"))[: args.batch_size] if p.is_file()]
        while len(sample) < args.batch_size:
            sample += sample[: args.batch_size - len(sample)]
        batches = {k: torch.stack([e.preprocess(img, "exact") for img in sample]) for k, e in loaded.items()}

        runs = [(c, w) for c in args.configs for w in workers]  # one end-to-end pass per config and worker count
        label = {run: f"{run[0]} w{run[1]}" for run in runs}
        fwd_rounds: dict[str, list[dict[str, float]]] = {c: [] for c in args.configs}
        pass_rounds: dict[str, list[float]] = {c: [] for c in args.configs}
        e2e_rounds: dict[tuple[str, int], list[float]] = {run: [] for run in runs}
        busy_rounds: dict[tuple[str, int], list[float]] = {run: [] for run in runs}
        pipe_rounds: dict[tuple[str, int], list[dict[str, float]]] = {run: [] for run in runs}
        with Store(str(work / "data" / "bench.db"), owner="index throughput bench") as store:
            for r in range(args.rounds):
                for config in args.configs:
                    embedders = variants[config]
                    fwd_r = {k: forward_only(e, batches[k], args.fwd_batches, r == 0) for k, e in embedders.items()}
                    pass_r = one_pass(embedders, batches, args.fwd_batches)
                    fwd_rounds[config].append(fwd_r)
                    pass_rounds[config].append(pass_r)
                    combined_r = combined_rate(fwd_r)
                    for w in workers:
                        name = f"bench-{config}-w{w}-{r}"
                        summary = run_index(source, index_name=name, embedders=embedders, store=store,
                                            settings=settings, batch_size=args.batch_size, workers=w)
                        rows = {k: store.count(name, k) for k in embedders}
                        if any(v != n for v in rows.values()) or summary.failures:
                            say(f"WARNING: expected {n} rows per model, got {rows}; failures {summary.failures[:3]}")
                        e2e = n / summary.wall_s
                        e2e_rounds[config, w].append(e2e)
                        busy_rounds[config, w].append(sum(summary.extra["compute_s"].values()) / summary.wall_s)
                        pipe_rounds[config, w].append({k: c.images_per_s for k, c in summary.per_model.items()})
                        say(f"round {r + 1} {label[config, w]:>8}: forward-only {combined_r:.3f} im/s, 1-pass "
                            f"{pass_r:.3f} im/s, e2e {e2e:.3f} im/s ({n} images in {summary.wall_s:.1f} s), "
                            f"e2e/1-pass {e2e / pass_r:.3f}, load avg {os.getloadavg()[0]:.1f}")

        med = statistics.median
        say()
        say(f"{'model':<16} " + " ".join(f"{c + ' fwd':>12}" for c in args.configs) + " "
            + " ".join(f"{label[run] + ' in-pipe':>17}" for run in runs)
            + f"   (im/s, medians over {args.rounds} rounds)")
        for k in loaded:
            say(f"{k:<16} " + " ".join(f"{med(fr[k] for fr in fwd_rounds[c]):>12.2f}" for c in args.configs) + " "
                + " ".join(f"{med(p[k] for p in pipe_rounds[run]):>17.2f}" for run in runs))
        say()
        say(f"{'config':<10} {'fwd im/s':>9} {'1-pass im/s':>12} {'e2e im/s':>9} {'e2e/fwd':>8} {'e2e/1-pass':>11} "
            f"{'busy':>6} {'e2e vs today':>13}")
        for config, w in runs:
            combined = combined_rate({k: med(fr[k] for fr in fwd_rounds[config]) for k in loaded})
            e2e_r = e2e_rounds[config, w]
            ratios = [e / combined_rate(fr) for e, fr in zip(e2e_r, fwd_rounds[config], strict=True)]
            pass_ratios = [e / p for e, p in zip(e2e_r, pass_rounds[config], strict=True)]
            today = e2e_rounds.get(("today", w))  # today's path with the same workers
            vs = f"{med(e2e_r) / med(today):.2f}x" if today else "-"
            say(f"{label[config, w]:<10} {combined:>9.3f} {med(pass_rounds[config]):>12.3f} {med(e2e_r):>9.3f} "
                f"{med(ratios):>8.3f} {med(pass_ratios):>11.3f} {med(busy_rounds[config, w]):>6.1%} {vs:>13}")
        say()
        say("goals: new e2e >= 2x today's; e2e / forward-only >= 0.85 (fwd: each model alone, 1 / sum 1/rate; "
            "1-pass: the models in turn on each batch); busy = models' share of the e2e wall time; wN: N decode "
            f"workers (the CLI's default here: {default_workers(settings)})")
        own, child = peak_rss_mib()
        mem = f"peak RSS: main process {own:,.0f} MiB, largest child (decode worker / Lite server) {child:,.0f} MiB"
        if device.startswith("cuda"):
            mem += f", GPU peak allocated {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB"
        say(mem)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        command = "python bench/index_throughput.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write(f"\n## {stamp}\n\n```\n{command}\n```\n\n```\n" + "\n".join(lines) + "\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
