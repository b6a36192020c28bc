"""Slow forwards on Ray workers, so a test can kill a worker or the driver mid-run (the Ray twin of slow_cli.py).

``slow_forwards`` is a Ray ``worker_process_setup_hook``: in each worker, every forward first sleeps the
seconds written in the file that ``$EMBEDSVC_TEST_FORWARD_DELAY_FILE`` names (0 when it is absent or
empty), so one test can slow a module's Ray down and the next speed it up again. ``"SECONDS HOLD"`` also
holds every forward after a worker's first HOLD until the file changes: a run that is killed while held
has certainly written only part of its rows, however late its writes land.

``python tests/indexer/ray_slow.py index folder ... --engine ray``: the real CLI, whose own local Ray
gets that hook. Nothing else changes: same settings, same pipeline, same store.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

DELAY_FILE_ENV = "EMBEDSVC_TEST_FORWARD_DELAY_FILE"
REPO = Path(__file__).resolve().parents[2]


def runtime_env(delay_file: Path | str) -> dict[str, Any]:
    """The ``ray.init(runtime_env=...)`` that slows every worker's forwards by what ``delay_file`` says."""
    return {
        "worker_process_setup_hook": "tests.indexer.ray_slow.slow_forwards",
        "env_vars": {DELAY_FILE_ENV: str(delay_file), "PYTHONPATH": str(REPO)},
    }


def _delay(path: str) -> tuple[float, int | None]:
    """(seconds per forward, forwards per worker before the rest are held; None: never held)."""
    try:
        seconds, *hold = Path(path).read_text().split() or ["0"]
        return float(seconds), int(hold[0]) if hold else None
    except (OSError, ValueError):
        return 0.0, None


def slow_forwards() -> None:
    """Slow ``Embedder.embed`` down once ``embedsvc.embedder`` is imported, in the workers that import it.

    Importing it here would put torch into every Ray worker (Ray Data's own actors too): ~8 s of CPU each.
    """
    path = os.environ.get(DELAY_FILE_ENV)
    if not path:
        return
    sys.meta_path.insert(0, _PatchOnImport(path))


def _patch(module: Any, path: str) -> None:
    original = module.Embedder.embed
    calls = 0

    def slow_embed(self: Any, batch: Any) -> Any:
        nonlocal calls
        calls += 1
        seconds, hold = _delay(path)
        while hold is not None and calls > hold:
            time.sleep(0.2)
            seconds, hold = _delay(path)
        time.sleep(seconds)
        return original(self, batch)

    module.Embedder.embed = slow_embed


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """A finder that lets the real one load ``embedsvc.embedder``, then patches the loaded module."""

    def __init__(self, path: str) -> None:
        self.path = path

    def find_spec(self, name: str, target: Any = None, *args: Any) -> Any:
        if name != "embedsvc.embedder":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader, path = spec.loader, self.path

        class PatchingLoader(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                _patch(module, path)

        spec.loader = PatchingLoader()
        return spec


def main() -> None:
    import ray

    original_init = ray.init

    def init(*args: Any, **kwargs: Any) -> Any:
        kwargs["runtime_env"] = runtime_env(os.environ[DELAY_FILE_ENV])
        return original_init(*args, **kwargs)

    ray.init = init
    from embedsvc.cli import app

    app(prog_name="embedsvc")


if __name__ == "__main__":
    main()
