"""Preprocessing: timm's eval transform, bit-identical for ordinary images, bounded memory for any shape."""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

import embedsvc.models  # noqa: F401  (registers gresnet50 with timm)
from embedsvc.images import decode_image
from embedsvc.models import transforms
from embedsvc.models.registry import list_specs
from tests.support import SAMPLE_PHOTOS

PHOTO = SAMPLE_PHOTOS / "mammal" / "erase_cheetah.jpg"
# The two interpolations the registered models use: GResNet's bilinear (crop 224/232), ConvNeXt's bicubic (0.875).
CONFIG_MODELS = {"bilinear": "gresnet50.fl_in1k", "bicubic": "convnext_tiny.fb_in1k"}


def _config(model_name: str, size: int | None = None) -> dict[str, Any]:
    config = resolve_data_config({}, pretrained_cfg=timm.get_pretrained_cfg(model_name).to_dict())
    if size is not None:
        config["input_size"] = (3, size, size)
    return config


def _photo(size: tuple[int, int]) -> Image.Image:
    """The real photo resampled to ``size`` (any aspect ratio), RGB as the decoder gives it."""
    return decode_image(PHOTO).image.resize(size, Image.Resampling.LANCZOS)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("interpolation", sorted(CONFIG_MODELS))
@pytest.mark.parametrize(
    "size",
    [
        (640, 480),
        (480, 640),
        (1280, 720),
        (720, 1280),
        (500, 500),
        (37, 29),
        (29, 37),
        (4000, 3000),
        (3000, 4000),
        (224, 224),
        (860, 260),
        (260, 860),
    ],  # the last two: just under the elongation threshold
)
def test_ordinary_images_give_timms_exact_tensor(interpolation: str, size: tuple[int, int]) -> None:
    config = _config(CONFIG_MODELS[interpolation])
    assert config["interpolation"] == interpolation
    image = _photo(size)
    ours = transforms.eval_transform(config)(image)
    assert torch.equal(ours, create_transform(**config, is_training=False)(image))


@pytest.mark.parametrize("interpolation", sorted(CONFIG_MODELS))
@pytest.mark.parametrize(
    "size",
    # wide and tall upscaled short side, tall with Pillow's vertical-first pass order, wide downscaled
    [(4000, 100), (100, 4000), (400, 8000), (8000, 400), (3000, 40), (1500, 300)],
)
def test_elongated_images_close_to_timms_exact_path(interpolation: str, size: tuple[int, int]) -> None:
    """Where timm's full-size resize is still computable, the bounded path differs by <= 1 level of 255."""
    config = _config(CONFIG_MODELS[interpolation])
    ours_fn = transforms.eval_transform(config)
    reference = create_transform(**config, is_training=False)
    for image in (
        _photo(size),
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)),
    ):
        ours, exact = ours_fn(image), reference(image)
        assert ours.shape == exact.shape == (3, 224, 224)
        levels = (ours - exact).abs() * torch.tensor(config["std"]).view(3, 1, 1) * 255
        assert levels.max().item() <= 1.0 + 1e-3, levels.max()
        assert (levels > 0.5).float().mean().item() < 0.02  # a handful of rounding flips, not a shifted window


@pytest.mark.parametrize("size", [64, 224])
@pytest.mark.parametrize("shape", [(65535, 1), (1, 65535), (20000, 1)])
def test_extreme_aspect_ratios_preprocess_with_the_centre_pixels(shape: tuple[int, int], size: int) -> None:
    """A 273-byte 65535x1 PNG once meant a 16,776,960x256 intermediate (~13 GB); now a small window.

    The source is red except its three centre pixels, which are green: the output must show the green centre.
    """
    width, height = shape
    arr = np.zeros((height, width, 3), np.uint8)
    arr[..., 0] = 255
    arr[max(height // 2 - 1, 0) : height // 2 + 2, max(width // 2 - 1, 0) : width // 2 + 2] = (0, 255, 0)
    decoded = decode_image(_png(arr), name="line.png")
    assert decoded.image.size == shape
    for spec in list_specs(default_only=True):
        config = _config(spec.model_name, size)
        out = transforms.eval_transform(config)(decoded.image)
        assert out.shape == (3, size, size)
        rgb = out * torch.tensor(config["std"]).view(3, 1, 1) + torch.tensor(config["mean"]).view(3, 1, 1)
        centre = rgb[:, size // 2, size // 2]
        assert centre[1] > 0.9 and centre[0] < 0.1, (spec.key, centre)  # the centre pixel, not the red rest


def test_every_registered_model_takes_the_bounded_path_and_it_pickles() -> None:
    """No registered config falls back to the unbounded path; the indexer ships the transform to workers."""
    for spec in list_specs():
        assert transforms.eval_transform(_config(spec.model_name)).bounded, spec.key
    transform = transforms.eval_transform(_config("gresnet50.fl_in1k", 64))
    clone = pickle.loads(pickle.dumps(transform))
    image = _photo((3000, 60))
    assert torch.equal(clone(image), transform(image))
