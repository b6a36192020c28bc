"""Fixtures for the indexer tests: small random-weight models at 64 px, loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

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
