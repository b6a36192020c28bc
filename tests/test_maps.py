"""Per-model 2-D maps (embedsvc.maps) on a real Milvus Lite store: projections, the shared seeded sample,
the PCA fallback, the cache per index version and the messages for indexes too small to map."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import numpy as np
import pytest

from embedsvc import maps
from embedsvc.store import IndexNotFoundError, Store, row_id
from tests.store.conftest import manifest

MODELS = {"wide": 48, "mid": 16, "narrow": 6}  # model key -> dim
N_ROWS = 45
N_CLUSTERS = 3


def clustered(n: int, dim: int, seed: int, n_clusters: int = N_CLUSTERS) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, cluster of each row): tight clusters around random directions."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)) * 4
    labels = np.arange(n) % n_clusters
    return (centres[labels] + 0.3 * rng.standard_normal((n, dim))).astype(np.float32), labels


def nn_label_agreement(xy: np.ndarray, labels: np.ndarray) -> float:
    """Share of points whose nearest other point in the map has their label."""
    d = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float((labels[d.argmin(1)] == labels).mean())


def rows_for(index: str, vectors: np.ndarray, labels: np.ndarray, start: int = 0) -> list[dict]:
    out = []
    for i, (vec, lab) in enumerate(zip(vectors, labels, strict=True), start=start):
        rel = f"class_{lab}/img_{i:03d}.png"
        out.append(
            {
                "id": row_id(index, rel),
                "vector": vec,
                "rel_path": rel,
                "content_hash": f"h{i}",
                "label_id": int(lab),
                "label_name": f"class_{lab}",
                "width": 10,
                "height": 10,
            }
        )
    return out


def fill(store: Store, index: str, n: int = N_ROWS, models: dict[str, int] = MODELS) -> dict[int, dict]:
    """``n`` clustered rows in every model (same ids and labels); returns id -> row of the first model."""
    first: dict[int, dict] = {}
    for j, (key, dim) in enumerate(models.items()):
        vectors, labels = clustered(n, dim, seed=j)
        store.ensure_collection(index, key, manifest(dim=dim, display_name=f"Model {key}"))
        rows = rows_for(index, vectors, labels)
        store.upsert(index, key, rows)
        if not first:
            first = {r["id"]: r for r in rows}
    return first


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    with Store(str(tmp_path_factory.mktemp("maps") / "milvus.db"), owner="tests/test_maps") as s:
        yield s


@pytest.fixture(scope="module")
def shared(store: Store) -> tuple[str, dict[int, dict]]:
    """A read-only index of three models (dims 48, 16, 6) over the same 45 clustered rows."""
    return "maps-ro", fill(store, "maps-ro")


# -- projections --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["pca", "umap"])
def test_projection_shape_determinism_and_clusters(method: str) -> None:
    vectors, labels = clustered(90, 64, seed=3)
    xy = maps.project(vectors, method, seed=5)
    assert xy.shape == (90, 2) and np.isfinite(xy).all()
    assert np.array_equal(xy, maps.project(vectors, method, seed=5))  # seeded: the same map again
    assert nn_label_agreement(xy, labels) >= 0.95  # the clusters stay apart in 2-D
    if method == "umap":
        assert not np.array_equal(xy, maps.project(vectors, method, seed=6))


def test_pca_on_large_inputs_matches_the_exact_svd() -> None:
    """Above a few dozen rows and columns PCA takes the randomised path; its axes are the exact ones."""
    vectors, _ = clustered(400, 300, seed=1, n_clusters=6)
    got = maps.project_pca(vectors, seed=0)
    x = maps.normalise(vectors).astype(np.float64)
    x -= x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    exact = x @ vt[:2].T
    for axis in range(2):
        assert abs(np.corrcoef(got[:, axis], exact[:, axis])[0, 1]) > 0.9999


def test_exact_neighbours_match_brute_force() -> None:
    x, _ = clustered(70, 8, seed=2)
    idx, dist = maps.exact_neighbours(x, 5, chunk=16)  # several chunks
    d = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1))
    assert (idx[:, 0] == np.arange(70)).all() and np.allclose(dist[:, 0], 0, atol=1e-3)
    np.testing.assert_allclose(dist, np.sort(d, axis=1)[:, :5], atol=1e-3)
    np.testing.assert_allclose(np.take_along_axis(d, idx, axis=1), dist, atol=1e-3)


def test_too_few_points_is_refused() -> None:
    with pytest.raises(maps.TooFewPointsError, match="at least 3 points, got 2"):
        maps.project(np.ones((2, 4), np.float32), "pca")


# -- the store-backed maps ----------------------------------------------------------------------------


def test_maps_share_one_seeded_sample_across_models(store: Store, shared: tuple[str, dict[int, dict]]) -> None:
    index, rows = shared
    result = maps.compute_maps(store, index, sample=20, seed=1, method="pca")
    assert [m.model for m in result.models] == sorted(MODELS)  # the store lists models by key
    assert result.total_rows == N_ROWS and len(result.rows) == 20
    ids = [r["id"] for r in result.rows]
    assert len(set(ids)) == 20 and set(ids) <= set(rows)
    for point in result.rows:  # labels and paths are the stored ones
        stored = rows[point["id"]]
        assert (point["label_id"], point["label_name"], point["rel_path"]) == (
            stored["label_id"],
            stored["label_name"],
            stored["rel_path"],
        )
    for m in result.models:
        assert m.method == "pca" and m.display_name == f"Model {m.model}" and len(m.x) == len(m.y) == 20
        # point i is the same image in every map: each model's map is the PCA of *its* vectors of those ids
        vectors = np.stack([r["vector"] for r in store.get_rows(index, m.model, ids, with_vectors=True)])
        np.testing.assert_allclose(np.c_[m.x, m.y], maps.project_pca(vectors, seed=1), atol=1e-5)
    again = maps.compute_maps(store, index, sample=20, seed=1, method="pca")
    assert [r["id"] for r in again.rows] == ids and all(
        np.array_equal(a.x, b.x) for a, b in zip(result.models, again.models, strict=True)
    )
    other = maps.compute_maps(store, index, sample=20, seed=2, method="pca")
    assert [r["id"] for r in other.rows] != ids


def test_sample_is_capped_by_the_rows_there_are(store: Store, shared: tuple[str, dict[int, dict]]) -> None:
    index, rows = shared
    result = maps.compute_maps(store, index, sample=1000, seed=0, method="umap")
    assert sorted(r["id"] for r in result.rows) == sorted(rows)
    assert all(m.method == "umap" and len(m.x) == N_ROWS for m in result.models)
    with pytest.raises(ValueError, match="sample must be in 3..100000"):
        maps.compute_maps(store, index, sample=maps.MAX_SAMPLE + 1)


def test_pca_fallback_when_umap_is_not_importable(
    store: Store, shared: tuple[str, dict[int, dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    index, _ = shared
    monkeypatch.setitem(sys.modules, "umap", None)  # `import umap` now raises ImportError
    assert not maps.umap_available() and maps.resolve_method("auto") == "pca"
    result = maps.compute_maps(store, index, sample=10, method="auto")
    assert result.method == "auto" and {m.method for m in result.models} == {"pca"}
    with pytest.raises(maps.MapMethodUnavailableError, match="needs umap-learn"):
        maps.compute_maps(store, index, sample=10, method="umap")


def test_cache_hits_until_the_index_changes(store: Store) -> None:
    index = "maps-cache"
    fill(store, index, n=12)
    cache = maps.MapCache()
    first, cached = cache.get(store, index, sample=50, method="pca")
    assert not cached and cache.computations == 1 and len(first.rows) == 12
    second, cached = cache.get(store, index, sample=50, method="pca")
    assert cached and second is first and cache.computations == 1
    _, cached = cache.get(store, index, sample=50, seed=1, method="pca")  # another key: computed
    assert not cached and cache.computations == 2
    for j, (key, dim) in enumerate(MODELS.items()):  # index more images: a new version
        vectors, labels = clustered(3, dim, seed=10 + j)
        store.upsert(index, key, rows_for(index, vectors, labels, start=100))
    third, cached = cache.get(store, index, sample=50, method="pca")
    assert not cached and cache.computations == 3 and len(third.rows) == 15


def test_half_indexed_model_keeps_only_shared_ids(store: Store) -> None:
    index = "maps-half"
    rows = fill(store, index, n=30, models={"full": 8})
    vectors, labels = clustered(30, 4, seed=9)
    store.ensure_collection(index, "half", manifest(dim=4))
    store.upsert(index, "half", rows_for(index, vectors, labels)[:18])  # only the first 18 images
    result = maps.compute_maps(store, index, sample=100, method="pca")
    half_ids = {r["id"] for r in rows_for(index, vectors, labels)[:18]}
    assert {r["id"] for r in result.rows} == half_ids and set(half_ids) <= set(rows)
    assert all(len(m.x) == 18 for m in result.models)


def test_unknown_small_and_empty_indexes(store: Store) -> None:
    with pytest.raises(IndexNotFoundError):
        maps.compute_maps(store, "maps-missing")
    fill(store, "maps-two", n=2)
    with pytest.raises(maps.TooFewPointsError, match="'maps-two' has 2 row"):
        maps.compute_maps(store, "maps-two")
    store.ensure_collection("maps-empty", "m", manifest(dim=4))
    with pytest.raises(maps.TooFewPointsError, match="has 0 row.*at least 3"):
        maps.MapCache().get(store, "maps-empty")


def test_draws_are_the_same_by_every_path(
    store: Store, shared: tuple[str, dict[int, dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One query, reading every id, or a seek per draw: the same seed draws the same ids."""
    import embedsvc.store.paging as paging

    index, _ = shared
    one_query = store.sample_aligned(index, list(MODELS), 12, seed=7).rows
    monkeypatch.setattr(paging, "_QUERY_WINDOW", 8)  # positions past the window
    read_all = store.sample_aligned(index, list(MODELS), 12, seed=7).rows
    monkeypatch.setattr(paging, "_ID_PAGE", 1)  # reading every id now costs more calls than seeking
    seeking = store.sample_aligned(index, list(MODELS), 12, seed=7).rows
    assert [r["id"] for r in one_query] == [r["id"] for r in read_all] == [r["id"] for r in seeking]
    assert [r["id"] for r in store.sample_rows(index, "wide", 12, seed=7)[0]] == [r["id"] for r in seeking]
