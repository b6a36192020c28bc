"""Decode untrusted image files into RGB once, with a defined outcome for every bad input.

Every failure is an :class:`ImageDecodeError` naming the file and the reason; nothing here returns a
half-decoded image that would become a silent garbage embedding.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Iterator
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
    image: Image.Image  # RGB, EXIF orientation applied; smaller than width x height after a reduced decode
    width: int  # the file's full upright size (what rows and queries report), whatever size was decoded
    height: int
    source_format: str

    @property
    def reduced(self) -> bool:
        """True when the decode kept fewer pixels than the file has (``decode_image(min_short_side=...)``)."""
        return self.image.size != (self.width, self.height)


# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse)
_SWAPS_AXES = frozenset({5, 6, 7, 8})


def _reduce_factor(size: tuple[int, int], min_short_side: int) -> int:
    """The largest integer factor that keeps the short side >= ``min_short_side`` (1: keep the full size)."""
    return max(1, min(size) // max(1, min_short_side))


def _reduced_decode(img: Image.Image, min_short_side: int) -> None:
    """Ask a JPEG to decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), short side >= ``min_short_side``.

    Pillow's ``draft`` picks the largest scale that keeps both sides >= the requested size, so asking for
    the image's own aspect ratio at ``min_short_side`` bounds the short side. Other formats decode in full.
    """
    if img.format != "JPEG" or _reduce_factor(img.size, min_short_side) < 2:
        return
    width, height = img.size
    short = min(width, height)
    img.draft("RGB", (math.ceil(width * min_short_side / short), math.ceil(height * min_short_side / short)))


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


@contextlib.contextmanager
def _decode_errors(name: str) -> Iterator[None]:
    """Pillow's and the codecs' exceptions as the :class:`ImageDecodeError` reasons every caller reports."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; we enforce our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
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


def _open_checked(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open ``data`` (header only) and apply the limits: empty, format, pixel count; the first frame."""
    if len(data) == 0:
        raise ImageDecodeError(name, "empty", "zero-byte file, not an image")
    img = Image.open(io.BytesIO(data))
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
    return img


def _upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """The file's size once its EXIF ``orientation`` is applied (5-8 swap the axes)."""
    return (height, width) if orientation in _SWAPS_AXES else (width, height)


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 where there is none or the EXIF block is malformed."""
    try:
        value = int(img.getexif().get(0x0112) or 1)
    except Exception:  # a malformed EXIF block must not lose an otherwise good image
        return 1
    return value if 1 <= value <= 8 else 1


@dataclass(frozen=True)
class ImageProbe:
    """What a file's header says, without decoding its pixels: enough to hand a JPEG to another decoder."""

    source_format: str
    mode: str
    width: int  # upright (EXIF orientation applied), as ``DecodedImage`` reports it
    height: int
    orientation: int  # EXIF 1-8: what a decoder that ignores EXIF must still apply
    complete: bool  # the data ends with the JPEG end-of-image marker (a truncated file does not)

    @property
    def plain_jpeg(self) -> bool:
        """A whole baseline-style JPEG in RGB/YCbCr or grey: what GPU decoders (nvJPEG) take as is.
        Anything else (CMYK, truncated, trailing data) is left to :func:`decode_image`."""
        return self.source_format == "JPEG" and self.mode in ("RGB", "L") and self.complete


def probe_image(data: bytes, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageProbe:
    """The header checks of :func:`decode_image` (empty, format, pixel limit), without decoding."""
    name = name or "<upload>"
    with _decode_errors(name):
        img = _open_checked(data, name, max_pixels)
    orientation = _orientation(img)
    full_w, full_h = _upright_size(*img.size, orientation)
    return ImageProbe(
        source_format=img.format or "unknown", mode=img.mode, width=full_w, height=full_h, orientation=orientation,
        complete=data.endswith(b"\xff\xd9"),
    )


def decode_image(
    data: bytes | Path | str,
    *,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_short_side: int | None = None,
) -> DecodedImage:
    """Decode bytes or a file into an upright RGB image.

    ``min_short_side`` (the fast preprocessing path): where the file is at least twice that on its short
    side, decode at reduced size, never below it: JPEGs through DCT scaling (``draft``, 1/2-1/8, no full
    decode), other formats by an integer box reduction after decoding. The pixel limit applies to the
    file's full size either way. ``None``: the full image (the exact path).

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
    with _decode_errors(name):
        img = _open_checked(data, name, max_pixels)
        fmt = img.format or "unknown"
        width, height = img.size
        if min_short_side:
            _reduced_decode(img, min_short_side)
        img.load()
    orientation = _orientation(img)
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception:  # a malformed EXIF block must not lose an otherwise good image
        orientation, upright = 1, img
    rgb = _to_rgb(upright)
    if min_short_side and _reduce_factor(rgb.size, min_short_side) >= 2:  # formats without DCT scaling
        rgb = rgb.reduce(_reduce_factor(rgb.size, min_short_side))
    full_w, full_h = _upright_size(width, height, orientation)
    return DecodedImage(image=rgb, width=full_w, height=full_h, source_format=fmt)


def sniff_is_image(path: Path) -> bool:
    """True when the file's content (not its extension) is an image format Pillow knows."""
    try:
        with Image.open(path) as img:
            return bool(img.format)
    except Exception:
        return False
