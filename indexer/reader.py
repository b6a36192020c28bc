"""Read stage: bytes -> content hash -> one decode -> every model's own preprocessing, in DataLoader workers.

Decoding is the CPU-heavy part of indexing, so each file is decoded exactly once per run and the one
image is shared by every selected model. A file whose hash every model already has is not decoded at
all; a model that already has it gets no tensor for it. Per model, ``transforms`` says who preprocesses:

- a PIL transform (the ``exact`` path): timm's transform on the full decode, in the worker;
- a ``FastEvalTransform`` (the ``fast`` path, model on the CPU): the reduced decode as a uint8 tensor,
  resized/cropped/normalised by tensor ops in the worker (the model's device is the CPU; the forward keeps
  the main thread);
- ``None`` (the ``fast`` path, model on an accelerator): the worker hands the uint8 CHW tensor on
  (``ReadBatch.images``) and the model preprocesses it on its device (``Embedder.preprocess_uint8``).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from embedsvc.core.config import Decoder
from embedsvc.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, probe_image
from embedsvc.indexer.listing import EntryRefused, read_regular_file
from embedsvc.models.transforms import FastEvalTransform, decode_short_side, to_uint8_tensor
from embedsvc.paths import stored_rel_path

log = logging.getLogger(__name__)

Transform = Callable[[Any], torch.Tensor]
#: None: the model preprocesses the shared uint8 image itself, on its device (see the module docstring)
ModelTransform = Transform | FastEvalTransform | None

# None: torch's default start method (fork on Linux: workers start in ~0.1 s and need no importable
# __main__). Set to "forkserver"/"spawn" where forking the host process is not safe.
MP_CONTEXT: str | None = None


def content_hash(data: bytes) -> str:
    """The row's ``content_hash``: sha256 of the file's bytes (hex)."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class ReadResult:
    """One file after the read stage: unchanged, failed (with reason), or decoded with tensors."""

    position: int  # index into the source's item list
    content_hash: str = ""
    width: int = 0
    height: int = 0
    needed: tuple[str, ...] = ()  # models that get a new vector for this file
    error: tuple[str, str] | None = None  # (reason, detail)
    orientation: int = 1  # EXIF orientation still to apply to an image left encoded (``decoder="device"``)

    @property
    def unchanged(self) -> bool:
        return self.error is None and not self.needed


class ImageReadDataset(Dataset):
    """Map-style dataset over the selected files; picklable (transforms only, never models)."""

    def __init__(
        self,
        root: Path,
        rel_paths: Sequence[str],
        ids: Sequence[int],
        transforms: Mapping[str, ModelTransform],
        known: Mapping[str, Mapping[int, str]] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        decode_short_side: int | None = None,
        decoder: Decoder = "worker",
    ) -> None:
        self.root = Path(root).resolve()  # the entry policy compares real paths
        self.rel_paths = list(rel_paths)
        self.ids = list(ids)
        self.transforms = dict(transforms)
        self.known = {k: dict(v) for k, v in (known or {}).items()}
        self.max_pixels = max_pixels
        fast = [t for t in self.transforms.values() if t is None or isinstance(t, FastEvalTransform)]
        if fast and len(fast) != len(self.transforms):
            raise ValueError("one run uses one preprocessing path: got both exact and fast transforms")
        self.decoder: Decoder = decoder
        if decoder == "device" and (not fast or any(t is not None for t in fast)):
            raise ValueError("decoder='device' needs every model to preprocess on its device (the fast path)")
        if fast and decode_short_side is None and decoder == "worker":
            if any(t is None for t in fast):
                raise ValueError("decode_short_side is required when a model preprocesses on its device")
            decode_short_side = decode_short_side_of(fast)  # type: ignore[arg-type]
        # the fast path's reduced decode (None: the exact path, and decoding on the device, decode in full)
        self.decode_short_side = decode_short_side if fast and decoder == "worker" else None

    def __len__(self) -> int:
        return len(self.rel_paths)

    def __getitem__(self, position: int) -> tuple[ReadResult, dict[str, torch.Tensor]]:
        rel = self.rel_paths[position]
        try:
            data = read_regular_file(self.root, rel)  # the listing's entry policy, checked again before open
        except EntryRefused as exc:
            return ReadResult(position, error=(exc.reason, exc.detail)), {}
        except OSError as exc:
            return ReadResult(position, error=("unreadable", f"cannot read file ({exc.strerror or exc})")), {}
        digest = content_hash(data)
        row_id = self.ids[position]
        needed = tuple(k for k in self.transforms if self.known.get(k, {}).get(row_id) != digest)
        result = ReadResult(position, content_hash=digest, needed=needed)
        if not needed:
            return result, {}
        if self.decoder == "device":
            return self._leave_encoded(data, rel, result)
        try:
            decoded = decode_image(
                data, name=stored_rel_path(rel), max_pixels=self.max_pixels, min_short_side=self.decode_short_side
            )
        except ImageDecodeError as exc:
            result.error = (exc.reason, exc.detail)
            return result, {}
        result.width, result.height = decoded.width, decoded.height
        tensors: dict[str, torch.Tensor] = {}
        shared: torch.Tensor | None = None  # the fast path's one uint8 image, for every model
        for key in needed:
            transform = self.transforms[key]
            try:
                if self.decode_short_side is None:
                    tensors[key] = transform(decoded.image)  # type: ignore[misc]
                    continue
                if shared is None:
                    shared = to_uint8_tensor(decoded.image)
                if transform is None:
                    tensors[UINT8] = shared
                else:
                    tensors[key] = transform([shared])[0]  # type: ignore[call-arg,arg-type,index]
            except Exception as exc:  # a transform crash on one odd image must not end the run
                result.error = ("preprocess_failed", f"{key} preprocessing failed ({exc})")
                return result, {}
        return result, tensors

    def _leave_encoded(self, data: bytes, rel: str, result: ReadResult) -> tuple[ReadResult, dict[str, torch.Tensor]]:
        """``decoder="device"``: a plain JPEG's bytes, checked but encoded; anything else decoded here in full."""
        name = stored_rel_path(rel)
        try:
            probe = probe_image(data, name=name, max_pixels=self.max_pixels)
            if probe.plain_jpeg:
                result.width, result.height, result.orientation = probe.width, probe.height, probe.orientation
                return result, {ENCODED: torch.frombuffer(bytearray(data), dtype=torch.uint8)}
            decoded = decode_image(data, name=name, max_pixels=self.max_pixels)
        except ImageDecodeError as exc:
            result.error = (exc.reason, exc.detail)
            return result, {}
        result.width, result.height = decoded.width, decoded.height
        return result, {UINT8: to_uint8_tensor(decoded.image)}


#: A sample's entry for the shared uint8 image that device-side models preprocess themselves.
UINT8 = "*uint8"
#: A sample's entry for a JPEG's bytes, left for ``decode_on_device`` (``decoder="device"``).
ENCODED = "*jpeg"


def decode_short_side_of(fast: Sequence[FastEvalTransform]) -> int:
    """The fast decode bound of these models: ``DECODE_FACTOR`` x the largest resize side among them."""
    return decode_short_side([t.data_config for t in fast])


@dataclass
class ReadBatch:
    """A collated batch: every result in order, and per model the stacked tensors of the files it needs.

    Models that preprocess on their device (fast path on an accelerator) have no entry in ``tensors``:
    their rows index ``images``, the shared uint8 CHW decode of each file (``model_inputs``).
    """

    results: list[ReadResult]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    # per model: positions *within this batch* (index into ``results``) of each tensor row
    rows: dict[str, list[int]] = field(default_factory=dict)
    # position within this batch -> (3, H, W) uint8, for the models that preprocess on their device
    images: dict[int, torch.Tensor] = field(default_factory=dict)
    # position within this batch -> a JPEG's bytes (1-D uint8), until ``decode_on_device`` fills ``images``
    encoded: dict[int, torch.Tensor] = field(default_factory=dict)

    def pin_memory(self) -> ReadBatch:
        """Called by the DataLoader's pin-memory thread on CUDA: page-locked tensors copy asynchronously."""
        self.tensors = {k: t.pin_memory() for k, t in self.tensors.items()}
        self.images = {i: t.pin_memory() for i, t in self.images.items()}
        return self  # ``encoded`` stays pageable: nvJPEG parses the bytes on the host


def collate(samples: list[tuple[ReadResult, dict[str, torch.Tensor]]]) -> ReadBatch:
    """Stack per model in the worker, so the main process receives ready batches."""
    batch = ReadBatch(results=[r for r, _ in samples])
    per_model: dict[str, list[torch.Tensor]] = {}
    for i, (result, tensors) in enumerate(samples):
        if result.error is not None:
            continue
        for key, tensor in tensors.items():
            if key in (UINT8, ENCODED):
                (batch.images if key == UINT8 else batch.encoded)[i] = tensor
                continue
            per_model.setdefault(key, []).append(tensor)
            batch.rows.setdefault(key, []).append(i)
        if UINT8 in tensors or ENCODED in tensors:  # every needed model without a worker tensor takes the shared image
            for key in result.needed:
                if key not in tensors:
                    batch.rows.setdefault(key, []).append(i)
    batch.tensors = {k: torch.stack(v) for k, v in per_model.items()}
    return batch


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) as Pillow's ``ImageOps.exif_transpose`` turns it for EXIF ``orientation`` (1-8)."""
    h, w = 1, 2
    turns = {
        2: lambda t: t.flip(w),
        3: lambda t: t.flip(h, w),
        4: lambda t: t.flip(h),
        5: lambda t: t.transpose(h, w),
        6: lambda t: torch.rot90(t, -1, (h, w)),
        7: lambda t: t.transpose(h, w).flip(h, w),
        8: lambda t: torch.rot90(t, 1, (h, w)),
    }
    return turns[orientation](image) if orientation in turns else image


def decode_on_device(batch: ReadBatch, device: torch.device, names: Callable[[int], str]) -> None:
    """Decode the JPEGs a ``decoder="device"`` worker left encoded into ``batch.images``, on ``device``.

    One batched ``decode_jpeg`` call (nvJPEG on CUDA); when it refuses the batch, each file alone, and a
    file it refuses alone goes through ``decode_image``, whose error becomes that file's failure (it then
    leaves ``batch.rows``). ``names(position)`` names a file for those errors.
    """
    if not batch.encoded:
        return
    from torchvision.io import ImageReadMode, decode_jpeg

    positions = list(batch.encoded)
    data = [batch.encoded.pop(p) for p in positions]
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its codecs for TorchCodec's; decode_jpeg still is the batched nvJPEG call
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            decoded: list[torch.Tensor | None] = list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            decoded = []
            for one in data:
                try:
                    decoded.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
    for position, image, raw in zip(positions, decoded, data, strict=True):
        result = batch.results[position]
        if image is not None:
            batch.images[position] = upright(image, result.orientation)
            continue
        try:
            fallback = decode_image(raw.numpy().tobytes(), name=names(result.position))
        except ImageDecodeError as exc:
            result.error = (exc.reason, exc.detail)
            batch.rows = {k: kept for k, rows in batch.rows.items() if (kept := [p for p in rows if p != position])}
            continue
        batch.images[position] = to_uint8_tensor(fallback.image).to(device)


def make_loader(
    dataset: ImageReadDataset, *, batch_size: int, workers: int, pin_memory: bool = False
) -> DataLoader:
    """In-order batches; ``workers`` processes decode ahead of the model (0: decode in this process)."""
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs["prefetch_factor"] = 2
        if MP_CONTEXT:
            kwargs["multiprocessing_context"] = MP_CONTEXT
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        **kwargs,
    )
