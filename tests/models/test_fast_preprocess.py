"""The fast preprocessing path: reduced-size decode, one uint8 tensor, tensor resize/crop/normalise per model.

Fidelity against timm's exact path with the real Lite0 weights, the decode bound, EXIF, extreme aspect
ratios and non-JPEG inputs, all on small inputs.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import resolve_data_config

import embedsvc.models  # noqa: F401  (registers gresnet50 with timm)
from embedsvc.embedder import Embedder, load_embedder
from embedsvc.images import decode_image
from embedsvc.models import transforms
from tests.support import SAMPLE_PHOTOS, make_settings

GCOMPRIS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "gcompris-photos"
CONFIG_MODELS = {"bilinear": "gresnet50.fl_in1k", "bicubic": "convnext_tiny.fb_in1k"}


def _config(model_name: str, size: int | None = None) -> dict[str, Any]:
    config = resolve_data_config({}, pretrained_cfg=timm.get_pretrained_cfg(model_name).to_dict())
    if size is not None:
        config["input_size"] = (3, size, size)
    return config


def _jpeg(image: Image.Image, **save: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92, **save)
    return buf.getvalue()


def _photo(size: tuple[int, int]) -> Image.Image:
    """A real sample photo resampled to ``size``."""
    return decode_image(SAMPLE_PHOTOS / "mammal" / "erase_cheetah.jpg").image.resize(size, Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    """EfficientNet-Lite0 with its real packaged weights, 96 px, fp32 (bf16 would blur the comparison)."""
    settings = make_settings(tmp_path_factory.mktemp("lite0"), input_size=96, allow_random_weights=False)
    emb = load_embedder("efficientnet_lite0", settings=settings, precision="fp32")
    assert not emb.untrained
    return emb


def test_fast_vectors_match_exact_on_real_photos(lite0: Embedder) -> None:
    """Real photos, some large enough that the fast path decodes them reduced: cosine to the exact path."""
    big = [p for p in sorted(GCOMPRIS.glob("*/*.jpg")) if min(Image.open(p).size) >= 1000][:6]
    small = sorted(SAMPLE_PHOTOS.glob("*/*.jpg"))[:6]
    assert len(big) == 6, "the GCompris photos (../shared/datasets) are part of the test data"
    bound = lite0.decode_short_side
    fast_in = [decode_image(p, min_short_side=bound) for p in big + small]
    assert sum(d.reduced for d in fast_in) == 6  # the large ones really took the reduced decode
    fast = lite0.embed(torch.stack([lite0.preprocess(d.image, "fast") for d in fast_in]))
    exact = lite0.embed(torch.stack([lite0.preprocess(decode_image(p).image, "exact") for p in big + small]))
    cosine = (fast * exact).sum(1)
    assert cosine[6:].min() >= 0.9999, cosine  # full-size decodes: only the resize's rounding differs
    assert cosine.min() >= 0.995 and np.median(cosine) >= 0.999, cosine  # 96 px: ~2x final resize, the hard case


@pytest.mark.parametrize("interpolation", sorted(CONFIG_MODELS))
@pytest.mark.parametrize("size", [(640, 480), (37, 29), (224, 224), (860, 260), (260, 860), (3000, 2000)])
def test_tensor_preprocess_matches_timm_within_rounding(interpolation: str, size: tuple[int, int]) -> None:
    config = _config(CONFIG_MODELS[interpolation])
    image = _photo(size)
    exact = transforms.eval_transform(config)(image)
    fast = transforms.fast_transform(config)([transforms.to_uint8_tensor(image)])[0]
    assert fast.shape == exact.shape == (3, 224, 224) and fast.dtype == torch.float32
    one_level = 1 / 255 / min(config["std"])
    assert float((fast - exact).abs().max()) <= 2.01 * one_level  # Pillow vs torch antialiasing: <= 2 levels
    assert float((fast - exact).abs().mean()) <= 0.25 * one_level  # most pixels identical


def test_images_of_one_size_are_batched_and_order_kept() -> None:
    config = _config("convnext_tiny.fb_in1k", 64)
    fast = transforms.fast_transform(config)
    images = [transforms.to_uint8_tensor(_photo(s)) for s in [(120, 90), (90, 120), (120, 90), (300, 40)]]
    batched = fast(images)
    one_by_one = torch.stack([fast([im])[0] for im in images])
    assert batched.shape == (4, 3, 64, 64) and torch.equal(batched, one_by_one)


def test_decode_bound_is_respected_and_small_images_untouched() -> None:
    photo = _photo((4000, 3000))
    data = _jpeg(photo)
    for bound in (146, 256, 512, 1000, 1499):
        decoded = decode_image(data, min_short_side=bound)
        short = min(decoded.image.size)
        assert short >= bound, (bound, decoded.image.size)
        assert short < 2 * bound or short == 3000 // 8 or not decoded.reduced  # the largest allowed scale
        assert (decoded.width, decoded.height) == (4000, 3000)  # rows report the file's size, not the decode's
        assert decoded.reduced == (3000 // bound >= 2)
    for size in [(500, 291), (291, 1000), (40, 30)]:  # short side < 2x the bound: decoded in full, bit for bit
        data = _jpeg(_photo(size))
        decoded = decode_image(data, min_short_side=146)
        assert not decoded.reduced and decoded.image.size == size
        assert np.array_equal(np.asarray(decoded.image), np.asarray(decode_image(data).image))


def test_model_bound_is_two_and_a_half_times_the_largest_resize_side() -> None:
    configs = [_config("convnext_tiny.fb_in1k"), _config("deit3_small_patch16_224.fb_in1k")]
    assert [transforms.resize_side(c) for c in configs] == [256, 248]  # 224 / 0.875, 224 / 0.9
    assert transforms.decode_short_side(configs) == 640 == transforms.DECODE_FACTOR * 256


def test_exif_rotation_still_applied_on_the_reduced_decode() -> None:
    """Orientation 6 (rotate 90 CW on display): left half red, right half blue becomes top red, bottom blue."""
    arr = np.zeros((3000, 4000, 3), np.uint8)
    arr[:, :2000] = (220, 20, 20)
    arr[:, 2000:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _jpeg(Image.fromarray(arr), exif=exif)
    full, reduced = decode_image(data), decode_image(data, min_short_side=300)
    assert reduced.reduced and (reduced.width, reduced.height) == (full.width, full.height) == (3000, 4000)
    w, h = reduced.image.size
    assert h > w and min(w, h) >= 300
    top, bottom = np.asarray(reduced.image)[: h // 4].mean((0, 1)), np.asarray(reduced.image)[-h // 4 :].mean((0, 1))
    assert top[0] > 180 > top[2] and bottom[2] > 180 > bottom[0]
    small_full = np.asarray(full.image.resize(reduced.image.size, Image.Resampling.BOX), dtype=float)
    assert np.abs(small_full - np.asarray(reduced.image, dtype=float)).mean() < 3


@pytest.mark.parametrize("size", [(20000, 1), (1, 20000), (65535, 3)])
def test_extreme_aspect_ratio_stays_bounded_on_the_fast_path(size: tuple[int, int], monkeypatch) -> None:
    """Only the window the crop keeps is resized (a 20000x1 image would be 5,120,000x256 otherwise)."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    decoded = decode_image(buf.getvalue(), min_short_side=512)
    assert decoded.image.size == size
    config = _config("convnext_tiny.fb_in1k")
    sizes: list[tuple[int, ...]] = []
    real_resize = torch.nn.functional.interpolate  # what the CPU resize runs
    monkeypatch.setattr(torch.nn.functional, "interpolate",
                        lambda x, *a, **k: sizes.append(tuple((out := real_resize(x, *a, **k)).shape)) or out)
    fast = transforms.fast_transform(config)([transforms.to_uint8_tensor(decoded.image)])[0]
    # the full resize would be 3 x 256 x (256 x 20000) values; the window is the crop plus the filter's margin
    assert sizes and max(int(np.prod(s)) for s in sizes) <= 3 * 256 * 4096
    exact = transforms.eval_transform(config)(decoded.image)  # the bounded exact path, as reference
    cosine = torch.nn.functional.cosine_similarity(fast.flatten(), exact.flatten(), dim=0)
    assert fast.shape == (3, 224, 224) and float(cosine) >= 0.999


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF"])
def test_non_jpeg_inputs_are_reduced_by_whole_factors(fmt: str) -> None:
    photo = _photo((1600, 1200))
    buf = io.BytesIO()
    photo.save(buf, fmt)
    decoded = decode_image(buf.getvalue(), min_short_side=292)
    assert decoded.source_format == fmt and decoded.reduced
    assert decoded.image.size == (400, 300) and (decoded.width, decoded.height) == (1600, 1200)  # factor 4
    config = _config("gresnet50.fl_in1k")
    fast = transforms.fast_transform(config)([transforms.to_uint8_tensor(decoded.image)])[0]
    exact = transforms.eval_transform(config)(decode_image(buf.getvalue()).image)
    assert float(torch.nn.functional.cosine_similarity(fast.flatten(), exact.flatten(), dim=0)) >= 0.995
