"""What to index: a list of files under one root, each with its label when known (shared by every source).

The sources live beside this module: ``folder`` (any folder, found recursively by content, labels
from sub-folders or a CSV) and ``imagenet`` (the ImageNet-1k validation set in its two common layouts).
Both list files through ``listing``, the one entry policy (symlinks, special files, unreadable folders).

Subsetting is deterministic and happens in a fixed order: full listing (sorted) -> class filter ->
``limit`` -> ``shard``. So ``n`` shards of the same command together cover exactly what one worker
would, and a rerun selects the same files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embedsvc.core.errors import EmbedsvcError
from embedsvc.indexer.listing import EntryFailure
from embedsvc.paths import name_bytes, stored_rel_path
from embedsvc.store.rows import MAXLEN

# Extensions that make a file a candidate even when its content does not sniff as an image, so that a
# corrupt ``photo.jpg`` is reported as a failure instead of silently ignored.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)


class DatasetError(EmbedsvcError, ValueError):
    """The dataset cannot be listed as asked (no images, missing labels, bad shard spec...)."""

    code = "bad_dataset"
    http_status = 400


@dataclass(frozen=True)
class Item:
    # POSIX path relative to the source root, the name as on disk (bytes that are not UTF-8 are lone
    # surrogates, as os.walk gives them): the row's identity. ``stored`` is what rows and reports show.
    rel_path: str
    label_id: int = -1
    label_name: str = ""

    @property
    def stored(self) -> str:
        return stored_rel_path(self.rel_path)


@dataclass
class DatasetSource:
    root: Path
    kind: str  # "folder" | "imagenet-val"
    items: list[Item]
    # Every file the listing found before class/limit/shard subsetting: --prune only deletes rows whose
    # file is gone from here, never rows another shard (or a larger --limit) owns.
    all_rel_paths: frozenset[str] = field(default_factory=frozenset)
    # Folder labels in id order (id = position); None for ImageNet (ids fixed by timm) or unlabelled.
    label_names: list[str] | None = None
    shard: tuple[int, int] | None = None
    description: dict = field(default_factory=dict)
    # Entries the listing refused (special files, symlinks out of the root...): reported as failures.
    # With a shard, each one belongs to exactly one shard, so shards together report each once.
    refused: list[EntryFailure] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.all_rel_paths:
            self.all_rel_paths = frozenset(i.rel_path for i in self.items)


# --------------------------------------------------------------------------------------------- subsets
def parse_shard(shard: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"i/n"`` (0-based: worker i of n, 0 <= i < n) or ``(i, n)`` -> ``(i, n)``."""
    if shard is None or shard == "":
        return None
    if isinstance(shard, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if not match:
            raise DatasetError(f"--shard expects i/n with 0 <= i < n (e.g. 0/4), got {shard!r}")
        index, count = int(match.group(1)), int(match.group(2))
    else:
        index, count = (int(x) for x in shard)
    if count < 1 or not 0 <= index < count:
        raise DatasetError(f"--shard {index}/{count}: need n >= 1 and 0 <= i < n (shards are 0-based)")
    return index, count


def shard_of(rel_path: str, count: int) -> int:
    """Stable hash partition of the name's bytes: the same file lands in the same shard on every machine."""
    digest = hashlib.blake2b(name_bytes(rel_path), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def subset(items: list[Item], limit: int | None, shard: tuple[int, int] | None) -> list[Item]:
    """The ``limit`` first items, then this shard's share of them."""
    if limit is not None:
        if limit < 0:
            raise DatasetError(f"--limit must be >= 0, got {limit}")
        items = items[:limit]
    if shard is not None:
        index, count = shard
        items = [it for it in items if shard_of(it.rel_path, count) == index]
    return items


def shard_refused(refused: list[EntryFailure], shard: tuple[int, int] | None) -> list[EntryFailure]:
    """This shard's share of the refused entries (all of them without a shard)."""
    if shard is None:
        return list(refused)
    return [f for f in refused if shard_of(f.rel_path, shard[1]) == shard[0]]


def within_store_limits(items: list[Item]) -> tuple[list[Item], list[EntryFailure]]:
    """(items the store can keep, refusals): a stored path or label longer than its VARCHAR would fail the write.

    Non-UTF-8 bytes take four characters in the stored form, so a deep path of them can pass the limit
    that its raw bytes are far under; one such row would otherwise abort the writer and the whole run.
    """
    kept: list[Item] = []
    refused: list[EntryFailure] = []
    max_path, max_label = MAXLEN["rel_path"], MAXLEN["label_name"]
    for item in items:
        path_len, label_len = len(item.stored.encode()), len(item.label_name.encode())
        if path_len > max_path:
            detail = f"path is {path_len} bytes as stored; an index keeps at most {max_path}"
            refused.append(EntryFailure(item.rel_path, "name_too_long", detail))
        elif label_len > max_label:
            detail = f"label is {label_len} bytes; an index keeps at most {max_label}"
            refused.append(EntryFailure(item.rel_path, "label_too_long", detail))
        else:
            kept.append(item)
    return kept, refused
