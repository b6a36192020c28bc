"""A tiny fake ImageNet val set in both layouts, with LOC_val_solution.csv and a devkit (meta.mat)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.support import png_bytes

# Three real ImageNet-1k synsets; timm ids are their positions in the sorted synset list.
WNIDS = {"n01440764": 0, "n01443537": 1, "n01484850": 2}
# The devkit numbers classes differently from timm's sorted order: a wrong mapping shows up at once.
DEVKIT_IDS = {"n01484850": 1, "n01440764": 2, "n01443537": 3}
# Image k (1-based) -> synset. Two images per class, interleaved.
VAL_WNIDS = ["n01440764", "n01484850", "n01443537", "n01484850", "n01440764", "n01443537"]


def val_name(k: int) -> str:
    return f"ILSVRC2012_val_{k:08d}.JPEG"


def write_flat_val(root: Path) -> Path:
    """Flat ILSVRC2012_val_*.JPEG files (PNG content: the indexer goes by content) plus a stray file."""
    root.mkdir(parents=True, exist_ok=True)
    for k in range(1, len(VAL_WNIDS) + 1):
        (root / val_name(k)).write_bytes(png_bytes(100 + k))
    (root / "README.txt").write_text("not part of the set")
    return root


def write_loc_val_solution(path: Path) -> Path:
    lines = ["ImageId,PredictionString"]
    for k, wnid in enumerate(VAL_WNIDS, start=1):
        lines.append(f"ILSVRC2012_val_{k:08d},{wnid} 1 2 30 40 {wnid} 5 6 20 30 ")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_devkit(devkit: Path) -> Path:
    """``ILSVRC2012_devkit_t12/data/{meta.mat, ILSVRC2012_validation_ground_truth.txt}``, devkit layout."""
    from scipy.io import savemat

    data = devkit / "data"
    data.mkdir(parents=True, exist_ok=True)
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    entries = [(i, w, f"words of {w}", "gloss", 0, np.zeros((1, 0)), 0, 1300) for w, i in DEVKIT_IDS.items()]
    # A non-leaf synset (as in the real file, ids > 1000): must be ignored by the mapping.
    entries.append((1001, "n01440000", "fish group", "gloss", 2, np.array([[2, 3]]), 1, 0))
    synsets = np.zeros((len(entries), 1), dtype=[(f, object) for f in fields])
    for row, entry in enumerate(entries):
        for f, value in zip(fields, entry, strict=True):
            synsets[row, 0][f] = value
    savemat(str(data / "meta.mat"), {"synsets": synsets})
    gt = "\n".join(str(DEVKIT_IDS[w]) for w in VAL_WNIDS) + "\n"
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text(gt)
    return devkit


def write_synset_folders(root: Path) -> Path:
    for k, wnid in enumerate(VAL_WNIDS, start=1):
        (root / wnid).mkdir(parents=True, exist_ok=True)
        (root / wnid / val_name(k)).write_bytes(png_bytes(100 + k))
    return root
