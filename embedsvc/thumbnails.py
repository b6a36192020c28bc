"""Thumbnails produced once per (image content, size) and cached on disk under data_dir/thumbnails.

Keyed by the row's content hash when there is one, so the same photo in two indexes is thumbnailed
once and an image whose content changed gets a fresh thumbnail. Writes are atomic (temp file +
rename): concurrent requests for the same thumbnail at worst both render it, never a torn file.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from PIL import Image

from embedsvc.images import decode_image
from embedsvc.store.errors import disk_full_as_error

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


class ThumbnailCache:
    def __init__(self, root: Path, *, max_pixels: int, quality: int = 85) -> None:
        self.root = Path(root)
        self.max_pixels = max_pixels
        self.quality = quality

    def cache_path(self, *, size: int, content_hash: str | None, index: str, row_id: int) -> Path:
        """Where one thumbnail lives; every component is sanitised, never a raw request string."""
        if content_hash:
            key = _SAFE.sub("", content_hash)[:128]
            return self.root / str(int(size)) / key[:2] / f"{key}.jpg"
        safe_index = _SAFE.sub("_", index)[:64]
        return self.root / str(int(size)) / "by-id" / safe_index / f"{int(row_id)}.jpg"

    def get(self, source: Path, *, size: int, content_hash: str | None, index: str, row_id: int) -> Path:
        """Path of the cached JPEG thumbnail (longest side ``size``), rendering it on first use.

        Raises ImageDecodeError when the source cannot be decoded, OSError when it cannot be read, and
        DiskFullError (507) when the cache cannot be written for lack of space.
        """
        target = self.cache_path(size=size, content_hash=content_hash, index=index, row_id=row_id)
        if target.is_file():
            return target
        decoded = decode_image(source, name=source.name, max_pixels=self.max_pixels)
        image = decoded.image.copy()
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        with disk_full_as_error(self.root, "writing a thumbnail"):  # not "cannot be decoded": say the disk is full
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".jpg")
            try:
                with os.fdopen(fd, "wb") as fh:
                    image.save(fh, "JPEG", quality=self.quality, optimize=True)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        log.debug("thumbnail %s -> %s", source, target)
        return target
