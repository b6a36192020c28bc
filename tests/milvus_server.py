"""A real Milvus 2.3.5 standalone server for tests, fenced into a loopback-only network namespace.

Why the namespace: the PyPI ``milvus==2.3.5`` server listens on every interface whatever its config
says, and its components talk to each other over the host's address (see docs/findings.md). Inside a
namespace that only has ``lo`` it can reach nothing and nothing can reach it.

Why a forwarder instead of moving the test process into the namespace: network namespaces are
per *thread* on Linux, and gRPC keeps its own worker threads (created earlier, e.g. by Milvus Lite
tests, in the host namespace), so ``setns`` on the pytest process would leave some connects in the
wrong namespace. Instead a small forwarder process binds ``127.0.0.1:<random>`` in the host
namespace, then joins the server's namespace and relays each accepted connection to the server's
``127.0.0.1:<port>`` there. The tests connect to ``http://127.0.0.1:<random>`` like any client.

Usage::

    with MilvusTestServer() as server:
        client = MilvusClient(uri=server.uri)

Object-store mode (``MilvusTestServer(object_store=True)``): a moto S3 server (``moto[server]``) runs in the same
namespace, on ``127.0.0.1:9900`` there; the bucket ``s3_bucket`` is created in it and the Milvus server stores its
data there (``common.storageType: minio``, ``minio.*`` pointing at moto), which is how a Helm/Operator deployment
with MinIO or S3 runs, bulk imports included (the server reads import files from that bucket). The S3 port is
forwarded to the host like the others: ``s3_endpoint`` ("127.0.0.1:PORT"), ``s3_access_key``, ``s3_secret_key``.

Needs root (``unshare --net``); without it ``start()`` raises ``MilvusHarnessError`` with the reason.
Run standalone for manual checks: ``python tests/milvus_server.py serve [--s3]``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
#: Every component's advertised address; unset, 2.3.5 advertises the host's first unicast address.
_IP_KEYS = (
    "rootCoord.ip",
    "proxy.ip",
    "queryCoord.ip",
    "queryNode.ip",
    "indexNode.ip",
    "dataCoord.ip",
    "dataNode.ip",
)
_METRICS_PORT = 9091  # the namespace is empty, so fixed ports inside it cannot clash
_S3_PORT = 9900  # moto's port inside the namespace (object-store mode)
#: moto accepts any credentials; these are the ones the server and the tests sign with.
S3_ACCESS_KEY, S3_SECRET_KEY = "embedsvc-test", "embedsvc-test-secret"


class MilvusHarnessError(RuntimeError):
    """The test server could not be started; the message says why (never a silent skip)."""


def setns_net(path: str | os.PathLike[str]) -> None:
    """Move the *calling thread* into the network namespace bound at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "setns"):  # Python 3.12+
            os.setns(fd, CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _binary_dir() -> Path:
    """Decompress the server binaries once per machine (they are ~200 MB unpacked), under a lock."""
    import milvus

    cache = Path(tempfile.gettempdir()) / f"embedsvc-milvus-{milvus.__version__}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        milvus._initialize_data_files(str(cache))  # md5-checked: a no-op when already unpacked
    return cache / "bin"


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise MilvusHarnessError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}\n"
            "The Milvus test server needs root (CAP_SYS_ADMIN) to create a loopback-only network namespace."
        )


def _terminate(proc: subprocess.Popen) -> None:
    """SIGTERM a helper process (moto, the port forwarder), then SIGKILL what is still there after 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class MilvusTestServer:
    """Start/stop one Milvus 2.3.5 standalone server in its own network namespace.

    ``uri`` is valid after ``start()``. ``stop()`` sends SIGTERM and waits (the server is configured
    with ``common.gracefulStopTimeout=10``), killing it only after ``stop_timeout`` seconds.
    """

    def __init__(
        self,
        *,
        start_timeout: float = 90.0,
        stop_timeout: float = 30.0,
        object_store: bool = False,
        s3_bucket: str = "milvus-bucket",
    ) -> None:
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.object_store = object_store
        self.s3_bucket = s3_bucket
        self.s3_access_key, self.s3_secret_key = S3_ACCESS_KEY, S3_SECRET_KEY
        self.s3_endpoint = ""  # host:port on the host's loopback, valid after start() in object-store mode
        self.uri = ""
        self._moto: subprocess.Popen[bytes] | None = None
        self.tmp_dir: Path | None = None
        self._netns: Path | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self._forwarder: subprocess.Popen[str] | None = None
        self._logs: list[object] = []

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> MilvusTestServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> str:
        if os.geteuid() != 0:
            raise MilvusHarnessError(
                f"the Milvus test server must run as root to create a network namespace (euid {os.geteuid()})"
            )
        for tool in ("unshare", "nsenter", "ip", "umount"):
            if shutil.which(tool) is None:
                raise MilvusHarnessError(f"{tool!r} not found on PATH; it is needed to fence the server in")
        t0 = time.monotonic()
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="embedsvc-milvus-"))
        try:
            self._make_netns()
            config, proxy_port = self._configure()
            if self.object_store:
                self._start_moto()
            self._start_forwarder([proxy_port, _METRICS_PORT] + ([_S3_PORT] if self.object_store else []))
            if self.object_store:
                self._create_bucket(t0)
            self._start_server(config)
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        log.info("Milvus 2.3.5 test server ready at %s after %.1f s", self.uri, time.monotonic() - t0)
        return self.uri

    def stop(self) -> None:
        if self._server is not None:
            proc, self._server = self._server, None
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    log.warning("Milvus test server ignored SIGTERM for %.0f s; killing it", self.stop_timeout)
                    proc.kill()
                    proc.wait(timeout=10)
        if self._moto is not None:
            moto, self._moto = self._moto, None
            _terminate(moto)
        if self._forwarder is not None:
            fwd, self._forwarder = self._forwarder, None
            _terminate(fwd)
            if fwd.stdout:
                fwd.stdout.close()
            if fwd.stdin:
                fwd.stdin.close()
        for fh in self._logs:
            fh.close()  # type: ignore[attr-defined]
        self._logs.clear()
        if self._netns is not None:
            subprocess.run(["umount", str(self._netns)], capture_output=True, timeout=30)
            self._netns = None
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = None
        self.uri = ""
        self.s3_endpoint = ""

    # -- pieces ---------------------------------------------------------------------------------
    def _make_netns(self) -> None:
        assert self.tmp_dir is not None
        netns = self.tmp_dir / "netns"
        netns.touch()
        _run(["unshare", f"--net={netns}", "true"], "creating a network namespace")
        self._netns = netns
        _run(["nsenter", f"--net={netns}", "ip", "link", "set", "lo", "up"], "bringing up lo in the namespace")

    def _configure(self) -> tuple[object, int]:
        from milvus import MilvusServerConfig

        assert self.tmp_dir is not None
        config = MilvusServerConfig(data_dir=str(self.tmp_dir / "milvus"))
        for key in _IP_KEYS:
            config.set(key, "127.0.0.1")
        config.set("common.gracefulStopTimeout", 10)
        if self.object_store:
            for key, value in {
                "common.storageType": "minio",
                "minio.address": "127.0.0.1",
                "minio.port": _S3_PORT,
                "minio.accessKeyID": S3_ACCESS_KEY,
                "minio.secretAccessKey": S3_SECRET_KEY,
                "minio.useSSL": "false",
                "minio.bucketName": self.s3_bucket,
                "minio.rootPath": "files",
            }.items():
                config.set(key, value)
        # resolve() probes free ports on the host's loopback; they are free in the empty namespace too.
        config.resolve()
        return config, int(config.get("proxy_port"))

    def _start_moto(self) -> None:
        assert self.tmp_dir is not None and self._netns is not None
        log_file = open(self.tmp_dir / "moto.log", "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(log_file)
        self._moto = subprocess.Popen(
            ["nsenter", f"--net={self._netns}", sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
             "-p", str(_S3_PORT)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _create_bucket(self, t0: float) -> None:
        """Wait for moto (through the forwarder), then create the server's bucket."""
        import urllib3
        from minio import Minio

        self.s3_endpoint = f"127.0.0.1:{self._host_ports[_S3_PORT]}"
        client = Minio(
            self.s3_endpoint,
            access_key=S3_ACCESS_KEY,
            secret_key=S3_SECRET_KEY,
            secure=False,
            http_client=urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10), retries=False),
        )
        deadline = t0 + self.start_timeout
        while True:
            assert self._moto is not None
            if self._moto.poll() is not None:
                raise MilvusHarnessError(f"moto S3 server exited with {self._moto.returncode}:\n{self.log_tail()}")
            try:
                if not client.bucket_exists(self.s3_bucket):
                    client.make_bucket(self.s3_bucket)
                return
            except Exception as exc:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise MilvusHarnessError(f"moto S3 server not ready ({exc!r}):\n{self.log_tail()}") from exc
                time.sleep(0.2)

    def _start_server(self, config: object) -> None:  # config: written by resolve()
        assert self.tmp_dir is not None and self._netns is not None
        bin_dir = _binary_dir()
        data_dir = self.tmp_dir / "milvus"
        env = dict(os.environ)
        env.update(
            DEPLOY_MODE="STANDALONE",
            METRICS_PORT=str(_METRICS_PORT),
            MILVUS_RUN_DIR=str(data_dir / "run"),
            LD_LIBRARY_PATH=f"{bin_dir}:{os.environ.get('LD_LIBRARY_PATH', '')}",
        )
        out = open(data_dir / "logs" / "milvus-stdout.log", "wb")  # noqa: SIM115 - closed in stop()
        err = open(data_dir / "logs" / "milvus-stderr.log", "wb")  # noqa: SIM115
        self._logs += [out, err]
        # nsenter execs the binary, so this pid is the server's own and gets our SIGTERM directly.
        self._server = subprocess.Popen(
            ["nsenter", f"--net={self._netns}", str(bin_dir / "milvus"), "run", "standalone"],
            cwd=data_dir,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )

    def _start_forwarder(self, ports: list[int]) -> None:
        assert self._netns is not None
        self._forwarder = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "forward", str(self._netns), *map(str, ports)],
            stdin=subprocess.PIPE,  # EOF on stdin (our death) stops it
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._forwarder.stdout is not None
        line = self._forwarder.stdout.readline()
        if not line.startswith("READY "):
            raise MilvusHarnessError(f"port forwarder failed to start: {line!r}")
        self._host_ports = {int(k): v for k, v in json.loads(line[6:]).items()}
        self.uri = f"http://127.0.0.1:{self._host_ports[ports[0]]}"
        self._health_url = f"http://127.0.0.1:{self._host_ports[_METRICS_PORT]}/healthz"

    def _wait_ready(self, t0: float) -> None:
        from pymilvus import MilvusClient

        deadline = t0 + self.start_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            assert self._server is not None
            if self._server.poll() is not None:
                raise MilvusHarnessError(
                    f"Milvus test server exited with {self._server.returncode} during start-up:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self._health_url, timeout=2) as resp:
                    healthy = b"OK" in resp.read()
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                healthy, last_error = False, repr(exc)
            if healthy:
                try:
                    client = MilvusClient(uri=self.uri, timeout=5, alias=f"harness-{os.getpid()}")
                    client.list_collections(timeout=5)
                    client.close()
                    return
                except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                    last_error = repr(exc)
            time.sleep(0.5)
        raise MilvusHarnessError(
            f"Milvus test server not ready after {self.start_timeout:.0f} s ({last_error}):\n{self.log_tail()}"
        )

    def log_tail(self, n: int = 30) -> str:
        if self.tmp_dir is None:
            return ""
        lines: list[str] = []
        for name in ("milvus-stderr.log", "milvus-stdout.log", "moto.log"):
            path = self.tmp_dir / ("moto.log" if name == "moto.log" else Path("milvus") / "logs" / name)
            if path.exists():
                lines += [f"--- {name}"] + path.read_text(errors="replace").splitlines()[-n:]
        return "\n".join(lines)


# -- the forwarder process --------------------------------------------------------------------
def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _serve_port(listener: socket.socket, target_port: int) -> None:
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port), timeout=10)
        except OSError:
            client.close()
            continue
        upstream.settimeout(None)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def forward_main(netns: str, target_ports: list[int]) -> None:
    """Listen on host loopback, then join ``netns`` and relay to the same ports' targets in there."""
    listeners = {}
    for port in target_ports:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))  # bound now, in the host namespace; sockets keep their namespace
        sock.listen(64)
        listeners[port] = sock
    setns_net(netns)  # only this (main) thread; the accept threads below inherit it
    for port, sock in listeners.items():
        threading.Thread(target=_serve_port, args=(sock, port), daemon=True).start()
    sys.stdout.write("READY " + json.dumps({p: s.getsockname()[1] for p, s in listeners.items()}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()  # returns at EOF, i.e. when the parent closes the pipe or dies


def main(argv: list[str]) -> int:
    if argv[:1] == ["forward"]:
        forward_main(argv[1], [int(p) for p in argv[2:]])
        return 0
    if argv[:1] == ["serve"]:
        logging.basicConfig(level=logging.INFO)
        with MilvusTestServer(object_store="--s3" in argv[1:]) as server:
            where = f" (S3 at {server.s3_endpoint}, bucket {server.s3_bucket})" if server.object_store else ""
            sys.stdout.write(f"Milvus test server at {server.uri}{where}; Ctrl+C stops it\n")
            sys.stdout.flush()
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
        return 0
    sys.stderr.write("usage: milvus_server.py serve [--s3] | forward NETNS PORT...\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
