"""Shared test helpers: fast, offline settings and tiny images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from embedsvc.core.config import Settings

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PHOTOS = REPO / "embedsvc" / "sample_photos"
# Small enough for CPU plumbing tests; real-resolution checks set their own input size.
TEST_INPUT_SIZE = 64


def make_settings(tmp_path: Path, **overrides) -> Settings:
    """Offline settings with seeded random weights, CPU, 64 px inputs and a private data dir."""
    values = {
        "data_dir": tmp_path / "data",
        "milvus_uri": "",
        "offline": True,
        "allow_random_weights": True,
        "device": "cpu",
        "input_size": TEST_INPUT_SIZE,
        "batch_size": 8,
    }
    values.update(overrides)
    return Settings(**values)


def png_bytes(seed: int = 0, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> bytes:
    """A small random image whose content (hence hash and embedding) depends on the seed."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def write_images(folder: Path, count: int, *, start_seed: int = 0, subdirs: list[str] | None = None) -> list[Path]:
    """Write `count` random PNGs, round-robin into `subdirs` (labels) when given."""
    paths = []
    for i in range(count):
        sub = folder / subdirs[i % len(subdirs)] if subdirs else folder
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img_{i:03d}.png"
        path.write_bytes(png_bytes(start_seed + i))
        paths.append(path)
    return paths
