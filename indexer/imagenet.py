"""The ImageNet-1k validation source: a flat folder of ``ILSVRC2012_val_*`` files plus labels, or one folder per synset.

Class ids are timm's (index into the sorted synset list, as every timm checkpoint's classifier uses),
never the devkit's own ids. Files are listed under the same entry policy as any folder (``listing``).
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embedsvc.indexer.datasets import (
    IMAGE_EXTENSIONS,
    DatasetError,
    DatasetSource,
    Item,
    parse_shard,
    shard_refused,
    subset,
)
from embedsvc.indexer.listing import EntryFailure, check_entry, list_files

log = logging.getLogger(__name__)

_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.(jpe?g|JPE?G|png|PNG)$")
_WNID = re.compile(r"^n\d{8}$")
LOC_VAL_SOLUTION = "LOC_val_solution.csv"
DEVKIT_DIRNAME = "ILSVRC2012_devkit_t12"
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"


@dataclass
class ImageNetClasses:
    """timm's ImageNet-1k label space: id = index in the sorted synset list, name = first lemma."""

    wnids: list[str]
    descriptions: list[str]
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {w: i for i, w in enumerate(self.wnids)}

    @classmethod
    def load(cls) -> ImageNetClasses:
        from timm.data import ImageNetInfo

        info = ImageNetInfo("imagenet-1k")
        wnids = list(info.label_names())
        return cls(wnids, [info.index_to_description(i) for i in range(len(wnids))])

    def id_of(self, wnid: str) -> int:
        try:
            return self._index[wnid]
        except KeyError:
            raise DatasetError(f"{wnid!r} is not an ImageNet-1k synset") from None

    def name_of(self, class_id: int) -> str:
        return self.descriptions[class_id].split(",", 1)[0].strip()


def read_loc_val_solution(path: Path) -> dict[str, str]:
    """Kaggle's ``LOC_val_solution.csv``: ImageId -> synset (first box's class; all boxes share it)."""
    out = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "ImageId" not in reader.fieldnames or "PredictionString" not in reader.fieldnames:
            raise DatasetError(f"{path}: expected columns ImageId,PredictionString")
        for row in reader:
            tokens = row["PredictionString"].split()
            if tokens:
                out[row["ImageId"].strip()] = tokens[0]
    return out


def parse_meta_mat(devkit_root: Path) -> dict[int, str]:
    """Devkit ``data/meta.mat``: ILSVRC2012_ID -> synset, for the 1000 leaf classes.

    Same reading as torchvision's ``parse_devkit_archive.parse_meta_mat`` (a nested function there,
    so it cannot be imported); fields read by name rather than position.
    """
    try:
        import scipy.io as sio
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DatasetError("reading the devkit's meta.mat needs scipy (pip install scipy)") from exc
    metafile = devkit_root / "data" / "meta.mat"
    if not metafile.is_file():
        raise DatasetError(f"devkit meta file not found: {metafile}")
    synsets = sio.loadmat(str(metafile), squeeze_me=True)["synsets"]
    out = {}
    for entry in synsets.ravel():
        if int(entry["num_children"]) == 0:
            out[int(entry["ILSVRC2012_ID"])] = str(entry["WNID"])
    return out


def read_devkit_ground_truth(devkit_root: Path) -> dict[str, str]:
    """Devkit ground truth: image name -> synset. Line k is ILSVRC2012_val_{k:08d}, its value a devkit id."""
    gt_file = devkit_root / "data" / DEVKIT_GROUND_TRUTH
    if not gt_file.is_file():
        raise DatasetError(f"devkit ground truth not found: {gt_file}")
    id_to_wnid = parse_meta_mat(devkit_root)
    out = {}
    for number, line in enumerate(gt_file.read_text().split(), start=1):
        devkit_id = int(line)
        if devkit_id not in id_to_wnid:
            raise DatasetError(f"{gt_file}: line {number} has devkit id {devkit_id}, not a leaf class in meta.mat")
        out[f"ILSVRC2012_val_{number:08d}"] = id_to_wnid[devkit_id]
    return out


def _devkit_root(path: Path) -> Path:
    """Accept the devkit folder, its ``data/`` folder, or the ground-truth file inside it."""
    path = path.expanduser().resolve()
    if path.is_file():
        path = path.parent
    if path.name == "data" and (path / "meta.mat").exists():
        path = path.parent
    return path


def _find_val_labels(root: Path) -> Path | None:
    for base in (root, root.parent):
        for candidate in (base / LOC_VAL_SOLUTION, base / DEVKIT_DIRNAME):
            if candidate.exists():
                return candidate
    return None


def _val_labels(labels: Path | None, devkit: Path | None, root: Path) -> dict[str, str]:
    """Image stem -> synset from whichever labels file was given (or found next to the images)."""
    if labels is None and devkit is None:
        found = _find_val_labels(root)
        if found is None:
            raise DatasetError(
                f"{root} holds ILSVRC2012_val_* files but no labels: pass --labels LOC_val_solution.csv "
                f"or --devkit {DEVKIT_DIRNAME}/ (or use the one-folder-per-synset layout)"
            )
        log.info("using ImageNet val labels from %s", found)
        if found.name == LOC_VAL_SOLUTION:
            labels = found
        else:
            devkit = found
    if labels is not None:
        labels = Path(labels).expanduser()
        if labels.name == DEVKIT_GROUND_TRUTH or labels.is_dir():
            return read_devkit_ground_truth(_devkit_root(labels))
        return read_loc_val_solution(labels)
    assert devkit is not None
    return read_devkit_ground_truth(_devkit_root(Path(devkit)))


def _parse_classes(classes: Sequence[str] | None, known: ImageNetClasses) -> set[int] | None:
    """Class subset: synsets (n01440764), timm class ids (0) or id ranges (0-9); comma lists allowed."""
    if not classes:
        return None
    wanted: set[int] = set()
    for token in (t.strip() for c in classes for t in str(c).split(",")):
        if not token:
            continue
        if _WNID.match(token):
            wanted.add(known.id_of(token))
        elif re.fullmatch(r"\d+", token):
            wanted.add(int(token))
        elif re.fullmatch(r"\d+-\d+", token):
            lo, hi = (int(x) for x in token.split("-"))
            wanted.update(range(lo, hi + 1))
        else:
            raise DatasetError(f"--classes: {token!r} is not a synset (n01440764), a class id or a range (0-9)")
    bad = [c for c in wanted if not 0 <= c < len(known.wnids)]
    if bad:
        raise DatasetError(f"--classes: ids out of range 0..{len(known.wnids) - 1}: {sorted(bad)[:5]}")
    return wanted


def imagenet_val_source(
    root: str | Path,
    *,
    labels: str | Path | None = None,
    devkit: str | Path | None = None,
    limit: int | None = None,
    classes: Sequence[str] | None = None,
    shard: str | Sequence[int] | None = None,
) -> DatasetSource:
    """ImageNet-1k val: a flat folder of ``ILSVRC2012_val_*.JPEG`` plus a labels file, or one folder per synset.

    Labels: ``LOC_val_solution.csv`` (synsets) or the devkit's ground truth (devkit ids, mapped to
    synsets through its ``meta.mat``), given explicitly or found in the folder or its parent.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    shard_t = parse_shard(shard)
    known = ImageNetClasses.load()
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and _WNID.match(p.name))
    pairs: list[tuple[str, str]] = []  # (rel_path, wnid)
    refused: list[EntryFailure] = []
    if subdirs:
        layout = "synset-folders"
        for sub in subdirs:
            known.id_of(sub.name)  # unknown synset folder: clear error
            files, sub_refused = list_files(root, sub)
            refused += sub_refused
            pairs += [(rp, sub.name) for rp in files if Path(rp).suffix.lower() in IMAGE_EXTENSIONS]
    else:
        layout = "flat"
        files = []
        for p in sorted(root.iterdir()):
            if not _VAL_NAME.match(p.name):
                continue
            problem = check_entry(root, p)
            if problem is None:
                files.append(p.name)
            else:
                refused.append(EntryFailure(p.name, *problem))
        if files:
            by_stem = _val_labels(Path(labels) if labels else None, Path(devkit) if devkit else None, root)
            unlabelled = [f for f in files if Path(f).stem not in by_stem]
            if unlabelled:
                raise DatasetError(f"{len(unlabelled)} val images have no label, e.g. {unlabelled[0]}")
            pairs = [(f, by_stem[Path(f).stem]) for f in files]
    if not pairs:
        raise DatasetError(
            f"no ImageNet val images under {root}: expected ILSVRC2012_val_*.JPEG files or n######## synset folders"
        )
    pairs.sort()
    items = [Item(rp, known.id_of(w), known.name_of(known.id_of(w))) for rp, w in pairs]
    wanted = _parse_classes(classes, known)
    if wanted is not None:
        items = [it for it in items if it.label_id in wanted]
    selected = subset(items, limit, shard_t)
    log.info("ImageNet val (%s) %s: %d images, %d selected", layout, root, len(pairs), len(selected))
    return DatasetSource(
        root=root,
        kind="imagenet-val",
        items=selected,
        all_rel_paths=frozenset(rp for rp, _ in pairs),
        label_names=None,
        shard=shard_t,
        description={"layout": layout, "label_space": "imagenet-1k (timm sorted synsets)"},
        refused=shard_refused(refused, shard_t),
    )
