"""`embedsvc ui`: runs `streamlit run webui/app.py` with the API URL handed over through the settings' env."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from typer.testing import CliRunner

from embedsvc.cli import app as cli_app
from embedsvc.core.config import Settings, get_settings
from embedsvc.webui import cli as ui_cli


def fake_exec(seen: dict[str, Any]) -> Any:
    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        seen.update(path=path, cmd=argv, env=env)

    return execve


def test_ui_command_runs_streamlit_with_the_api_url(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(ui_cli.os, "execve", fake_exec(seen))
    result = CliRunner().invoke(cli_app, ["ui", "--port", "8642", "--api-url", "http://10.0.0.5:9000/"])
    assert result.exit_code == 0, result.output
    cmd, env = seen["cmd"], seen["env"]
    assert seen["path"] == cmd[0] == sys.executable  # exec: signals reach Streamlit, nothing is orphaned
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(ui_cli.APP_PATH)
    assert cmd[cmd.index("--server.port") + 1] == "8642"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    assert env["EMBEDSVC_API_URL"] == "http://10.0.0.5:9000"
    # The page reads it back through the typed settings, like every other setting.
    monkeypatch.setenv("EMBEDSVC_API_URL", env["EMBEDSVC_API_URL"])
    assert Settings().api_url == "http://10.0.0.5:9000"


def test_ui_command_defaults_to_the_settings_api_url(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(ui_cli.os, "execve", fake_exec(seen))
    monkeypatch.setenv("EMBEDSVC_API_URL", "http://api.internal:8000")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli_app, ["ui"])
    finally:
        monkeypatch.delenv("EMBEDSVC_API_URL")
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert seen["env"]["EMBEDSVC_API_URL"] == "http://api.internal:8000"
    assert seen["cmd"][seen["cmd"].index("--server.port") + 1] == "8501"
