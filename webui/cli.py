"""`embedsvc ui`: serve the Streamlit comparison page against a running API.

The page is a plain HTTP client of the API; the only thing it needs to know is the API's URL, which
reaches the Streamlit process as ``EMBEDSVC_API_URL`` so that the page reads it through the same typed
settings as everything else.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from embedsvc.cli_common import check_port_free
from embedsvc.core.config import get_settings

APP_PATH = Path(__file__).resolve().parent / "app.py"
API_URL_ENV = "EMBEDSVC_API_URL"


def streamlit_command(*, port: int, host: str = "127.0.0.1", app_path: Path = APP_PATH) -> list[str]:
    """The `streamlit run` command line: headless, no telemetry, no file watcher (it is a served app)."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_path),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        "--browser.gatherUsageStats",
        "false",
        "--global.developmentMode",
        "false",
        "--client.showSidebarNavigation",  # the pages draw their own, readably named links
        "false",
        "--client.toolbarMode",
        "viewer",
    ]


def ui_environment(api_url: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the caller's, with the API URL the page should talk to."""
    env = dict(os.environ if base is None else base)
    env[API_URL_ENV] = api_url.rstrip("/")
    return env


def run_ui(*, port: int, host: str, api_url: str) -> None:
    """Replace this process with Streamlit, so that Ctrl-C, SIGTERM (docker stop, `make demo`) and the
    exit status reach Streamlit itself and no orphaned server is left behind."""
    cmd = streamlit_command(port=port, host=host)
    os.execve(cmd[0], cmd, ui_environment(api_url))


def register(app: typer.Typer) -> None:
    """Add `embedsvc ui` to the `embedsvc` app."""

    @app.command("ui")
    def ui_cmd(
        port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port the page is served on.")] = 8501,
        host: Annotated[str, typer.Option("--host", help="Address the page listens on.")] = "127.0.0.1",
        api_url: Annotated[
            str | None, typer.Option("--api-url", help="Base URL of the embedsvc API. Default: settings' api_url.")
        ] = None,
    ) -> None:
        """Serve the side-by-side comparison page (Streamlit) for a running `embedsvc serve`."""
        url = api_url or get_settings().api_url
        if not url.startswith(("http://", "https://")):
            raise typer.BadParameter(f"expects http(s)://host:port, got {url!r}", param_hint="--api-url")
        check_port_free(host, port, "--port N")
        run_ui(port=port, host=host, api_url=url)
