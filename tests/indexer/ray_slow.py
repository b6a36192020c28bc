"""Slow forwards on Ray workers, so a test can kill a worker or the driver mid-run (the Ray twin of slow_cli.py).

``slow_forwards`` is a Ray ``worker_process_setup_hook``: in each worker, every forward first sleeps the
seconds written in the file that ``$EMBEDSVC_TEST_FORWARD_DELAY_FILE`` names (0 when it is absent or
empty), so one test can slow a module's Ray down and the next speed it up again.

``python tests/indexer/ray_slow.py index folder ... --engine ray``: the real CLI, whose own local Ray
gets that hook. Nothing else changes: same settings, same pipeline, same store.
"""

from __future__ import annotations

import os
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


def _delay(path: str) -> float:
    try:
        return float(Path(path).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0.0


def slow_forwards() -> None:
    path = os.environ.get(DELAY_FILE_ENV)
    if not path:
        return
    from embedsvc.embedder import Embedder

    original = Embedder.embed

    def slow_embed(self: Embedder, batch):  # noqa: ANN001
        time.sleep(_delay(path))
        return original(self, batch)

    Embedder.embed = slow_embed  # type: ignore[method-assign]


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
