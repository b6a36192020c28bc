"""The one place preprocessing is derived: from the model's own timm data config.

Two paths, recorded in every index's manifest (``describe``), so query and index vectors cannot drift apart:

- ``exact``: timm's reference eval transform on the PIL image (:func:`eval_transform`), per model.
- ``fast`` (default): the image is decoded once at reduced size (``images.decode_image(min_short_side=...)``,
  JPEG DCT scaling, short side kept >= ``DECODE_FACTOR`` x the largest model's resize side), handed on as one
  uint8 CHW tensor (:func:`to_uint8_tensor`), and each model resizes (antialiased, its own timm
  interpolation), centre-crops and normalises it as tensor ops on its own device (:class:`FastEvalTransform`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision import transforms as T
from torchvision.transforms.functional import InterpolationMode, pil_modes_mapping

from embedsvc.core.config import Decoder
from embedsvc.manifest import UNRECORDED_PREPROCESS_PATH

PreprocessPath = Literal["fast", "exact"]
PREPROCESS_PATHS: tuple[PreprocessPath, ...] = ("fast", "exact")
DEFAULT_PREPROCESS: PreprocessPath = "fast"
#: What a manifest without a ``path`` in its preprocessing record was made with (everything before ``fast``).
STORED_DEFAULT_PATH: PreprocessPath = UNRECORDED_PREPROCESS_PATH  # type: ignore[assignment]
#: The fast path decodes with the short side at least this many times the largest model's resize side.
#: 2.5, not 2: a two-step downscale (DCT scaling, then the model's resize) from only 2x leaves per-image
#: cosine down to 0.9989 against timm's one-step resize (bench/results/preprocess_fidelity-cpu.md);
#: 2.5x (640 px for the default models) still decodes 12 MP photos at 1/4 (750 px short side).
DECODE_FACTOR = 2.5

# Above this many crops' worth of resized long side, only the kept window is resampled (see BoundedEvalTransform).
ELONGATED_FACTOR = 4
_MAX_SUPPORT = 3.0  # Lanczos; bicubic is 2, bilinear 1


def data_config_for(model: nn.Module, input_size: int | None = None) -> dict[str, Any]:
    """timm's resolved eval data config (input size, interpolation, crop_pct, mean/std), optionally resized."""
    from timm.data import resolve_model_data_config

    args = {"input_size": (3, input_size, input_size)} if input_size is not None else None
    return resolve_model_data_config(model, args=args)


class BoundedEvalTransform:
    """timm's eval transform (short-side resize, centre crop, normalise) with bounded memory for any shape.

    timm resizes the whole image before cropping, so a 65535x1 PNG becomes a 16,776,960x256 image (~13 GB)
    of which 224x224 are kept. When the resized long side exceeds ``ELONGATED_FACTOR`` crops, this
    resamples only the window the centre crop keeps: the source is cut to that window's pixels plus a
    margin for the filter's support (widened by the scale factor when downscaling, as antialiasing does),
    and the two one-axis passes Pillow would run are run in Pillow's order, the long axis through
    ``resize(box=...)`` on the full resize's sampling grid. The result matches timm's to within 8-bit
    rounding (float rounding of the grid). Other images go through timm's transform untouched
    (bit-identical tensors).

    Peak memory of one call, on top of the decoded image itself (Pillow keeps 4 bytes/pixel, so at most
    4 x max_image_pixels bytes): about ``4 * F * crop * (short_side + scale_size)`` bytes for Pillow's
    two passes, with F = ``ELONGATED_FACTOR`` and ``short_side <= sqrt(max_image_pixels)``: ~30 MB at
    224 px and the default 64 MP limit, whatever the aspect ratio. Other configs use timm's transform as
    is: ``squash`` and ``border`` crop modes never blow up; a non-square ``input_size`` (timm's
    ``ResizeKeepRatio``) would be unbounded, and no registered model has one (``bounded`` is tested).
    """

    def __init__(self, data_config: dict[str, Any]) -> None:
        from timm.data import create_transform

        self.exact = create_transform(**data_config, is_training=False)
        steps = list(getattr(self.exact, "transforms", []))
        self.resize: T.Resize | None = None
        if (
            len(steps) >= 2
            and isinstance(steps[0], T.Resize)
            and isinstance(steps[1], T.CenterCrop)
            and _short_side_size(steps[0].size) is not None
            and steps[0].max_size is None
        ):
            self.resize, self.crop, self.tail = steps[0], steps[1], T.Compose(steps[2:])

    @property
    def bounded(self) -> bool:
        """True when elongated images take the bounded path (every registered model's config does)."""
        return self.resize is not None

    def __call__(self, image: Image.Image) -> Tensor:
        if self.resize is None:
            return self.exact(image)
        short = _short_side_size(self.resize.size)
        assert short is not None
        crop_h, crop_w = self.crop.size
        width, height = image.size
        # torchvision's short-side rule (`_compute_resized_output_size`): long = int(short * long / short_side)
        if width <= height:
            new_w, new_h = short, int(short * height / width)
        else:
            new_w, new_h = int(short * width / height), short
        elongated = new_w > ELONGATED_FACTOR * crop_w or new_h > ELONGATED_FACTOR * crop_h
        if not elongated or (new_w, new_h) == (width, height):  # the latter: timm does not resample at all
            return self.exact(image)
        resample = _pil_filter(self.resize.interpolation)
        if new_w > new_h:
            window = _resample_window(image, (new_w, new_h), crop_w, resample, horizontal=True)
        else:
            window = _resample_window(image, (new_w, new_h), crop_h, resample, horizontal=False)
        return self.tail(self.crop(window))


def _resample_window(
    image: Image.Image, resized: tuple[int, int], keep: int, resample: int, *, horizontal: bool
) -> Image.Image:
    """The ``keep`` pixels the centre crop takes along the long axis of ``image.resize(resized)``, full short axis.

    Pillow resizes in two one-axis passes whose order it picks from the sizes, and rounds to 8 bits in
    between; the passes are run here in the order the full resize would use, so only the long axis'
    sampling grid differs (by float rounding).
    """
    width, height = image.size
    new_w, new_h = resized
    long_in, long_out = (width, new_w) if horizontal else (height, new_h)
    offset = int(round((long_out - keep) / 2.0))  # torchvision's centre-crop offset
    scale = long_in / long_out
    lo, hi = offset * scale, min((offset + keep) * scale, float(long_in))
    # Pillow reads center +- support * max(scale, 1) around each output pixel; Lanczos has the widest support (3).
    margin = math.ceil(_MAX_SUPPORT * max(scale, 1.0)) + 2
    start, stop = max(0, math.floor(lo) - margin), min(long_in, math.ceil(hi) + margin)
    horizontal_first = _pillow_horizontal_first((width, height), resized)
    if horizontal == horizontal_first:  # long axis first: its box reads only the window's source pixels
        if horizontal:
            first = image.resize((keep, height), resample, box=(lo, 0.0, hi, float(height)))
            return first.resize((keep, new_h), resample)
        first = image.resize((width, keep), resample, box=(0.0, lo, float(width), hi))
        return first.resize((new_w, keep), resample)
    # short axis first: cut the long axis (window + margin) out of the source before that pass
    if horizontal:
        part = image.crop((start, 0, stop, height)).resize((stop - start, new_h), resample)
        return part.resize((keep, new_h), resample, box=(lo - start, 0.0, hi - start, float(new_h)))
    part = image.crop((0, start, width, stop)).resize((new_w, stop - start), resample)
    return part.resize((new_w, keep), resample, box=(0.0, lo - start, float(new_w), hi - start))


def _pillow_horizontal_first(size_in: tuple[int, int], size_out: tuple[int, int]) -> bool:
    """Pillow's pass order (src/libImaging/Resample.c): vertical first only when height shrinks > 2x width."""
    shrink_x, shrink_y = size_in[0] - size_out[0], size_in[1] - size_out[1]
    return not (shrink_y > 0 and shrink_y > shrink_x * 2)


def _short_side_size(size: Any) -> int | None:
    """The target short side when a torchvision ``Resize`` size means "short side" (int or 1-list)."""
    if isinstance(size, int):
        return size
    if isinstance(size, list | tuple) and len(size) == 1:
        return int(size[0])
    return None


def _pil_filter(interpolation: InterpolationMode | int) -> int:
    if isinstance(interpolation, InterpolationMode):
        return pil_modes_mapping[interpolation]
    return int(interpolation)


def eval_transform(data_config: dict[str, Any]) -> BoundedEvalTransform:
    """PIL image -> normalised tensor as timm's validate script does it, with memory bounded for any shape.

    A picklable callable (the indexer ships it to DataLoader workers).
    """
    return BoundedEvalTransform(data_config)


def resize_side(data_config: dict[str, Any]) -> int:
    """The side a model resizes to before its crop (timm: ``floor(input_size / crop_pct)``)."""
    size = max(int(x) for x in data_config["input_size"][-2:])
    return int(math.floor(size / float(data_config.get("crop_pct") or 1.0)))


def decode_short_side(data_configs: Sequence[dict[str, Any]]) -> int:
    """The fast path's decode bound for these models: ``DECODE_FACTOR`` x the largest resize side."""
    return max(model_decode_short_side(c) for c in data_configs)


def model_decode_short_side(data_config: dict[str, Any]) -> int:
    """One model's fast decode bound: ``DECODE_FACTOR`` x its resize side, in whole pixels."""
    return math.ceil(DECODE_FACTOR * resize_side(data_config))


def to_uint8_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image -> (3, H, W) uint8 tensor: what the fast path's decode hands to the models.

    Channels-last in memory (a CHW view of the HWC pixels, no second copy): torchvision's uint8 antialiased
    resize runs ~4x faster on that layout than on a contiguous CHW tensor.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


class FastEvalTransform:
    """The fast path's per-model preprocessing: uint8 CHW tensors -> normalised float batch, as tensor ops.

    The same steps as timm's eval transform (short-side resize, centre crop, ``/255``, mean/std), run by
    ``torchvision.transforms.v2.functional`` on the model's device: antialiased resize with the model's
    interpolation (bilinear/bicubic; within 1-2 levels of Pillow's on uint8), rounded back to uint8 as
    Pillow does. Images of one size are resized as one batch. An image whose resized long side exceeds
    ``ELONGATED_FACTOR`` crops is cut to the window the crop keeps (plus the filter's support) before
    resizing, so memory stays bounded for any aspect ratio (a 20000x1 image resizes ~1 window, not a
    5,120,000x256 image); the window's grid is the full resize's to within half an output pixel.
    Configs other than resize + centre crop (``squash``, ``border``) run timm's transform on a PIL copy.
    """

    def __init__(self, data_config: dict[str, Any]) -> None:
        self.data_config = dict(data_config)
        self.reference = BoundedEvalTransform(data_config)
        self.mean = [float(x) for x in data_config["mean"]]
        self.std = [float(x) for x in data_config["std"]]
        resize = self.reference.resize
        self.short: int | None = _short_side_size(resize.size) if resize is not None else None
        self.interpolation = (
            InterpolationMode(resize.interpolation.value)
            if resize is not None and isinstance(resize.interpolation, InterpolationMode)
            else InterpolationMode.BICUBIC
        )
        self.crop_size: tuple[int, int] = tuple(self.reference.crop.size) if resize is not None else (0, 0)
        self.support = 2.0 if self.interpolation == InterpolationMode.BICUBIC else 1.0
        self._affine_on: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def __call__(self, images: Sequence[Tensor], device: torch.device | str | None = None) -> Tensor:
        """(3, H, W) uint8 tensors (any sizes) -> (N, 3, crop, crop) float32 on ``device``, in order."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        if not images:
            height, width = self.crop_size
            return torch.zeros((0, 3, height, width), dtype=torch.float32, device=device)
        if len(images) == 1:  # a query, or one worker's image: no grouping, no copy
            return self.batch(images[0].to(device, non_blocking=True).unsqueeze(0))
        out: list[Tensor | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(tuple(image.shape), []).append(i)
        for positions in by_shape.values():
            # N x H x W x 3 in memory (channels-last), whatever layout each image came in
            nhwc = torch.stack([images[i].permute(1, 2, 0) for i in positions]).to(device, non_blocking=True)
            normalised = self.batch(nhwc.permute(0, 3, 1, 2))
            for row, i in enumerate(positions):
                out[i] = normalised[row]
        return torch.stack(out)  # type: ignore[arg-type]

    def batch(self, batch: Tensor) -> Tensor:
        """(N, 3, H, W) uint8 of one size -> (N, 3, crop, crop) float32, on the batch's device.

        Normalised as timm's ``ToTensor`` + ``Normalize`` do, ``(x / 255 - mean) / std``, in one fused pass.
        """
        from torchvision.transforms.v2 import functional as F2

        if self.short is None:  # not resize + centre crop: timm's own transform, image by image
            pil = [Image.fromarray(b.permute(1, 2, 0).cpu().numpy(), "RGB") for b in batch]
            return torch.stack([self.reference.exact(p) for p in pil]).to(batch.device)
        cropped = self._resize_crop(batch, F2).float().contiguous()  # dense NCHW: the per-channel maths is fastest
        shift, variance = self._affine(batch.device)
        # (x / 255 - mean) / std as one pass: (x - 255 mean) / sqrt((255 std)^2), equal up to float rounding
        return torch.nn.functional.batch_norm(cropped, shift, variance, training=False, eps=0.0)

    def _affine(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The normalisation on the 0-255 scale, as batch-norm statistics on ``device`` (made once per device)."""
        if device not in self._affine_on:
            shift = torch.tensor([255.0 * m for m in self.mean], dtype=torch.float32)
            variance = torch.tensor([(255.0 * s) ** 2 for s in self.std], dtype=torch.float32)
            self._affine_on[device] = (shift.to(device), variance.to(device))
        return self._affine_on[device]

    def _resize(self, batch: Tensor, size: tuple[int, int], F2: Any) -> Tensor:
        """Antialiased resize to ``size`` (h, w) in the model's interpolation, uint8 in and out.

        On the CPU straight through ``torch.nn.functional.interpolate`` (its uint8 channels-last kernels;
        the same values as torchvision's ``resize``, without its dispatch); elsewhere torchvision's, which
        resizes in float and rounds back where a device has no uint8 kernel.
        """
        if batch.device.type == "cpu":
            return torch.nn.functional.interpolate(
                batch, size=size, mode=self.interpolation.value, antialias=True, align_corners=False
            )
        return F2.resize(batch, list(size), interpolation=self.interpolation, antialias=True)

    def _resize_crop(self, batch: Tensor, F2: Any) -> Tensor:
        short = self.short
        assert short is not None
        crop_h, crop_w = self.crop_size
        height, width = int(batch.shape[-2]), int(batch.shape[-1])
        if width <= height:  # torchvision's short-side rule, as timm's Resize applies it
            new_w, new_h = short, int(short * height / width)
        else:
            new_w, new_h = int(short * width / height), short
        elongated = new_w > ELONGATED_FACTOR * crop_w or new_h > ELONGATED_FACTOR * crop_h
        if not elongated:
            if (new_h, new_w) != (height, width):
                batch = self._resize(batch, (new_h, new_w), F2)
            return _center_crop(batch, crop_h, crop_w, F2)
        horizontal = new_w > new_h
        long_in, long_out, keep = (width, new_w, crop_w) if horizontal else (height, new_h, crop_h)
        offset = int(round((long_out - keep) / 2.0))  # torchvision's centre-crop offset
        scale = long_in / long_out
        lo, hi = offset * scale, (offset + keep) * scale
        margin = math.ceil(self.support * max(scale, 1.0)) + 2
        start, stop = max(0, math.floor(lo) - margin), min(long_in, math.ceil(hi) + margin)
        part_out = max(keep, int(round((stop - start) / scale)))
        step = (stop - start) / part_out
        first = min(max(0, int(round((lo - start) / step))), part_out - keep)
        if horizontal:
            window = self._resize(batch[..., start:stop], (new_h, part_out), F2)[..., first : first + keep]
        else:
            window = self._resize(batch[..., start:stop, :], (part_out, new_w), F2)[..., first : first + keep, :]
        return _center_crop(window, crop_h, crop_w, F2)


def _center_crop(batch: Tensor, crop_h: int, crop_w: int, F2: Any) -> Tensor:
    """torchvision's centre crop (same offsets) as a view; its padding only where the image is smaller."""
    height, width = int(batch.shape[-2]), int(batch.shape[-1])
    if crop_h > height or crop_w > width:
        return F2.center_crop(batch, [crop_h, crop_w])
    top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
    return batch[..., top : top + crop_h, left : left + crop_w]


def fast_transform(data_config: dict[str, Any]) -> FastEvalTransform:
    """uint8 CHW tensors -> normalised batch on a device: the fast path's half of :func:`eval_transform`."""
    return FastEvalTransform(data_config)


def describe(
    data_config: dict[str, Any],
    path: PreprocessPath = STORED_DEFAULT_PATH,
    decode_short_side: int | None = None,
    decoder: Decoder = "worker",
) -> dict[str, Any]:
    """JSON-safe preprocessing record stored in manifests.

    ``path`` says which path made the vectors (compared: a mismatch is an incompatibility); the fast
    path also records ``decoder`` and ``decode_short_side``, how its decode ran, so queries decode the same
    way (not compared: another model set may bound one run's decode differently, and a JPEG decoded on the
    models' device in full is within float rounding of Pillow's full decode; the vectors stay comparable).
    ``decoder="device"`` decodes in full, so its bound is ``None``.
    """
    record: dict[str, Any] = {
        "input_size": list(data_config["input_size"]),
        "interpolation": data_config["interpolation"],
        "crop_pct": float(data_config["crop_pct"]),
        "crop_mode": data_config.get("crop_mode", "center"),
        "mean": [float(x) for x in data_config["mean"]],
        "std": [float(x) for x in data_config["std"]],
        "path": path,
    }
    if path == "fast":
        record["decoder"] = decoder
        record["decode_short_side"] = (
            None if decoder == "device" else int(decode_short_side or model_decode_short_side(data_config))
        )
    return record


def recorded_path(record: dict[str, Any] | None) -> PreprocessPath:
    """The path a stored preprocessing record names; records written before the fast path mean ``exact``."""
    path = (record or {}).get("path") or STORED_DEFAULT_PATH
    return "fast" if path == "fast" else "exact"


def recorded_decode_short_side(record: dict[str, Any] | None, data_config: dict[str, Any]) -> int | None:
    """The fast path's decode bound an index recorded (its model's own bound when the record has none);
    None where the index decoded in full on the models' device (``decoder: device``)."""
    if (record or {}).get("decoder") == "device":
        return None
    value = (record or {}).get("decode_short_side")
    return int(value) if value else model_decode_short_side(data_config)
