"""Collections and manifests: mismatches, listing, updates, drops, names (embedsvc.store.catalog)."""

from __future__ import annotations

import numpy as np
import pytest

from embedsvc.manifest import Manifest
from embedsvc.store import COMPAT_FIELDS, IndexNotFoundError, ManifestMismatchError, Store
from tests.store.conftest import DIM, make_rows, manifest


def test_manifest_mismatch_names_each_field(store: Store, index: str) -> None:
    store.ensure_collection(index, "m", manifest())
    store.ensure_collection(index, "m", manifest())  # same setup: fine, idempotent
    with pytest.raises(ManifestMismatchError) as err:
        store.ensure_collection(index, "m", manifest(dim=64, normalize=False))
    assert err.value.fields == ["dim", "normalize"]
    assert "dim: stored 32, new 64" in str(err.value) and "normalize" in str(err.value)
    other_weights = manifest(weights={"source": "seeded-random", "sha256": "cd" * 32})
    with pytest.raises(ManifestMismatchError, match="weights") as err:
        store.ensure_collection(index, "m", other_weights)
    assert err.value.fields == ["weights"]
    # The same weights file passed from another place is the same weights: accepted.
    store.ensure_collection(index, "m", manifest(weights={"source": "file:/elsewhere.pth", "sha256": "ab" * 32}))
    with pytest.raises(ManifestMismatchError, match="weights"):  # random weights: only the same seed
        store.ensure_collection(index, "m", manifest(weights={"source": "random", "trained": False, "seed": 1}))
    with pytest.raises(ManifestMismatchError, match="preprocessing"):
        store.ensure_collection(index, "m", manifest(preprocessing={"input_size": [3, 224, 224]}))
    assert set(COMPAT_FIELDS) >= {"model_name", "dim", "normalize", "preprocessing"}
    assert store.get_manifest(index, "m")["dim"] == DIM  # nothing was overwritten


def test_collection_left_without_its_index_is_repaired(store: Store, index: str) -> None:
    """A run killed between creating a collection and its index: the next run adds the index and indexes on."""
    store.ensure_collection(index, "m", manifest())
    name = store.collection_name(index, "m")
    client = store._client
    client.release_collection(name)
    client.drop_index(name, "vector")
    assert client.list_indexes(name) == []
    store._loaded.discard(name)

    store.ensure_collection(index, "m", manifest())
    assert client.describe_index(name, "vector")["index_type"] == "FLAT"
    rows = make_rows(index, n=20)
    store.upsert(index, "m", rows)
    store.flush(index, "m")
    hits = store.search(index, "m", rows[3]["vector"], k=1)
    assert hits[0][0].rel_path == rows[3]["rel_path"]


def test_list_indexes_models_update_and_drop(store: Store, index: str) -> None:
    store.ensure_collection(index, "m", manifest())
    store.ensure_collection(index, "other", manifest(dim=8, model_name="other.v1"))
    store.upsert(index, "m", make_rows(index, n=12))
    store.update_manifest(index, "m", row_count=12, note="first run")
    listing = store.list_indexes()
    assert set(listing[index]) == {"m", "other"}
    m = listing[index]["m"]
    assert (m["live_row_count"], m["row_count"], m["note"], m["dim"]) == (12, 12, "first run", DIM)
    assert m["index"] == index and m["model_key"] == "m" and m["collection"] == store.collection_name(index, "m")
    assert listing[index]["other"]["live_row_count"] == 0
    assert store.models_of(index) == ["m", "other"]
    with pytest.raises(ValueError, match="dim"):
        store.update_manifest(index, "m", dim=64)

    store.drop_index(index)
    assert index not in store.list_indexes() and store.models_of(index) == []
    with pytest.raises(IndexNotFoundError, match=index):
        store.search(index, "m", np.zeros(DIM, np.float32), k=1)
    with pytest.raises(IndexNotFoundError):
        store.drop_index(index)


def test_collection_names_are_valid_and_distinct(store: Store) -> None:
    a = store.collection_name("my photos", "convnext_tiny.fb_in1k")
    b = store.collection_name("my_photos", "convnext_tiny.fb_in1k")
    assert a != b
    for name in (a, b):
        assert name[0].isalpha() and all(ch.isalnum() or ch == "_" for ch in name) and len(name) <= 255
    assert store.collection_name("x", "y") == store.collection_name("x", "y")


def test_manifests_are_typed_and_old_ones_still_load(store: Store, index: str) -> None:
    """A manifest stored before the typed model (``date``, no ``updated_at``) loads, stays comparable,
    and is rewritten with canonical keys on the next update; ``date`` given now means ``updated_at``."""
    name = store.collection_name(index, "m")
    old = {**manifest(), "index": index, "model_key": "m", "collection": name, "schema_version": 1}
    old["date"] = "2025-01-02T03:04:05+00:00"
    store.ensure_collection(index, "m", manifest())
    store._put_manifest(name, old)  # what an older version wrote
    assert store.get_manifest(index, "m")["date"] == old["date"]
    store.ensure_collection(index, "m", {**manifest(), "date": "2026-01-01"})  # still the same vectors
    store.update_manifest(index, "m", row_count=3)
    now = store.get_manifest(index, "m")
    assert "date" not in now and now["updated_at"] > old["date"] and now["row_count"] == 3
    assert Manifest.of(now).weights.sha256 == "ab" * 32
    store.update_manifest(index, "m", date="2030-01-01T00:00:00+00:00")
    assert store.get_manifest(index, "m")["updated_at"] == "2030-01-01T00:00:00+00:00"
    assert "date" not in store.get_manifest(index, "m")
