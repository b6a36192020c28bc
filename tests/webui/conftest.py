"""A running API (uvicorn on a free port) over a small real index, for the web UI's tests.

The UI is an HTTP client, so its tests talk to a real server: Milvus Lite in a temp dir, twelve real
photos in three labels, three models at 64 px (EfficientNet-Lite0 with its real weights, GResNet-50 and
DeiT-III-S with seeded random weights, i.e. "untrained"). Built once per test package (~15 s on 2 CPUs).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import SAMPLE_PHOTOS, make_settings

INDEX = "photos"
MODELS = ["efficientnet_lite0", "gresnet50", "deit3_small"]
LABELS = ["bird", "fish", "windmill"]
PER_LABEL = 4


@dataclass
class RunningApi:
    url: str
    dataset: Path
    allowed: Path
    rel_paths: list[str]
    labels: dict[str, str]  # rel_path -> label
    embedders: dict[str, Any]  # already loaded: a second app can reuse them


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dead_url() -> str:
    """A URL nothing listens on (the port was free a moment ago)."""
    return f"http://127.0.0.1:{free_port()}"


def wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s:.0f} s")


def _copy_photos(dest: Path) -> tuple[list[str], dict[str, str]]:
    rel_paths, labels = [], {}
    for label in LABELS:
        for photo in sorted((SAMPLE_PHOTOS / label).glob("*.jpg"))[:PER_LABEL]:
            (dest / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, dest / label / photo.name)
            rel = f"{label}/{photo.name}"
            rel_paths.append(rel)
            labels[rel] = label
    return rel_paths, labels


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a daemon thread on a free port; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"webui-test-api-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ready", 120)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="package")
def running_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    from embedsvc.embedder import load_embedders
    from embedsvc.indexer.folder import folder_source
    from embedsvc.indexer.runner import run_index
    from embedsvc.main import create_app
    from embedsvc.store import Store

    base = tmp_path_factory.mktemp("webui-api")
    dataset = base / "dataset"
    rel_paths, labels = _copy_photos(dataset)
    allowed = base / "allowed"
    allowed.mkdir()
    settings = make_settings(
        base, models=MODELS, allowed_roots=[allowed], max_k=30, thumbnail_sizes=[128],
        max_image_pixels=4_000_000,
    )
    embedders = load_embedders(MODELS, settings=settings)
    with Store.from_settings(settings, owner="tests/webui fixture") as store:
        source = folder_source(dataset, labels_from_dirs=True)
        run_index(source, index_name=INDEX, embedders=embedders, store=store, settings=settings, workers=0)
    with serve(create_app(settings, embedders=embedders)) as url:
        yield RunningApi(url, dataset, allowed, rel_paths, labels, embedders)


@pytest.fixture
def ui_api_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Point the UI's settings (EMBEDSVC_API_URL) at a URL for one test."""
    from embedsvc.core.config import get_settings

    def point(url: str) -> None:
        monkeypatch.setenv("EMBEDSVC_API_URL", url)
        get_settings.cache_clear()

    yield point
    monkeypatch.delenv("EMBEDSVC_API_URL", raising=False)
    get_settings.cache_clear()
