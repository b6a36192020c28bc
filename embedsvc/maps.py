"""Per-model 2-D maps of an index's stored vectors, so people can see how each model arranges the images.

One seeded sample of rows is read from every model (``Store.sample_aligned``: the same ids in every
map, so point i is the same image everywhere), each model's vectors are L2-normalised and projected to
2-D: UMAP (umap-learn, seeded, euclidean on the normalised vectors, which ranks like cosine; after a
PCA to ``UMAP_INPUT_DIMS`` dimensions, which keeps the neighbour search fast on 2,048-d vectors) or
PCA (NumPy SVD) when umap-learn is not importable or when asked. Results are cached per index
version, the same key the evaluation's cache uses (``evaluation.runner.index_version``), so a
re-indexed index is mapped again.

umap-learn compiles its numba kernels on first use in every process (seconds; some are cached on
disk with ``cache=True``, the rest are not): ``bench/maps_cost.py`` measures first and warm calls.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from cachetools import LRUCache

from embedsvc.core.errors import EmbedsvcError
from embedsvc.evaluation.runner import index_version
from embedsvc.store import Store

log = logging.getLogger(__name__)

Method = Literal["auto", "umap", "pca"]
METHODS: tuple[Method, ...] = ("auto", "umap", "pca")
DEFAULT_SAMPLE = 20_000  # points per map unless asked otherwise (the default)
MAX_SAMPLE = 100_000  # more points than this take minutes per model on a CPU and megabytes per response
MIN_POINTS = 3  # fewer rows than this make no map (two points are a line)
UMAP_INPUT_DIMS = 50  # UMAP runs on the top principal components of the normalised vectors
UMAP_NEIGHBOURS = 15  # umap-learn's default neighbourhood size
UMAP_MIN_DIST = 0.1
UMAP_EPOCHS = 200  # umap-learn's own choice above 10,000 points (500 below): the layout settles by then


class MapError(EmbedsvcError):
    """An index that cannot be mapped as asked (too few rows, a method this install lacks)."""

    code = "cannot_map"
    http_status = 409


class TooFewPointsError(MapError):
    code = "too_few_points"


class MapMethodUnavailableError(MapError):
    code = "map_method_unavailable"


@dataclass
class ModelMap:
    """One model's 2-D coordinates, ``x[i], y[i]`` for point i of the ``IndexMaps``."""

    model: str
    method: Literal["umap", "pca"]
    x: np.ndarray
    y: np.ndarray
    seconds: float
    display_name: str | None = None


@dataclass
class IndexMaps:
    """Every model's map of the same sampled rows; ``rows[i]`` (id, label_id, label_name, rel_path) is point i."""

    index: str
    method: Method
    sample: int
    seed: int
    total_rows: int
    rows: list[dict[str, Any]]
    models: list[ModelMap]
    version: tuple[tuple[Any, ...], ...]
    computed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    compute_seconds: float = 0.0


# -- projections (arrays in, arrays out) ------------------------------------------------------------


def umap_available() -> bool:
    """Whether umap-learn imports here (it is an optional extra)."""
    try:
        importlib.import_module("umap")
    except ImportError:
        return False
    return True


def resolve_method(method: Method) -> Literal["umap", "pca"]:
    """``auto`` is UMAP where umap-learn is installed, else PCA; ``umap`` without it is an error."""
    if method not in METHODS:
        raise ValueError(f"unknown map method {method!r}; use one of {', '.join(METHODS)}")
    if method == "pca":
        return "pca"
    if umap_available():
        return "umap"
    if method == "umap":
        raise MapMethodUnavailableError(
            "method=umap needs umap-learn, which this server does not have (pip install 'embedsvc[maps]'); "
            "use method=pca or method=auto"
        )
    return "pca"


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero); float32 (a 20,000 x 2,048 sample is 160 MB)."""
    x = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _orthonormal(y: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns of a tall ``y`` through the eigenvectors of its small Gram
    matrix: matrix products only (NumPy's QR of a 5,000 x 60 matrix took ~0.5 s on the loaded 2-core CPU)."""
    gram = y.T.astype(np.float64) @ y.astype(np.float64)
    w, v = np.linalg.eigh(gram)
    keep = w > w.max() * 1e-10
    return (y @ (v[:, keep] / np.sqrt(w[keep])).astype(y.dtype)).astype(np.float32)


def principal_components(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Scores of the centred rows on their top ``k`` principal axes, each axis' sign fixed (deterministic).

    Small matrices use NumPy's exact SVD; larger ones a seeded randomised SVD (range finder with power
    iterations, then the exact SVD of the small projection), which matches the exact top axes closely
    at a fraction of the cost of the full SVD of a 20,000 x 2,048 matrix.
    """
    x = np.asarray(x, dtype=np.float32)
    centred = x - x.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
    n, d = centred.shape
    k = min(k, n, d)
    width = k + 10
    if min(n, d) <= 2 * width:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
    else:
        rng = np.random.default_rng(seed)
        q = _orthonormal(centred @ rng.standard_normal((d, width)).astype(np.float32))
        for _ in range(4):  # power iterations sharpen the leading subspace
            q = _orthonormal(centred.T @ q)
            q = _orthonormal(centred @ q)
        _, _, vt = np.linalg.svd(q.T @ centred, full_matrices=False)
    axes = vt[:k]
    signs = np.sign(axes[np.arange(k), np.abs(axes).argmax(axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    return np.asarray(centred @ axes.T, dtype=np.float64)


def project_pca(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, 2) PCA of the L2-normalised vectors."""
    out = principal_components(normalise(vectors), 2, seed)
    if out.shape[1] < 2:  # a 1-d model: the second axis is flat
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    return out


def exact_neighbours(x: np.ndarray, k: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(indices, euclidean distances), (n, k) each: every row's ``k`` nearest rows, itself first.

    Exact, by chunked matrix products: on 50-d inputs this is a fraction of a second for 20,000 rows,
    deterministic, and it spares umap-learn's approximate search (pynndescent) and its numba compile.
    """
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    k = min(k, n)
    sq = np.einsum("ij,ij->i", x, x)
    indices = np.empty((n, k), dtype=np.int64)
    dists = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        d2 = sq[start:stop, None] + sq[None, :] - 2.0 * (x[start:stop] @ x.T)
        rows = np.arange(stop - start)
        d2[rows, rows + start] = -1.0  # itself first, whatever the rounding
        part = np.argpartition(d2, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (stop - start, 1))
        part_d = np.take_along_axis(d2, part, axis=1)
        order = np.lexsort((part, part_d), axis=1)  # by distance, ties by index: deterministic
        indices[start:stop] = np.take_along_axis(part, order, axis=1)
        dists[start:stop] = np.sqrt(np.maximum(np.take_along_axis(part_d, order, axis=1), 0.0))
    return indices, dists


def project_umap(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, 2) UMAP of the L2-normalised vectors (their top ``UMAP_INPUT_DIMS`` principal components),
    seeded: umap-learn then runs on one thread and gives the same layout for the same input."""
    import umap  # optional extra; resolve_method checked that it imports

    x = normalise(vectors)
    if x.shape[1] > UMAP_INPUT_DIMS:
        x = principal_components(x, UMAP_INPUT_DIMS, seed)
    n = len(x)
    neighbours = max(2, min(UMAP_NEIGHBOURS, n - 1))
    knn_indices, knn_dists = exact_neighbours(x, neighbours)
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=neighbours,
        precomputed_knn=(knn_indices, knn_dists, None),
        min_dist=UMAP_MIN_DIST,
        n_epochs=UMAP_EPOCHS,
        metric="euclidean",
        init="spectral" if n > 4 * UMAP_NEIGHBOURS else "pca",  # spectral init needs a connected graph
        random_state=seed,
        n_jobs=1,  # what random_state implies anyway; said here so umap-learn does not warn
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny inputs make umap-learn warn about graph sizes, not our concern
        return np.asarray(reducer.fit_transform(x.astype(np.float32)), dtype=np.float64)


def project(vectors: np.ndarray, method: Literal["umap", "pca"], seed: int = 0) -> np.ndarray:
    """(n, 2) coordinates of ``vectors`` by ``method``."""
    if len(vectors) < MIN_POINTS:
        raise TooFewPointsError(f"a map needs at least {MIN_POINTS} points, got {len(vectors)}")
    return project_umap(vectors, seed) if method == "umap" else project_pca(vectors, seed)


# -- the store-backed entry point -------------------------------------------------------------------


def check_sample(sample: int) -> int:
    if not MIN_POINTS <= sample <= MAX_SAMPLE:
        raise ValueError(f"sample must be in {MIN_POINTS}..{MAX_SAMPLE}, got {sample}")
    return sample


def compute_maps(
    store: Store,
    index: str,
    *,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    method: Method = "auto",
    models: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> IndexMaps:
    """Map every model of ``index`` (or ``models``) on one seeded sample of up to ``sample`` rows.

    Raises IndexNotFoundError for an unknown index, TooFewPointsError when the index has fewer than
    ``MIN_POINTS`` rows every model shares, MapMethodUnavailableError for ``umap`` without umap-learn.
    """
    check_sample(sample)
    used = resolve_method(method)
    start = time.perf_counter()
    version = index_version(store, index)  # also the 404 for an unknown index
    keys = list(models) if models else [v[0] for v in version]
    drawn = store.sample_aligned(index, keys, sample, seed=seed)
    n = len(drawn.rows)
    if n < MIN_POINTS:
        raise TooFewPointsError(f"index {index!r} has {n} row(s) every model shares; a map needs at least {MIN_POINTS}")
    maps = []
    for key in keys:
        if progress is not None:
            progress(key)
        t0 = time.perf_counter()
        xy = project(drawn.vectors[key], used, seed)
        seconds = time.perf_counter() - t0
        log.info("mapped %d points of %s/%s by %s in %.1f s", n, index, key, used, seconds)
        manifest = store.get_manifest(index, key) or {}
        maps.append(ModelMap(key, used, xy[:, 0], xy[:, 1], round(seconds, 3), manifest.get("display_name")))
    rows = [
        {
            "id": int(r["id"]),
            "label_id": int(r.get("label_id", -1)),
            "label_name": str(r.get("label_name") or ""),
            "rel_path": r.get("rel_path"),
        }
        for r in drawn.rows
    ]
    return IndexMaps(
        index=index,
        method=method,
        sample=sample,
        seed=seed,
        total_rows=drawn.total,
        rows=rows,
        models=maps,
        version=version,
        compute_seconds=round(time.perf_counter() - start, 3),
    )


CacheKey = tuple[str, int, int, str]


class MapCache:
    """Maps per (index, sample, seed, method), each valid only for the index version it was computed on.

    Computations run one at a time (two at once would only halve each one's CPU), and a request that
    waited for an identical one takes its result.
    """

    def __init__(self, max_entries: int = 16) -> None:
        self.computations = 0  # how many maps were actually computed (tests read it)
        self._entries: LRUCache[CacheKey, IndexMaps] = LRUCache(maxsize=max_entries)
        self._lock = threading.Lock()
        self._compute_lock = threading.Lock()

    def _lookup(self, key: CacheKey, version: tuple[tuple[Any, ...], ...]) -> IndexMaps | None:
        with self._lock:
            hit = self._entries.get(key)
            return hit if hit is not None and hit.version == version else None

    def get(
        self, store: Store, index: str, *, sample: int = DEFAULT_SAMPLE, seed: int = 0, method: Method = "auto"
    ) -> tuple[IndexMaps, bool]:
        """(maps, was_cached): the cached maps while the index version is unchanged, else computed now."""
        check_sample(sample)
        resolve_method(method)  # a method this install lacks fails before any work
        key: CacheKey = (index, sample, seed, method)
        version = index_version(store, index)
        found = self._lookup(key, version)
        if found is not None:
            return found, True
        with self._compute_lock:
            found = self._lookup(key, index_version(store, index))
            if found is not None:
                return found, True
            result = compute_maps(store, index, sample=sample, seed=seed, method=method)
            self.computations += 1
            with self._lock:
                self._entries[key] = result
            return result, False


__all__ = [
    "DEFAULT_SAMPLE",
    "MAX_SAMPLE",
    "METHODS",
    "MIN_POINTS",
    "IndexMaps",
    "MapCache",
    "MapError",
    "MapMethodUnavailableError",
    "Method",
    "ModelMap",
    "TooFewPointsError",
    "compute_maps",
    "project",
    "project_pca",
    "project_umap",
    "resolve_method",
]
