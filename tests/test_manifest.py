"""The typed manifest and its one compatibility rule (shared by the store, indexer, jobs, search and API)."""

from __future__ import annotations

from typing import Any

import pytest

from embedsvc.manifest import DATASET_FIELDS, VECTOR_FIELDS, Manifest, incompatibilities, incompatible_fields

SHA_A, SHA_B = "aa" * 32, "bb" * 32
TRAINED_A = {"source": "hf-hub:timm/x", "sha256": SHA_A, "trained": True}
RANDOM_0 = {"source": "random", "sha256": None, "trained": False, "seed": 0}


def base() -> dict[str, Any]:
    return {
        "index": "photos",
        "model_key": "m",
        "collection": "c_photos_m",
        "schema_version": 1,
        "model_name": "tiny.v1",
        "display_name": "Tiny",
        "dim": 32,
        "normalize": True,
        "preprocessing": {"input_size": [3, 64, 64], "interpolation": "bicubic"},
        "weights": TRAINED_A,
        "code_version": "0.1.0",
        "precision": "fp32",
        "index_kind": "folder",
        "dataset_root": "/data/photos",
        "dataset": "folder /data/photos",
        "label_names": ["bird", "fish"],
        "row_count": 12,
        "created_at": "2026-01-01T00:00:00+00:00",
        "updated_at": "2026-01-02T00:00:00+00:00",
    }


# (case id, changes to the candidate, fields reported): every field of the manifest appears once at least.
CASES = [
    ("identical", {}, []),
    ("model_name", {"model_name": "other.v1"}, ["model_name"]),
    ("dim", {"dim": 64}, ["dim"]),
    ("normalize", {"normalize": False}, ["normalize"]),
    ("preprocessing", {"preprocessing": {"input_size": [3, 224, 224], "interpolation": "bicubic"}}, ["preprocessing"]),
    ("preprocessing-tuple-equals-list", {"preprocessing": {"input_size": (3, 64, 64), "interpolation": "bicubic"}}, []),
    ("same-sha-other-source", {"weights": {**TRAINED_A, "source": "file:/tmp/x.pth"}}, []),
    ("other-sha-same-source", {"weights": {**TRAINED_A, "sha256": SHA_B}}, ["weights"]),
    ("trained-vs-random", {"weights": RANDOM_0}, ["weights"]),
    ("no-sha-same-source", {"weights": {"source": "hf-hub:timm/x", "trained": True}}, []),
    ("index_kind", {"index_kind": "imagenet-val"}, ["index_kind"]),
    ("dataset_root", {"dataset_root": "/data/other"}, ["dataset_root"]),
    ("dataset_root-same-path-spelled-apart", {"dataset_root": "/data//photos/"}, []),
    ("several-in-order", {"dim": 8, "normalize": False, "dataset_root": "/x"}, ["dim", "normalize", "dataset_root"]),
    # Facts for humans and bookkeeping never make vectors incomparable.
    ("index", {"index": "other"}, []),
    ("model_key", {"model_key": "n"}, []),
    ("collection", {"collection": "c_other"}, []),
    ("schema_version", {"schema_version": 2}, []),
    ("display_name", {"display_name": "Other"}, []),
    ("code_version", {"code_version": "9.9"}, []),
    ("precision", {"precision": "bf16"}, []),  # recorded, not compared: bf16 and fp32 vectors agree (manifest.py)
    ("dataset", {"dataset": "described otherwise"}, []),
    ("label_names", {"label_names": ["cat"]}, []),
    ("row_count", {"row_count": 99}, []),
    ("created_at", {"created_at": "2027-01-01"}, []),
    ("updated_at", {"updated_at": "2027-01-01"}, []),
    ("extra-key", {"note": "anything"}, []),
    # A side that does not state a field is not compared on it (a job's candidate is a root only).
    ("unstated-fields", {k: None for k in (*VECTOR_FIELDS, *DATASET_FIELDS)}, []),
]


@pytest.mark.parametrize(("changes", "fields"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_incompatibilities_table(changes: dict[str, Any], fields: list[str]) -> None:
    candidate = {**base(), **changes}
    problems = incompatibilities(base(), candidate)
    assert incompatible_fields(problems) == fields
    assert incompatible_fields(incompatibilities(candidate, base())) == fields  # the rule is symmetric
    for field, problem in zip(fields, problems, strict=True):
        assert problem.startswith(f"{field}: stored ")


def test_the_table_covers_every_field() -> None:
    covered = {key for _, changes, _ in CASES for key in changes}
    assert set(Manifest.model_fields) <= covered


@pytest.mark.parametrize(
    ("stored", "candidate", "compatible"),
    [
        (RANDOM_0, RANDOM_0, True),
        (RANDOM_0, {**RANDOM_0, "seed": 1}, False),
        ({"source": "random", "seed": 0}, {"source": "random", "seed": 1}, False),  # old form without "trained"
        ({**TRAINED_A, "source": "url:https://a/x.pth"}, {**TRAINED_A, "source": "file:/b/x.pth"}, True),
        ({"source": "file:/a.pth", "trained": True}, {"source": "file:/b.pth", "trained": True}, False),
    ],
    ids=["random-same-seed", "random-other-seed", "random-old-form-other-seed", "same-file-two-places", "no-sha"],
)
def test_weights_identity(stored: dict[str, Any], candidate: dict[str, Any], compatible: bool) -> None:
    problems = incompatibilities({"weights": stored}, {"weights": candidate})
    assert (problems == []) is compatible
    if not compatible:
        assert problems[0].startswith("weights: ")


def test_old_manifests_still_load() -> None:
    old = {**base(), "date": "2025-05-05T00:00:00+00:00", "live_row_count": 7, "note": "kept"}
    del old["updated_at"]
    m = Manifest.of(old)
    assert m.updated_at == "2025-05-05T00:00:00+00:00"
    assert m.weights is not None and m.weights.sha256 == SHA_A and m.dim == 32
    stored = m.to_dict()
    assert "date" not in stored and stored["updated_at"] == "2025-05-05T00:00:00+00:00"
    assert stored["note"] == "kept" and stored["live_row_count"] == 7  # unknown keys survive a round trip
    both = Manifest.of({"date": "old", "updated_at": "new"})
    assert both.updated_at == "new" and "date" not in both.to_dict()
    assert Manifest.of(None).to_dict() == {}
