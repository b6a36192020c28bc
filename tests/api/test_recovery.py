"""Milvus going away and coming back: /ready says 503 with the reason, searches get a 503 JSON, and the
service recovers by itself, against a real Milvus 2.3.5 server and against Milvus Lite.

Server: the app reaches Milvus through a TCP relay that the test cuts and restores (the network path
goes down for real; the server keeps its data). Lite: the embedded server process is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from fastapi.testclient import TestClient

from embedsvc.embedder import Embedder, load_embedders
from embedsvc.main import create_app
from embedsvc.store import Store
from tests.support import SAMPLE_PHOTOS, make_settings

PHOTOS = sorted(SAMPLE_PHOTOS.glob("*/*.jpg"))[::12][:5]


class TcpRelay:
    """127.0.0.1:<port> -> target; ``cut()`` drops the listener and every live connection."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpRelay:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept(); close() alone does not
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.start()


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    settings = make_settings(tmp_path_factory.mktemp("lite0"))
    return load_embedders(["efficientnet_lite0"], settings=settings)["efficientnet_lite0"]


def _build_index(uri: str, index: str, dataset: Path, settings_dir: Path, embedders: dict[str, Embedder]) -> None:
    from embedsvc.indexer.folder import folder_source
    from embedsvc.indexer.runner import run_index

    settings = make_settings(settings_dir, milvus_uri=uri)
    with Store(uri, owner="tests/api recovery") as store:
        run_index(
            folder_source(dataset), index_name=index, embedders=embedders, store=store, settings=settings, workers=0
        )


def _dataset(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for photo in PHOTOS:
        (root / photo.name).write_bytes(photo.read_bytes())
    return root


def _search(client: TestClient, index: str):
    return client.post("/search", params={"index": index, "k": 3}, files={"image": ("q.jpg", PHOTOS[0].read_bytes())})


def _wait_ready(client: TestClient, timeout: float = 60.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if client.get("/ready").status_code == 200:
            return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"/ready not 200 within {timeout} s: {client.get('/ready').text}")


@pytest.fixture
def relay(milvus_server_uri: str) -> Iterator[TcpRelay]:
    target = urlparse(milvus_server_uri)
    relay = TcpRelay((target.hostname or "127.0.0.1", target.port or 19530)).start()
    yield relay
    relay.cut()


@pytest.mark.integration
def test_real_server_outage_gives_503_and_recovers(
    milvus_server_uri: str, relay: TcpRelay, lite0: Embedder, tmp_path: Path
) -> None:
    index = f"recovery_{uuid.uuid4().hex[:8]}"
    _build_index(milvus_server_uri, index, _dataset(tmp_path / "ds"), tmp_path, {"efficientnet_lite0": lite0})
    settings = make_settings(tmp_path, milvus_uri=relay.uri, models=["efficientnet_lite0"])

    def factory() -> Store:  # short timeouts: an outage must answer in seconds, not minutes
        return Store(relay.uri, owner="tests/api app", timeout=3, connect_timeout=2)

    app = create_app(settings, embedders={"efficientnet_lite0": lite0}, store_factory=factory)
    with TestClient(app) as client:
        assert client.get("/ready").json()["milvus"] == "ok"
        before = _search(client, index)
        assert before.status_code == 200, before.text
        assert len(before.json()["models"][0]["neighbours"]) == 3

        relay.cut()
        t0 = time.monotonic()
        down = client.get("/ready")
        assert down.status_code == 503, down.text
        body = down.json()
        assert body["ready"] is False and body["milvus"] == "unavailable"
        assert "Milvus unreachable" in body["reason"] and body["models_loaded"] == ["efficientnet_lite0"]
        assert time.monotonic() - t0 < 30
        for resp in (_search(client, index), client.get("/indexes"), client.get(f"/indexes/{index}")):
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"] == "milvus_unavailable" and resp.headers["retry-after"]
            assert "Traceback" not in resp.text
        assert client.get("/health").status_code == 200  # liveness is not readiness
        assert client.get("/metrics").status_code == 200

        relay.restore()
        waited = _wait_ready(client)
        after = _search(client, index)
        assert after.status_code == 200, after.text
        assert after.json()["models"][0]["neighbours"] == before.json()["models"][0]["neighbours"]
        assert waited < 30


def _lite_server_pids(db: Path) -> list[int]:
    """Child processes of this test process that run the Milvus Lite server for ``db``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        if ppid == os.getpid() and str(db) in cmdline:
            pids.append(int(proc.name))
    return pids


def test_lite_server_killed_service_recovers(lite0: Embedder, tmp_path: Path) -> None:
    """Milvus Lite's embedded server dies (OOM killer, crash): the next request starts a new one."""
    settings = make_settings(tmp_path, models=["efficientnet_lite0"])
    db = Path(settings.resolved_milvus_uri).resolve()
    _build_index(str(db), "lite", _dataset(tmp_path / "ds"), tmp_path, {"efficientnet_lite0": lite0})

    def factory() -> Store:
        return Store(str(db), owner="tests/api app", timeout=3, connect_timeout=2)

    app = create_app(settings, embedders={"efficientnet_lite0": lite0}, store_factory=factory)
    with TestClient(app) as client:
        before = _search(client, "lite")
        assert before.status_code == 200, before.text
        (old_pid,) = _lite_server_pids(db)
        os.kill(old_pid, signal.SIGKILL)  # the Lite server is our own child process
        deadline = time.monotonic() + 10
        while old_pid in _lite_server_pids(db) and time.monotonic() < deadline:
            time.sleep(0.1)
        _wait_ready(client, timeout=60)
        after = _search(client, "lite")
        assert after.status_code == 200, after.text
        assert after.json()["models"][0]["neighbours"] == before.json()["models"][0]["neighbours"]
        (new_pid,) = _lite_server_pids(db)
        assert new_pid != old_pid
