"""The folder source: every image under a root (recursive, by content), labelled from first-level folders or a CSV."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

from embedsvc.images import sniff_is_image
from embedsvc.indexer.datasets import (
    IMAGE_EXTENSIONS,
    DatasetError,
    DatasetSource,
    Item,
    parse_shard,
    shard_refused,
    subset,
    within_store_limits,
)
from embedsvc.indexer.listing import EntryFailure, list_files
from embedsvc.paths import stored_rel_path

log = logging.getLogger(__name__)


def discover_images(root: Path) -> tuple[list[str], list[EntryFailure]]:
    """(rel paths of every image under root, refused entries): by content; image-named files kept even if broken.

    Refused entries are listed whatever their name: a FIFO or a link out of the root is never opened to
    find out whether it is an image.
    """
    files, refused = list_files(root)
    found = [rp for rp in files if Path(rp).suffix.lower() in IMAGE_EXTENSIONS or sniff_is_image(root / rp)]
    return found, refused


def _read_labels_csv(path: Path) -> dict[str, str]:
    """``path,label`` rows (a header naming ``path`` and ``label`` is optional; extra columns ignored)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if not rows:
        raise DatasetError(f"labels CSV {path} is empty")
    header = [c.strip().lower() for c in rows[0]]
    if "path" in header and "label" in header:
        p, lab = header.index("path"), header.index("label")
        rows = rows[1:]
    else:
        p, lab = 0, 1
    out = {}
    for row in rows:
        if len(row) <= max(p, lab):
            raise DatasetError(f"labels CSV {path}: row {row!r} has no label column")
        out[Path(row[p].strip()).as_posix().removeprefix("./")] = row[lab].strip()
    return out


def folder_source(
    root: str | Path,
    *,
    labels_from_dirs: bool = False,
    labels_csv: str | Path | None = None,
    limit: int | None = None,
    shard: str | Sequence[int] | None = None,
) -> DatasetSource:
    """Every image under ``root`` (recursive, by content), labelled from first-level folders or a CSV.

    Label ids are positions in the sorted list of all label names in the whole listing (before
    limit/shard), so every shard and every rerun agrees on them. A labels CSV names files in their
    stored form (``embedsvc.paths``), the form the failures report and the API show.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    if labels_from_dirs and labels_csv:
        raise DatasetError("use either --labels-from-dirs or --labels-csv, not both")
    shard_t = parse_shard(shard)
    rel_paths, refused = discover_images(root)
    top = [f for f in refused if f.rel_path == "."]
    if top:
        raise DatasetError(f"cannot list {root}: {top[0].detail}")
    if not rel_paths and not refused:
        raise DatasetError(f"no images found under {root}")
    names: dict[str, str] = {}
    if labels_from_dirs:
        names = {rp: stored_rel_path(rp.split("/", 1)[0]) for rp in rel_paths if "/" in rp}
    elif labels_csv:
        by_path = _read_labels_csv(Path(labels_csv))
        names = {rp: by_path[stored_rel_path(rp)] for rp in rel_paths if by_path.get(stored_rel_path(rp))}
        missing = len(rel_paths) - len(names)
        if missing:
            log.warning("%d of %d images have no label in %s", missing, len(rel_paths), labels_csv)
    label_names = sorted(set(names.values())) if (labels_from_dirs or labels_csv) else None
    ids = {name: i for i, name in enumerate(label_names or [])}
    items = [Item(rp, ids[names[rp]], names[rp]) if rp in names else Item(rp) for rp in rel_paths]
    items, too_long = within_store_limits(items)
    refused = sorted(refused + too_long, key=lambda f: f.rel_path)
    selected = subset(items, limit, shard_t)
    log.info("folder %s: %d images found, %d selected, %d entries refused", root, len(items), len(selected),
             len(refused))
    return DatasetSource(
        root=root,
        kind="folder",
        items=selected,
        all_rel_paths=frozenset(rel_paths),
        label_names=label_names,
        shard=shard_t,
        description={"labels": "dirs" if labels_from_dirs else (str(labels_csv) if labels_csv else "none")},
        refused=shard_refused(refused, shard_t),
    )
