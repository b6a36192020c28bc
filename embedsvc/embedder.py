"""An embedder: one backbone, its weights, its own preprocessing, and a batched forward pass.

Embedding = pooled pre-logits features (``forward_features`` then ``forward_head(pre_logits=True)``),
float32, optionally L2-normalised. CPU runs fp32; CUDA runs bf16 autocast and channels_last.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import embedsvc.models  # noqa: F401  (registers GResNet with timm)
from embedsvc import __version__
from embedsvc.core.config import Settings, get_settings
from embedsvc.models import transforms
from embedsvc.models.checkpoints import CheckpointError, create_with_weights, load_weights
from embedsvc.models.download import ResolvedWeights
from embedsvc.models.registry import EmbedderSpec, get_spec
from embedsvc.models.weights import Provenance, WeightsNotFoundError, resolve_weights_file, verified_sha256, with_advice

log = logging.getLogger(__name__)


class ForwardGate:
    """Who may run a forward pass now: the one owner of that policy (searches and index jobs alike).

    On CPU one forward at a time in the whole process: a forward already uses every core, so two at
    once only thrash the caches. On a GPU one forward at a time per model. ``hold`` reports how long
    the caller queued, so that time is never counted as forward (compute) time.
    """

    def __init__(self) -> None:
        self._cpu = threading.Lock()
        self._per_model: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock_for(self, embedder: Embedder) -> threading.Lock:
        if embedder.device.type == "cpu":
            return self._cpu
        with self._guard:
            return self._per_model.setdefault(embedder.key, threading.Lock())

    @contextlib.contextmanager
    def hold(self, embedder: Embedder) -> Iterator[float]:
        """Wait for the embedder's turn; yields the seconds waited."""
        lock = self.lock_for(embedder)
        start = time.perf_counter()
        with lock:
            yield time.perf_counter() - start


#: The process' gate: every embedder uses it unless given another (its CPU turn-taking spans all models).
FORWARD_GATE = ForwardGate()


@dataclass
class Embedder:
    spec: EmbedderSpec
    model: nn.Module  # eval mode, on device; GResNet already folded
    provenance: Provenance
    data_config: dict[str, Any]
    device: torch.device
    normalize: bool
    gate: ForwardGate = field(default=FORWARD_GATE, repr=False)

    def __post_init__(self) -> None:
        self.transform = transforms.eval_transform(self.data_config)
        self.dim = int(self.model.num_features)

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def untrained(self) -> bool:
        return not self.provenance.trained

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> (3, H, W) float tensor with this model's own resize/crop/normalisation."""
        return self.transform(image)

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        """(N, 3, H, W) preprocessed batch -> (N, dim) float32 embeddings, when the gate gives the turn."""
        return self.embed_timed(batch)[0]

    def embed_timed(self, batch: torch.Tensor) -> tuple[np.ndarray, float, float]:
        """(embeddings, seconds queued at the gate, seconds of forward compute)."""
        batch = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with self.gate.hold(self) as queued, torch.inference_mode():
            start = time.perf_counter()
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    features = self.model.forward_head(self.model.forward_features(batch), pre_logits=True)
            else:
                features = self.model.forward_head(self.model.forward_features(batch), pre_logits=True)
            features = features.float()
            if self.normalize:
                features = F.normalize(features, dim=1)
            out = features.cpu().numpy()  # inside the turn: on CUDA this waits for the kernels
            computed = time.perf_counter() - start
        return out, queued, computed

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        out = [
            self.embed(torch.stack([self.preprocess(img) for img in images[i : i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def manifest(self) -> dict[str, Any]:
        """What must match for vectors to be comparable, plus facts for humans. Stored with every index."""
        return {
            "model_key": self.spec.key,
            "model_name": self.spec.model_name,
            "display_name": self.spec.display_name,
            "dim": self.dim,
            "normalize": self.normalize,
            "weights": self.provenance.to_dict(),
            "preprocessing": transforms.describe(self.data_config),
            "code_version": __version__,
        }


def build_model(spec: EmbedderSpec, input_size: int | None = None, weights_file: Path | None = None) -> nn.Module:
    """The timm model, random-initialised or loaded from ``weights_file``.

    Without a filter of our own, timm loads the file (``create_model(pretrained=True)`` with the file as
    the pretrained cfg), so the family's own registered filter applies, with its arguments (DeiT-III's
    layer-scale renaming, ViT position-embedding resampling); with one (GResNet, EfficientNet-Lite0's
    package names), `load_weights` runs timm's ``load_checkpoint`` through it.
    """
    kwargs = dict(spec.create_kwargs)
    cfg = timm.get_pretrained_cfg(spec.model_name)
    if input_size is not None and cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = input_size  # ViTs size their position embedding at creation
    if weights_file is not None and spec.checkpoint_filter is None:
        return create_with_weights(spec.model_name, weights_file, **kwargs)
    model = timm.create_model(spec.model_name, pretrained=False, **kwargs)
    if weights_file is not None:
        load_weights(model, weights_file, spec.checkpoint_filter)
    return model


def load_embedder(
    key: str,
    *,
    settings: Settings | None = None,
    weights: str | None = None,
    allow_random: bool | None = None,
    device: str | None = None,
    normalize: bool | None = None,
    input_size: int | None = None,
    seed: int = 0,
) -> Embedder:
    """Build, load weights (explicit, cache, hub; random only if allowed), fold, move to device.

    With ``allow_random``, weights that resolve but do not load (a truncated download, a pickled module, a
    checkpoint that does not fit) run this one model untrained, with the reason in its provenance, so one
    bad file never stops the others; without it, the error names the file and what to do.
    """
    settings = settings or get_settings()
    spec = get_spec(key)
    allow_random = settings.allow_random_weights if allow_random is None else allow_random
    input_size = input_size or settings.input_size
    reason: str | None = None
    try:
        resolved: ResolvedWeights | None = resolve_weights_file(
            spec.model_name,
            spec.weights,
            explicit=weights or settings.weights.get(spec.key),
            cache_dir=settings.resolved_cache_dir,
            offline=settings.offline,
            gdrive_url=settings.gdrive_url,
        )
    except WeightsNotFoundError as exc:
        if not allow_random:
            raise
        log.warning("%s -- using seeded random weights (untrained)", exc)
        resolved, reason = None, " ".join(str(exc).split("\nSupply weights")[0].split())  # the attempts, one line
    model: nn.Module | None = None
    if resolved is not None:
        try:
            sha256 = verified_sha256(resolved)
            torch.manual_seed(seed)  # what the checkpoint does not hold (a missing classifier) is seeded too
            model = build_model(spec, input_size, weights_file=resolved.path)
        except CheckpointError as exc:
            error = with_advice(exc, resolved.advice(spec.key))
            if not allow_random:
                raise error from exc
            log.warning("%s: weights did not load -- running it UNTRAINED (seeded random weights).\n%s",
                        spec.key, error.message)
            reason = f"weights did not load: {exc.message}"
        else:
            provenance = Provenance(source=resolved.source, sha256=sha256, trained=True)
    if model is None:
        provenance = Provenance(source="random", sha256=None, trained=False, seed=seed, reason=reason)
        torch.manual_seed(seed)  # seeded random init: the same "untrained" model in every process
        model = build_model(spec, input_size)
    data_config = transforms.data_config_for(model, input_size)
    model.eval()
    if spec.serve_transform is not None:
        model = spec.serve_transform(model).eval()
    torch_device = torch.device(device or settings.resolved_device())
    model = model.to(torch_device, memory_format=torch.channels_last)
    normalize = settings.normalize if normalize is None else normalize
    log.info("loaded %s (%s) on %s: %s", spec.key, spec.model_name, torch_device, provenance.label)
    return Embedder(spec, model, provenance, data_config, torch_device, normalize)


def load_embedders(keys: Sequence[str], **kwargs: Any) -> dict[str, Embedder]:
    return {get_spec(k).key: load_embedder(k, **kwargs) for k in keys}
