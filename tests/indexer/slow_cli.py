"""The real `embedsvc` CLI with every forward pass slowed down, so a test can kill it mid-run.

Usage: ``python tests/indexer/slow_cli.py SECONDS_PER_BATCH index folder ...``. Nothing else changes:
same settings, same pipeline, same store.
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    delay = float(sys.argv.pop(1))
    from embedsvc.embedder import Embedder

    original = Embedder.embed

    def slow_embed(self: Embedder, batch):  # noqa: ANN001
        time.sleep(delay)
        return original(self, batch)

    Embedder.embed = slow_embed  # type: ignore[method-assign]
    from embedsvc.cli import app

    app(prog_name="embedsvc")


if __name__ == "__main__":
    main()
