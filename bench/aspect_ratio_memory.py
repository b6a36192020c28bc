"""Peak memory of preprocessing one extreme-aspect-ratio image: timm's exact transform vs embedsvc's bounded one.

Each measurement runs in a fresh subprocess (Pillow's buffers are invisible to tracemalloc) and reports the
growth of peak RSS (``resource.getrusage(...).ru_maxrss``) over the same process after imports and a warm-up
on an ordinary image. Default: a 20000x1 PNG through GResNet-50's data config (bilinear, 232 -> 224).

    .venv/bin/python bench/aspect_ratio_memory.py [--width 20000] [--height 1] [--model gresnet50.fl_in1k]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import io, json, resource, sys, time
import numpy as np
import timm
from PIL import Image
from timm.data import create_transform, resolve_data_config
import embedsvc.models  # noqa: F401
from embedsvc.images import decode_image
from embedsvc.models.transforms import eval_transform

mode, model_name, width, height = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
config = resolve_data_config({}, pretrained_cfg=timm.get_pretrained_cfg(model_name).to_dict())
transform = create_transform(**config, is_training=False) if mode == "exact" else eval_transform(config)
transform(Image.new("RGB", (640, 480), (90, 120, 30)))  # warm-up: allocator pools, lazy imports
arr = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
buf = io.BytesIO()
Image.fromarray(arr, "RGB").save(buf, "PNG")
image = decode_image(buf.getvalue()).image
del arr
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
out = transform(image)
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kib": after - before, "peak_kib": after, "seconds": seconds, "shape": list(out.shape)}))
"""


def measure(mode: str, model: str, width: int, height: int) -> dict:
    """Run one transform in a fresh interpreter and return its JSON report."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, model, str(width), str(height)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=20000)
    parser.add_argument("--height", type=int, default=1)
    parser.add_argument("--model", default="gresnet50.fl_in1k", help="timm name whose data config is used")
    args = parser.parse_args()
    results = {mode: measure(mode, args.model, args.width, args.height) for mode in ("exact", "bounded")}
    print(f"{args.width}x{args.height} image, {args.model} data config")
    for mode, r in results.items():
        if "error" in r:
            print(f"  {mode:8s} failed: {r['error']}")
            continue
        print(
            f"  {mode:8s} peak RSS growth {r['growth_kib'] / 1024:9.1f} MiB  (peak {r['peak_kib'] / 1024:7.1f} MiB)"
            f"  {r['seconds'] * 1000:8.1f} ms  output {tuple(r['shape'])}"
        )
    exact, bounded = results["exact"], results["bounded"]
    if "error" not in exact and "error" not in bounded:
        floor_kib = 1024  # ru_maxrss moves in pages and allocator chunks: below 1 MiB is "no measurable growth"
        growth = max(bounded["growth_kib"], floor_kib)
        bound = ">=" if bounded["growth_kib"] < floor_kib else ""
        print(
            f"  ratio exact/bounded: RSS growth {bound}{exact['growth_kib'] / growth:.0f}x, "
            f"time {exact['seconds'] / max(bounded['seconds'], 1e-9):.0f}x"
        )


if __name__ == "__main__":
    main()
