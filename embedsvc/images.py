"""Decode untrusted image files into RGB once, with a defined outcome for every bad input.

Every failure is an :class:`ImageDecodeError` naming the file and the reason; nothing here returns a
half-decoded image that would become a silent garbage embedding.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from embedsvc.core.errors import EmbedsvcError

DEFAULT_MAX_PIXELS = 64_000_000


class ImageDecodeError(EmbedsvcError, ValueError):
    """A file that cannot become an RGB image; ``reason`` is a short machine-readable tag.

    The reason picks the error's ``code`` and ``http_status`` (``BY_REASON``), so every caller that
    reports a bad image (the API, the indexer's failures report) agrees on them.
    """

    code = "bad_image"
    # reason -> (HTTP status, error code)
    BY_REASON: ClassVar[dict[str, tuple[int, str]]] = {
        "empty": (400, "empty_image"),
        "not_an_image": (415, "not_an_image"),
        "too_many_pixels": (413, "too_many_pixels"),
        "too_large": (413, "too_large"),
        "truncated": (400, "truncated_image"),
        "corrupt": (400, "corrupt_image"),
        "unreadable": (400, "unreadable_image"),
    }

    def __init__(self, name: str, reason: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.reason = reason
        self.detail = detail
        self.http_status, self.code = self.BY_REASON.get(reason, (400, "bad_image"))  # type: ignore[misc]


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, EXIF orientation applied
    width: int
    height: int
    source_format: str


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; alpha is composited on white, 16-bit greys are rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr8 = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr8 = ((arr - lo) / (hi - lo or 1.0) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(
    data: bytes | Path | str, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> DecodedImage:
    """Decode bytes or a file into an upright RGB image.

    Raises :class:`ImageDecodeError` with reason ``empty``, ``not_an_image``, ``too_many_pixels``,
    ``truncated`` or ``corrupt``.
    """
    if isinstance(data, str | Path):
        path = Path(data)
        name = name or str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageDecodeError(name, "unreadable", f"cannot read file ({exc.strerror or exc})") from exc
    name = name or "<upload>"
    if len(data) == 0:
        raise ImageDecodeError(name, "empty", "zero-byte file, not an image")
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; we enforce our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    name,
                    "too_many_pixels",
                    f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
                    "(decompression bomb protection)",
                )
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(name, "not_an_image", "not a recognised image format") from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(name, "too_many_pixels", f"decompression bomb refused ({exc})") from exc
    except OSError as exc:
        msg = str(exc)
        reason = "truncated" if "truncated" in msg.lower() or "premature" in msg.lower() else "corrupt"
        raise ImageDecodeError(name, reason, f"cannot decode image data ({msg})") from exc
    except (ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(name, "corrupt", f"cannot decode image data ({exc})") from exc
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block must not lose an otherwise good image
        upright = img
    rgb = _to_rgb(upright)
    return DecodedImage(image=rgb, width=rgb.width, height=rgb.height, source_format=fmt)


def sniff_is_image(path: Path) -> bool:
    """True when the file's content (not its extension) is an image format Pillow knows."""
    try:
        with Image.open(path) as img:
            return bool(img.format)
    except Exception:
        return False
