"""Shared fixtures."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# The suite never reads the developer's own Hugging Face cache (real weights there would replace the
# seeded random ones the tests expect) and never waits on a hub: set before anything imports huggingface_hub.
_HF_HOME = tempfile.mkdtemp(prefix="embedsvc-tests-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_CACHE"] = os.path.join(_HF_HOME, "hub")
os.environ.pop("HF_HUB_OFFLINE", None)
# The suite's numeric tolerances (vectors equal to 1e-5, a query's own row at distance < 1e-4) are fp32's, and
# `auto` is bf16 on CPUs with bf16 units: pin fp32 here (CLI subprocesses inherit it). bf16 and `auto` have their
# own tests (tests/models/test_precision.py), which set the precision they test.
os.environ["EMBEDSVC_PRECISION"] = "fp32"
# `auto` compiles a service's CPU models in the background (~1 min of both cores per app): off for the suite; the
# background compile has its own tests (tests/api/test_background_compile.py).
os.environ["EMBEDSVC_COMPILE"] = "off"


# -- Milvus -------------------------------------------------------------------------------------
@pytest.fixture
def lite_uri(tmp_path: Path) -> str:
    """A fresh Milvus Lite file path (the file is created on first open)."""
    return str(tmp_path / "milvus.db")


@pytest.fixture(scope="session")
def milvus_server_uri() -> Iterator[str]:
    """URI of a real Milvus 2.3.5 server, started once per session in a loopback-only namespace.

    Fails (never skips) when the server cannot start, e.g. without root for ``unshare --net``.
    """
    from tests.milvus_server import MilvusHarnessError, MilvusTestServer

    server = MilvusTestServer()
    try:
        server.start()
    except MilvusHarnessError as exc:
        pytest.fail(f"Milvus test server unavailable: {exc}", pytrace=False)
    try:
        yield server.uri
    finally:
        server.stop()
