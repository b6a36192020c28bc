"""`make demo` with real processes and real signals: every way of stopping it stops everything it started.

One model (DeiT-III-S, seeded random weights) at 64 px keeps each demo at ~20-40 s on two shared cores.
"""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from embedsvc.demo import DemoError, demo_models, wait_ready
from tests.support import REPO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def demo_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, EMBEDSVC_DATA_DIR=str(tmp_path / "data"), EMBEDSVC_OFFLINE="1", EMBEDSVC_INPUT_SIZE="64",
               COLUMNS="200")
    for var in ("MILVUS_URI", "EMBEDSVC_MILVUS_URI", "EMBEDSVC_MODELS", "EMBEDSVC_DEBUG"):
        env.pop(var, None)
    return env


def demo_cmd(api_port: int, ui_port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "embedsvc.demo", "-m", "deit3_small", "--api-port", str(api_port), "--ui-port",
            str(ui_port), *extra]


def wait_for_text(log: Path, text: str, proc: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace")
        if text in content:
            return content
        assert proc.poll() is None, f"demo exited with {proc.returncode}:\n{content[-4000:]}"
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not seen within {timeout_s} s:\n{log.read_text(errors='replace')[-4000:]}")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "SIGINT", "SIGKILL"])
def test_every_way_of_stopping_the_demo_stops_everything(tmp_path: Path, how: str) -> None:
    api_port, ui_port = free_port(), free_port()
    log = tmp_path / "demo.log"
    index = how == "SIGTERM"  # one of them also indexes the sample photos (and shows that log)
    with log.open("w") as out:
        demo = subprocess.Popen(demo_cmd(api_port, ui_port, *([] if index else ["--skip-index"])), cwd=REPO,
                                env=demo_env(tmp_path), stdout=out, stderr=subprocess.STDOUT)
    try:
        text = wait_for_text(log, "UI:  http://", demo, 400)
        family = psutil.Process(demo.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in family)
        assert " serve " in names and "streamlit" in names and "milvus" in names, names
        demo.send_signal(getattr(signal, how))
        _, alive = psutil.wait_procs(family, timeout=60)
        assert not alive, [(p.pid, p.cmdline()) for p in alive]
        demo.wait(30)
    finally:
        demo.kill()
        demo.wait(30)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-4000:]
    assert port_is_free(api_port) and port_is_free(ui_port)
    assert not (tmp_path / "data" / "milvus.db.owner.json").exists()  # the API released the database
    if how != "SIGKILL":
        assert demo.returncode == 0, (demo.returncode, text[-3000:])
        assert f"stopping ({how})" in text
    if index:
        assert "indexed samples" in text
        assert "mvccTs" not in text  # pymilvus' per-collection warning is quieted in every process
        assert "no weights reachable" not in text  # the loader says it once; the demo does not repeat it


def test_port_in_use_is_one_line_naming_port_holder_and_flag(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        start = time.monotonic()
        proc = subprocess.run(demo_cmd(free_port(), port), cwd=REPO, env=demo_env(tmp_path), capture_output=True,
                              text=True, timeout=300)
        elapsed = time.monotonic() - start
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert f"port {port} is already in use by pid {os.getpid()}" in errors[0]
    assert "--ui-port N" in errors[0] and "EMBEDSVC_DEMO_UI_PORT=N" in errors[0]
    assert "indexed samples" not in proc.stderr and elapsed < 60  # checked before any indexing


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def test_readiness_is_the_childs_own_not_whatever_answers_on_the_port() -> None:
    """A stale server answering 200 on the port does not make a child ready; the child's own server does."""
    stale = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    port = stale.server_address[1]
    threading.Thread(target=stale.serve_forever, daemon=True).start()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(DemoError, match="did not become ready on port"):
            wait_ready("API", f"http://127.0.0.1:{port}/ready", port, sleeper, timeout_s=3)
    finally:
        sleeper.kill()
        sleeper.wait()
        stale.shutdown()
        stale.server_close()

    quitter = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    quitter.wait()
    with pytest.raises(DemoError, match="exited with code 3"):
        wait_ready("API", f"http://127.0.0.1:{port}/ready", port, quitter, timeout_s=3)

    own = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(own), "--bind", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready("UI", f"http://127.0.0.1:{own}/", own, server, timeout_s=30)  # returns: its own listener
    finally:
        server.kill()
        server.wait()


def test_demo_adds_the_three_offline_lite_models_to_the_defaults() -> None:
    from embedsvc.models.registry import get_spec, list_specs

    defaults = [spec.key for spec in list_specs(default_only=True)]
    lite = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert demo_models() == [*defaults, *lite]
    assert all(get_spec(key).weights.kind == "package" for key in lite)  # real weights, no hub needed
