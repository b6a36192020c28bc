"""Fixtures for the indexer tests: small random-weight models at 64 px, loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from embedsvc.core.config import get_settings
from embedsvc.embedder import Embedder, load_embedder
from tests.support import make_settings

TWO_MODELS = ("convnext_tiny", "deit3_small")


@pytest.fixture(scope="session")
def session_settings(tmp_path_factory: pytest.TempPathFactory):
    return make_settings(tmp_path_factory.mktemp("indexer-models"))


@pytest.fixture(scope="session")
def two_embedders(session_settings) -> dict[str, Embedder]:
    """ConvNeXt-T and DeiT-III-S, seeded random weights, 64 px, CPU: the same weights in every process."""
    return {key: load_embedder(key, settings=session_settings) for key in TWO_MODELS}


@pytest.fixture
def settings(tmp_path: Path):
    """Per-test settings: a private data dir (Lite file, reports)."""
    return make_settings(tmp_path)


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Offline, 64 px models, no inherited Milvus URI; applied to this process (CliRunner) and subprocesses."""
    for var in ("MILVUS_URI", "EMBEDSVC_MILVUS_URI", "EMBEDSVC_MODELS", "EMBEDSVC_NORMALIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("EMBEDSVC_OFFLINE", "1")
    monkeypatch.setenv("EMBEDSVC_INPUT_SIZE", "64")
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    yield dict(os.environ)
    get_settings.cache_clear()
