"""An embedder: one backbone, its weights, its own preprocessing, and a batched forward pass.

Embedding = pooled pre-logits features (``forward_features`` then ``forward_head(pre_logits=True)``),
float32 (upcast, then optionally L2-normalised), in the precision ``models.precision`` resolves for the
device (bf16 autocast on CUDA and bf16-capable CPUs by default), channels_last, optionally ``torch.compile``d.

On CUDA a batch moves host -> device on a side stream (non-blocking from pinned memory, so the next batch's
copy overlaps this one's compute) and the embeddings come back non-blocking into pinned host memory behind
an event: ``embed_async`` returns at once and ``PendingEmbedding.result`` waits only for that batch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
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
from embedsvc.core.config import Decoder, Settings, get_settings
from embedsvc.core.errors import EmbedsvcError
from embedsvc.models import transforms
from embedsvc.models.checkpoints import CheckpointError, create_with_weights, load_weights
from embedsvc.models.download import ResolvedWeights
from embedsvc.models.precision import autocast, cast_autocast_weights, check_weights_fit, resolve_precision
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


class CompileError(EmbedsvcError):
    """``torch.compile`` could not compile a model's forward on this machine (no compiler, unsupported op)."""

    code = "compile_failed"
    http_status = 500
    public_message = "a model could not be compiled on the server (details are in the server log)"


class EmbedForward(nn.Module):
    """The whole embedding forward as one module, so ``torch.compile`` sees (and fuses) it as one graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


_COPY_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def copy_stream(device: torch.device) -> torch.cuda.Stream:
    """One host-to-device copy stream per GPU, shared by its models (copies queue behind each other, not compute)."""
    if device not in _COPY_STREAMS:
        _COPY_STREAMS[device] = torch.cuda.Stream(device)
    return _COPY_STREAMS[device]


@dataclass
class PendingEmbedding:
    """Embeddings on their way back to the host; ``result`` waits for this batch only."""

    host: torch.Tensor | np.ndarray  # pinned float32 (CUDA, filled when ``done`` fires) or the finished array
    queued: float
    computed: float = 0.0  # CPU: seconds the forward took; CUDA: read from ``gpu_span`` once done
    done: torch.cuda.Event | None = None
    gpu_span: tuple[torch.cuda.Event, torch.cuda.Event] | None = None

    def result(self) -> tuple[np.ndarray, float, float]:
        """(embeddings, seconds queued at the gate, seconds of compute: the GPU's time between events on CUDA)."""
        if self.done is None or self.gpu_span is None:
            return np.asarray(self.host), self.queued, self.computed
        self.done.synchronize()
        computed = self.gpu_span[0].elapsed_time(self.gpu_span[1]) / 1000.0
        return self.host.numpy(), self.queued, computed  # type: ignore[union-attr]


@dataclass
class Embedder:
    spec: EmbedderSpec
    model: nn.Module  # eval mode, on device; GResNet already folded
    provenance: Provenance
    data_config: dict[str, Any]
    device: torch.device
    normalize: bool
    precision: str = "fp32"  # resolved (never "auto"): fp32, bf16 or fp16
    compiled: bool = False
    gate: ForwardGate = field(default=FORWARD_GATE, repr=False)
    #: the preprocessing path of the vectors this embedder writes (settings ``preprocess``); queries follow the index's
    preprocess_path: transforms.PreprocessPath = transforms.DEFAULT_PREPROCESS
    #: where an index run decodes for it (settings ``decode``): the read stage's workers, or its device
    decoder: Decoder = "worker"

    def __post_init__(self) -> None:
        check_weights_fit(self.model, self.precision)
        self.transform = transforms.eval_transform(self.data_config)
        self.fast_transform = transforms.fast_transform(self.data_config)
        self.dim = int(self.model.num_features)
        self.forward_fn: nn.Module = EmbedForward(self.model)

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def untrained(self) -> bool:
        return not self.provenance.trained

    def preprocess(self, image: Image.Image, path: transforms.PreprocessPath | None = None) -> torch.Tensor:
        """RGB PIL image -> (3, H, W) float tensor with this model's own resize/crop/normalisation.

        ``path`` (default: this embedder's ``preprocess_path``): ``exact`` is timm's PIL transform; ``fast``
        runs the same steps as tensor ops on the model's device (the image decoded as the fast path decodes,
        see ``query_preprocessing``, gives the vector the indexer stored).
        """
        if (path or self.preprocess_path) == "exact":
            return self.transform(image)
        return self.fast_transform([transforms.to_uint8_tensor(image)], self.device)[0]

    def preprocess_uint8(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """The fast path: (3, H, W) uint8 tensors of one shared decode -> (N, 3, crop, crop) on the model's device."""
        return self.fast_transform(images, self.device)

    @property
    def decode_short_side(self) -> int:
        """The fast path's decode bound for this model alone (a run of several models uses their largest)."""
        return transforms.decode_short_side([self.data_config])

    def query_preprocessing(
        self, manifest: Mapping[str, Any] | None
    ) -> tuple[transforms.PreprocessPath, int | None]:
        """(path, decode bound or None) a query against the index ``manifest`` describes uses: the index's own
        recorded path (exact for manifests written before the fast path), so the service never mixes paths."""
        record = (manifest or {}).get("preprocessing")
        path = transforms.recorded_path(record)
        bound = transforms.recorded_decode_short_side(record, self.data_config) if path == "fast" else None
        return path, bound

    def embed(self, batch: torch.Tensor) -> np.ndarray:
        """(N, 3, H, W) preprocessed batch -> (N, dim) float32 embeddings, when the gate gives the turn."""
        return self.embed_timed(batch)[0]

    def embed_timed(self, batch: torch.Tensor) -> tuple[np.ndarray, float, float]:
        """(embeddings, seconds queued at the gate, seconds of forward compute)."""
        return self.embed_async(batch).result()

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` on this model's device. CUDA: a non-blocking copy on the side stream (pinned memory makes it
        truly asynchronous), ordered before whatever the current stream runs next; CPU: the batch itself."""
        if self.device.type != "cuda" or batch.is_cuda:
            return batch.to(self.device)  # already there (device-side preprocessing), or nothing to overlap on CPU
        stream, current = copy_stream(self.device), torch.cuda.current_stream(self.device)
        with torch.cuda.stream(stream):
            moved = batch.to(self.device, non_blocking=True)
        current.wait_stream(stream)
        moved.record_stream(current)  # the allocator must not reuse it while the current stream reads it
        return moved

    def embed_async(self, batch: torch.Tensor) -> PendingEmbedding:
        """Queue the forward of ``batch`` ((N, 3, H, W), any float dtype, host or device) and return at once on
        CUDA; on CPU the work is done when this returns. Vectors: float32, normalised after the upcast."""
        with self.gate.hold(self) as queued, torch.inference_mode():
            start = time.perf_counter()
            cuda = self.device.type == "cuda"
            if cuda:
                span = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            x = self.to_device(batch).contiguous(memory_format=torch.channels_last)
            if cuda:
                span[0].record()
            with autocast(self.device, self.precision):
                features = self.forward_fn(x)
            features = features.float()
            if self.normalize:
                features = F.normalize(features, dim=1)
            if not cuda:
                return PendingEmbedding(features.numpy(), queued, time.perf_counter() - start)
            host = torch.empty(features.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(features, non_blocking=True)
            span[1].record()
            done = torch.cuda.Event()
            done.record()
        return PendingEmbedding(host, queued, done=done, gpu_span=span)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        out = [
            self.embed(torch.stack([self.preprocess(img) for img in images[i : i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def manifest(
        self, path: transforms.PreprocessPath | None = None, decode_short_side: int | None = None
    ) -> dict[str, Any]:
        """What must match for vectors to be comparable, plus facts for humans. Stored with every index.

        ``path`` defaults to this embedder's; ``decode_short_side`` is the fast decode bound of the run (default:
        this model's own)."""
        return {
            "model_key": self.spec.key,
            "model_name": self.spec.model_name,
            "display_name": self.spec.display_name,
            "dim": self.dim,
            "normalize": self.normalize,
            "weights": self.provenance.to_dict(),
            "preprocessing": transforms.describe(
                self.data_config, path or self.preprocess_path, decode_short_side or self.decode_short_side,
                self.decoder,
            ),
            "precision": self.precision,  # recorded, never an incompatibility (manifest.py says why)
            "code_version": __version__,
        }

    def query_manifest(self, manifest: Mapping[str, Any] | None) -> dict[str, Any]:
        """This embedder's manifest as it queries the index ``manifest`` describes (its recorded preprocessing
        path and decode bound): what the search core and the index listing compare with ``incompatibilities``."""
        path, bound = self.query_preprocessing(manifest)
        return self.manifest(path, bound)


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
    precision: str | None = None,
    compile: bool | None = None,
) -> Embedder:
    """Build, load weights (explicit, cache, hub; random only if allowed), fold, move to device, pick the
    precision (``resolve_precision``) and, with ``compile``, compile the forward (a PrecisionError or
    CompileError here, before any image is read, rather than mid-run).

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
    resolved_precision = resolve_precision(precision or settings.precision, torch_device)
    if torch_device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once
    model = model.to(torch_device, memory_format=torch.channels_last)
    cast_autocast_weights(model, resolved_precision)
    normalize = settings.normalize if normalize is None else normalize
    embedder = Embedder(spec, model, provenance, data_config, torch_device, normalize, resolved_precision)
    embedder.preprocess_path = settings.preprocess  # the path of the vectors it writes (queries follow their index)
    embedder.decoder = settings.decode
    if settings.compile == "on" if compile is None else compile:
        compile_forward(embedder)
    log.info("loaded %s (%s) on %s, %s%s: %s", spec.key, spec.model_name, torch_device, resolved_precision,
             ", compiled" if embedder.compiled else "", provenance.label)
    return embedder


def compile_forward(embedder: Embedder) -> None:
    """``torch.compile`` the embedder's forward and compile it now, so a machine that cannot compile fails at
    load with one clear line instead of at the first batch or query: one graph with a dynamic batch dimension
    (every batch of 2 or more) and one for a single image (torch specialises size 1; a query's batch).

    On CPU inductor also *freezes* the weights (folds them into the graph as constants, prepacked for oneDNN):
    measured here, a batch-1 bf16 forward is 1.3-1.9x faster frozen, and only 1.05x compiled without it."""
    options = {"freezing": True} if embedder.device.type == "cpu" else None
    compiled = torch.compile(embedder.forward_fn, options=options)
    _, height, width = embedder.data_config["input_size"]
    try:
        for n in (2, 1):
            with torch.inference_mode(), autocast(embedder.device, embedder.precision):  # as embed_async calls it
                dummy = torch.zeros(n, 3, height, width, device=embedder.device).contiguous(
                    memory_format=torch.channels_last
                )
                if n > 1:
                    torch._dynamo.mark_dynamic(dummy, 0)
                compiled(dummy)
    except Exception as exc:  # dynamo/inductor raise many types (no compiler, unsupported op, OOM)
        reason = " ".join(str(exc).split())[:300]
        raise CompileError(
            f"torch.compile failed for {embedder.key} on {embedder.device.type} ({type(exc).__name__}: {reason}); "
            "run without --compile (EMBEDSVC_COMPILE=off)"
        ) from exc
    embedder.forward_fn = compiled  # type: ignore[assignment]
    embedder.compiled = True


def compile_later(settings: Settings, embedders: Mapping[str, Embedder]) -> list[Embedder]:
    """The embedders a long-running service compiles after start-up under ``compile=auto``: its CPU models not
    compiled yet. On CPU, frozen compiled forwards are 1.3-1.9x faster at batch 1 (bench/query_latency.py), but
    compiling takes ~15-25 s per model and graph on 2 cores, too long to hold start-up for, and may fail where no
    C++ compiler is installed (the slim Docker image). GPUs: not measured yet, so not compiled unless asked."""
    if settings.compile != "auto":
        return []
    return [e for e in embedders.values() if e.device.type == "cpu" and not e.compiled]


class BackgroundCompiler:
    """Compiles embedders one after another on a daemon thread; each swaps in its compiled forward when ready.

    Queries meanwhile run the eager forward (the swap is one attribute assignment, so a forward in flight
    finishes on the one it started with). A model that fails to compile stays eager, with a warning naming why.
    The compiling warm-up forwards skip the ``ForwardGate``: holding it for a compile would stop every query.
    """

    def __init__(self, embedders: Sequence[Embedder]) -> None:
        self.pending = list(embedders)
        self.failed: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="compile-models", daemon=True)

    def start(self) -> BackgroundCompiler:
        if self.pending:
            log.info("compiling %s in the background (queries run eager until each is ready)",
                     ", ".join(e.key for e in self.pending))
            self._thread.start()
        return self

    def _run(self) -> None:
        while self.pending and not self._stop.is_set():
            embedder = self.pending[0]
            start = time.perf_counter()
            try:
                compile_forward(embedder)
            except CompileError as exc:
                self.failed[embedder.key] = exc.message
                log.warning("%s stays eager: %s", embedder.key, exc.message)
            else:
                log.info("%s now runs compiled (compiled in %.1f s)", embedder.key, time.perf_counter() - start)
            self.pending.pop(0)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every model (or ``timeout`` seconds); True when nothing is left to compile."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self.pending

    def stop(self) -> None:
        """Compile nothing more (a compile under way finishes on its daemon thread)."""
        self._stop.set()


def load_embedders(keys: Sequence[str], **kwargs: Any) -> dict[str, Embedder]:
    return {get_spec(k).key: load_embedder(k, **kwargs) for k in keys}
