"""Every bad-input kind gets a defined outcome: decoded correctly, or an error naming the file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedsvc.images import ImageDecodeError, decode_image, sniff_is_image
from tests.support import SAMPLE_PHOTOS


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _jpeg() -> bytes:
    return (SAMPLE_PHOTOS / "bird" / "erase_penguin.jpg").read_bytes()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, I am a text file pretending to be a jpeg\n" * 20, "not_an_image"),
        (_jpeg()[: len(_jpeg()) // 2], "truncated"),
        (_jpeg()[:200] + bytes(range(256)) * 8, "truncated"),
    ],
    ids=["zero-byte", "text", "truncated-half", "garbage-after-header"],
)
def test_bad_files_raise_an_error_naming_the_file(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, name="holiday/IMG_1.jpg")
    assert info.value.reason in {reason, "corrupt", "truncated"}
    if reason in ("empty", "not_an_image"):
        assert info.value.reason == reason
    assert "holiday/IMG_1.jpg" in str(info.value)


def test_unreadable_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="missing.png"):
        decode_image(tmp_path / "missing.png")


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = _encode(Image.new("1", (12_000, 12_000)), "PNG")  # 144 Mpx in a few hundred KB
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageDecodeError) as info:
        decode_image(bomb, name="bomb.png")
    assert info.value.reason == "too_many_pixels"
    assert "144,000,000" in str(info.value)
    with pytest.raises(ImageDecodeError, match="exceeds the limit of 100"):
        decode_image(_encode(Image.new("RGB", (20, 20)), "PNG"), max_pixels=100)


def test_cmyk_jpeg_decodes_to_matching_rgb() -> None:
    rgb = Image.new("RGB", (32, 32), (200, 40, 10))
    out = decode_image(_encode(rgb.convert("CMYK"), "JPEG", quality=95)).image
    assert out.mode == "RGB"
    assert np.abs(np.asarray(out, np.int16) - np.array([200, 40, 10])).max() < 12


def test_greyscale_palette_and_16bit_become_rgb() -> None:
    grey = decode_image(_encode(Image.new("L", (10, 8), 77), "PNG")).image
    assert grey.mode == "RGB" and grey.getpixel((0, 0)) == (77, 77, 77)
    pal = Image.new("RGB", (10, 8), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert decode_image(_encode(pal, "PNG")).image.getpixel((3, 3)) == (0, 128, 255)
    sixteen = Image.fromarray(np.full((8, 10), 65535 // 2, np.uint16))
    assert sixteen.mode.startswith("I;16")
    px = decode_image(_encode(sixteen, "PNG")).image.getpixel((0, 0))
    assert px == (127, 127, 127)  # 32767/65535 of full scale, not clipped to 255


def test_alpha_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (6, 6), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = decode_image(_encode(rgba, "PNG")).image
    assert out.getpixel((0, 0)) == (0, 0, 255)
    assert out.getpixel((5, 5)) == (255, 255, 255)  # transparent, not black or red
    pal = rgba.convert("P")
    assert decode_image(_encode(pal, "PNG", transparency=0)).image.mode == "RGB"


def test_exif_rotation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 20))  # white strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(_encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert (out.width, out.height) == (20, 40)
    top = np.asarray(out.image)[:5].mean()
    bottom = np.asarray(out.image)[-5:].mean()
    assert top > 200 > 50 > bottom  # the left strip is now on top


def test_real_photo_and_content_sniffing(tmp_path: Path) -> None:
    photo = SAMPLE_PHOTOS / "bird" / "erase_penguin.jpg"
    decoded = decode_image(photo)
    assert decoded.image.mode == "RGB" and decoded.source_format == "JPEG" and decoded.width > 100
    disguised = tmp_path / "no_extension"
    disguised.write_bytes(photo.read_bytes())
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    assert sniff_is_image(disguised) and not sniff_is_image(fake)
