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
