"""Feed rate of one decode worker: today's exact path against the fast path, on ImageNet-like and 12 MP JPEGs.

One process, one torch thread, the three default models' preprocessing, per image, timed in process CPU
seconds (what one worker core spends; robust to other processes sharing the machine):

- exact (today's path): full decode (``decode_image``), then each model's timm transform on the PIL image;
- fast, models on a GPU: reduced-size decode (``decode_image(min_short_side=...)``, JPEG DCT scaling bounded
  at ``DECODE_FACTOR`` x the largest resize side) and one uint8 CHW tensor: all a decode worker does there,
  since each model's resize/crop/normalise runs on its device (``indexer/embedder.py`` hands the GPU
  models no worker transform). This is the row the goals are about: the feed of a GPU machine.
- fast, models on the CPU: the same, plus each model's tensor resize/crop/normalise in the worker
  (``FastEvalTransform`` on the CPU), as a CPU-only indexer runs it.

The JPEGs are made from the bundled sample photos resized up (500x375, and 4000x3000 = 12 MP). The two
paths alternate over ``--rounds`` on the same files so both see the same machine load; medians are
reported. Goals (GPU feed): fast >= 4x exact on ImageNet-like images, >= 15x on 12 MP photos.

    python bench/feed_rate.py --results bench/results/feed_rate-cpu.md
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import timm
import torch
from PIL import Image
from timm.data import resolve_data_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import embedsvc.models  # noqa: E402,F401  (registers GResNet with timm)
from embedsvc.images import decode_image  # noqa: E402
from embedsvc.models import transforms  # noqa: E402
from embedsvc.models.registry import list_specs  # noqa: E402

SAMPLE_PHOTOS = REPO / "embedsvc" / "sample_photos"
SIZES = {"ImageNet-like 500x375": ((500, 375), 4.0), "12 MP 4000x3000": ((4000, 3000), 15.0)}


def make_jpegs(count: int, size: tuple[int, int]) -> list[bytes]:
    """``count`` JPEG files (bytes, quality 90) of ``size``, each a real sample photo resized up and cropped."""
    photos = sorted(SAMPLE_PHOTOS.glob("*/*.jpg"))
    out = []
    for i in range(count):
        img = decode_image(photos[i % len(photos)]).image
        scale = max(size[0] / img.width, size[1] / img.height)
        img = img.resize((max(size[0], round(img.width * scale)), max(size[1], round(img.height * scale))),
                         Image.Resampling.BICUBIC)
        left, top = (img.width - size[0]) // 2, (img.height - size[1]) // 2
        buf = io.BytesIO()
        img.crop((left, top, left + size[0], top + size[1])).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def time_per_image(files: list[bytes], step: Callable[[bytes], object]) -> float:
    """CPU seconds per image of ``step`` over ``files`` (one untimed warm-up call first).

    Process CPU time, not wall time: with one thread it is what one worker core spends per image, and
    it does not count the time other processes on a shared machine hold the core.
    """
    step(files[0])
    start = time.process_time()
    for data in files:
        step(data)
    return (time.process_time() - start) / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16, help="JPEGs per size (the 12 MP ones take ~0.25 s each).")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds of both paths; medians reported.")
    parser.add_argument("--results", type=Path, default=None, help="Append a section to this Markdown file.")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one decode worker = one process, one thread (DataLoader workers run so)
    specs = list_specs(default_only=True)
    configs = [resolve_data_config({}, pretrained_cfg=timm.get_pretrained_cfg(s.model_name).to_dict()) for s in specs]
    exact = [transforms.eval_transform(c) for c in configs]
    fast = [transforms.fast_transform(c) for c in configs]
    bound = transforms.decode_short_side(configs)
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    def exact_decode(data: bytes) -> object:
        return decode_image(data).image

    def exact_path(data: bytes) -> object:
        image = decode_image(data).image
        return [t(image) for t in exact]

    def fast_decode(data: bytes) -> object:
        return transforms.to_uint8_tensor(decode_image(data, min_short_side=bound).image)

    def fast_path(data: bytes) -> object:
        shared = transforms.to_uint8_tensor(decode_image(data, min_short_side=bound).image)
        return [t([shared]) for t in fast]

    models = ", ".join(
        f"{spec.key} ({c['interpolation']}, resize {transforms.resize_side(c)})"
        for spec, c in zip(specs, configs, strict=True)
    )
    say(f"torch {torch.__version__}, 1 thread, {os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.1f}; models: "
        + models + f"; fast decode bound {bound} px ({transforms.DECODE_FACTOR}x the largest resize side)")
    table = ["| images | exact worker: decode + 3 PIL transforms | fast worker, GPU models: decode + uint8 | "
             "exact im/s | fast im/s (GPU models) | ratio (median, rounds) | goal | fast worker, CPU models: "
             "+ 3 tensor transforms | fast im/s (CPU models) | ratio (median) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, (size, goal) in SIZES.items():
        files = make_jpegs(args.images, size)
        decoded = decode_image(files[0], min_short_side=bound).image.size
        rounds: dict[str, list[float]] = {k: [] for k in ("exact", "exact_decode", "fast", "fast_decode")}
        for r in range(args.rounds):
            rounds["exact_decode"].append(time_per_image(files, exact_decode))
            rounds["exact"].append(time_per_image(files, exact_path))
            rounds["fast_decode"].append(time_per_image(files, fast_decode))
            rounds["fast"].append(time_per_image(files, fast_path))
            exact_s, gpu_s, cpu_s = rounds["exact"][-1], rounds["fast_decode"][-1], rounds["fast"][-1]
            say(f"{label} round {r + 1}: exact {1 / exact_s:.1f} im/s, fast worker for GPU models "
                f"{1 / gpu_s:.1f} im/s (ratio {exact_s / gpu_s:.2f}), "
                f"for CPU models {1 / cpu_s:.1f} im/s (ratio {exact_s / cpu_s:.2f})")
        med = {k: statistics.median(v) * 1000 for k, v in rounds.items()}
        gpu_ratios = [e / f for e, f in zip(rounds["exact"], rounds["fast_decode"], strict=True)]
        cpu_ratio = statistics.median(e / f for e, f in zip(rounds["exact"], rounds["fast"], strict=True))
        ratio = statistics.median(gpu_ratios)
        say(f"{label}: fast decode {size[0]}x{size[1]} -> {decoded[0]}x{decoded[1]}")
        table.append(
            f"| {label} | {med['exact_decode']:.1f} + {med['exact'] - med['exact_decode']:.1f} ms | "
            f"{med['fast_decode']:.1f} ms | {1000 / med['exact']:.1f} | {1000 / med['fast_decode']:.1f} | "
            f"**{ratio:.1f}x** ({', '.join(f'{x:.1f}' for x in gpu_ratios)}) | "
            f">= {goal:g}x: {'met' if ratio >= goal else 'MISSED'} | "
            f"{med['fast_decode']:.1f} + {med['fast'] - med['fast_decode']:.1f} ms | {1000 / med['fast']:.1f} | "
            f"{cpu_ratio:.1f}x |"
        )
    say("")
    for row in table:
        say(row)
    if args.results is not None:
        command = "python " + shlex.join(["bench/feed_rate.py", *sys.argv[1:]])
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        new = not args.results.exists()
        with args.results.open("a") as fh:
            if new:
                fh.write("# Feed rate of one decode worker (`bench/feed_rate.py`)\n\n"
                         "Images/s of one process on one thread (process CPU time per image): today's exact path "
                         "(full decode, three timm PIL transforms) against the fast path (reduced JPEG decode, "
                         "one uint8 tensor, three tensor preprocesses), alternating rounds on the same files.\n")
            body = "\n".join(lines[: len(lines) - len(table)])
            fh.write(f"\n## {stamp}\n\n```\n{command}\n```\n\n```\n{body}\n```\n\n" + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
