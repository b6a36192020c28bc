"""`embedsvc serve`: flags become settings, and uvicorn runs exactly one worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from embedsvc.cli import app as cli_app
from embedsvc.core.config import get_settings


def test_serve_flags_reach_the_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    captured: dict[str, Any] = {}

    def fake_run(app: Any, **kwargs: Any) -> None:
        captured["app"], captured["kwargs"] = app, kwargs

    monkeypatch.setattr("uvicorn.run", fake_run)
    monkeypatch.setenv("EMBEDSVC_OFFLINE", "true")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            cli_app,
            [
                "serve",
                "--host", "0.0.0.0",
                "--port", "8123",
                "--milvus-uri", str(tmp_path / "m.db"),
                "--data-dir", str(tmp_path / "data"),
                "-m", "efficientnet_lite0",
                "-m", "deit3_small",
                "--device", "cpu",
                "--allow-random-weights",
                "--allowed-root", str(tmp_path),
                "--cors-origin", "http://ui.example",
                "--input-size", "64",
            ],
        )  # fmt: skip
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    kwargs = captured["kwargs"]
    assert kwargs["workers"] == 1 and kwargs["host"] == "0.0.0.0" and kwargs["port"] == 8123
    settings = captured["app"].state.settings
    assert settings.models == ["efficientnet_lite0", "deit3_small"]
    assert settings.resolved_milvus_uri == str(tmp_path / "m.db")
    assert settings.allowed_roots == [tmp_path.resolve()]
    assert settings.cors_origins == ["http://ui.example"]
    assert settings.allow_random_weights and settings.device == "cpu" and settings.input_size == 64
    assert settings.data_dir == tmp_path / "data"


def test_serve_really_serves_and_stops_cleanly(tmp_path: Path) -> None:
    """The real command: uvicorn, one model at 64 px, an empty Lite file; /ready, then SIGTERM."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, EMBEDSVC_OFFLINE="true")
    cmd = [sys.executable, "-m", "embedsvc.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path)]
    cmd += ["-m", "efficientnet_lite0", "--input-size", "64", "--device", "cpu", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert ready is not None and ready.status_code == 200, (ready and ready.text, proc.poll())
        assert ready.json()["models_loaded"] == ["efficientnet_lite0"]
        assert httpx.get(f"http://127.0.0.1:{port}/indexes").json() == {"data": [], "count": 0, "max_k": 100}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says what stopped it.
    assert proc.returncode in (0, -signal.SIGTERM), out[-2000:]
    assert "Stopped Milvus Lite server" in out  # the lifespan's shutdown ran
    assert not (tmp_path / "milvus.db.owner.json").exists()  # the Lite file was released
