"""Shared fixtures of the store tests: a Store per engine, Milvus Lite 2.5.1 (a temp file) and a real
Milvus 2.3.5 server. Server tests carry ``@pytest.mark.integration`` and run by default; the server is
started once per session in a loopback-only network namespace (tests/milvus_server.py). The stores are
shared by the whole package (creating collections is slow on a server)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedsvc.results import Neighbour
from embedsvc.store import Store, row_id

REPO = Path(__file__).resolve().parents[2]
DIM = 32
N = 300
N_LABELS = 4

ENGINES = [
    pytest.param("lite", id="lite"),
    pytest.param("server", id="server", marks=pytest.mark.integration),
]


def manifest(dim: int = DIM, **overrides: object) -> dict:
    base = {
        "model_name": "tiny_test.v1",
        "weights": {"source": "seeded-random", "sha256": "ab" * 32},
        "dim": dim,
        "normalize": True,
        "preprocessing": {"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.5] * 3},
    }
    base.update(overrides)
    return base


def make_rows(index: str, n: int = N, dim: int = DIM, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    rows = []
    for i in range(n):
        rel = f"class_{i % N_LABELS}/img_{i:04d}.png"
        rows.append(
            {
                "id": row_id(index, rel),
                "vector": vecs[i],
                "rel_path": rel,
                "content_hash": f"h{i}",
                "label_id": i % N_LABELS,
                "label_name": f"class_{i % N_LABELS}",
                "width": 40 + i,
                "height": 30 + i,
            }
        )
    return rows


def numpy_topk(rows: list[dict], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact search, squared L2, as the reference."""
    ids = np.array([r["id"] for r in rows], dtype=np.int64)
    base = np.stack([r["vector"] for r in rows]).astype(np.float64)
    q = queries.astype(np.float64)
    d2 = (q**2).sum(1)[:, None] - 2 * q @ base.T + (base**2).sum(1)[None, :]
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(d2, order, axis=1)


def assert_hits_equal(hits: list[list[Neighbour]], ref_ids: np.ndarray, ref_d2: np.ndarray) -> None:
    assert len(hits) == len(ref_ids)
    for got, want_ids, want_d in zip(hits, ref_ids, ref_d2, strict=True):
        assert [h.id for h in got] == want_ids.tolist()
        np.testing.assert_allclose([h.distance for h in got], want_d, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="package", params=ENGINES)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    if request.param == "lite":
        uri = str(tmp_path_factory.mktemp("lite") / "milvus.db")
    else:
        uri = request.getfixturevalue("milvus_server_uri")
    with Store(uri, owner="pytest test_store") as s:
        yield s


@contextlib.contextmanager
def fresh_index(store: Store, prefix: str) -> Iterator[str]:
    """A unique index name in ``store``, dropped afterwards (the ``index`` fixtures of the store tests)."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    yield name
    if store.models_of(name):
        store.drop_index(name)


def stored_by_id(store: Store, index: str, key: str, rows: list[dict]) -> dict[int, dict]:
    """id -> stored row (with its vector) for the ids of ``rows`` that ``store`` holds."""
    return {r["id"]: r for r in store.get_rows(index, key, [r["id"] for r in rows], with_vectors=True)}


@pytest.fixture
def index(store: Store) -> Iterator[str]:
    """A unique index name, dropped afterwards."""
    with fresh_index(store, "t") as name:
        yield name


def fill(store: Store, index: str) -> tuple[str, list[dict]]:
    store.ensure_collection(index, "m", manifest())
    rows = make_rows(index)
    store.upsert(index, "m", rows)
    return index, rows


@pytest.fixture(scope="package")
def shared_filled(store: Store) -> Iterator[tuple[str, list[dict]]]:
    """300 x 32 rows for the read-only tests (one per engine: creating collections is slow on a server)."""
    index, rows = fill(store, f"ro-{uuid.uuid4().hex[:8]}")
    yield index, rows
    store.drop_index(index)


@pytest.fixture
def filled(store: Store, index: str) -> tuple[str, list[dict]]:
    """Like shared_filled, but private to a test that changes rows."""
    return fill(store, index)
