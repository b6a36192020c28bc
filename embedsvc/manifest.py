"""The manifest of one (index, model) collection, and the one rule that says whether vectors are comparable.

A manifest records what produced an index's vectors (model, weights, dimension, normalisation,
preprocessing, precision) and facts for humans (display name, dataset, labels, counts, dates). The store, the
indexer, jobs, the search core and the API all read it through ``Manifest`` and decide comparability
with ``incompatibilities``, so no two of them can disagree.

Pure pydantic (no torch, no pymilvus). Manifests stored before this model existed still load: old
spellings are read as the canonical field (``date`` -> ``updated_at``) and unknown keys are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import to_jsonable_python

SCHEMA_VERSION = 1

#: The fields whose inequality makes vectors incomparable (``weights`` by identity, see ``Weights``).
VECTOR_FIELDS = ("model_name", "dim", "normalize", "preprocessing", "weights")
#: The fields whose inequality means the index's rows describe other files.
DATASET_FIELDS = ("index_kind", "dataset_root")
#: Set by the store when a collection is created; nobody may change them afterwards.
IDENTITY_FIELDS = ("index", "model_key", "collection", "schema_version")


class Weights(BaseModel):
    """Where a model's weights came from. Two weights are the same when their file sha256 is the same
    (whatever path or hub they were loaded from); without both hashes, random weights are the same only
    with the same seed and trained weights only with the same source."""

    model_config = ConfigDict(extra="allow")

    source: str | None = None
    sha256: str | None = None
    trained: bool | None = None
    seed: int | None = None
    label: str | None = None

    @property
    def is_random(self) -> bool:
        return self.trained is False or (self.trained is None and self.source == "random")

    def same_as(self, other: Weights) -> bool:
        """Whether vectors made with these weights and with ``other`` are comparable."""
        if self.sha256 and other.sha256:
            return self.sha256 == other.sha256
        if self.is_random or other.is_random:
            return self.is_random and other.is_random and self.seed == other.seed
        return self.source == other.source

    def describe(self) -> str:
        if self.label:
            return self.label
        if self.is_random:
            return f"random (seed {self.seed})"
        return f"{self.source} (sha256 {self.sha256})" if self.sha256 else str(self.source)


class Manifest(BaseModel):
    """One collection's manifest. Every field is optional: a candidate states only what it knows
    (a job's candidate is just a dataset root), and a comparison skips fields one side leaves unset."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    # identity (set by the store)
    index: str | None = None
    model_key: str | None = None
    collection: str | None = None
    schema_version: int | None = None
    # what produced the vectors
    model_name: str | None = None
    dim: int | None = None
    normalize: bool | None = None
    preprocessing: dict[str, Any] | None = None
    weights: Weights | None = None
    #: the forward's precision (``models.precision``): fp32, bf16, fp16, or e.g. "bf16+fp32" once runs at both
    #: wrote rows. Recorded, never compared: bf16 and fp32 vectors of one image agree far more closely than any
    #: two photos (real Lite0/1/2 weights: per-image cosine median >= 0.999, leave-one-out P@1 equal, P@5 and
    #: mAP@10 within 0.005: bench/results/precision_fidelity-cpu.md), so an index answers queries of either.
    precision: str | None = None
    code_version: str | None = None
    # for humans
    display_name: str | None = None
    # the dataset the rows describe
    index_kind: str | None = None
    dataset_root: str | None = None
    dataset: Any = None
    label_names: list[str] | None = None
    # bookkeeping
    row_count: int | None = Field(default=None, description="Rows written by the last indexing run.")
    created_at: str | None = None
    updated_at: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _old_spellings(cls, data: Any) -> Any:
        """Manifests written before this model spelled the last indexing time ``date``."""
        if isinstance(data, Mapping) and "date" in data:
            data = dict(data)
            date = data.pop("date")
            data.setdefault("updated_at", date)
        return data

    @field_validator("preprocessing", mode="before")
    @classmethod
    def _json_form(cls, value: Any) -> Any:
        """Compare in stored (JSON) form: a tuple from the embedder equals the list read back."""
        return None if value is None else to_jsonable_python(value)

    @classmethod
    def of(cls, value: Manifest | Mapping[str, Any] | None) -> Manifest:
        """A manifest from a stored dict (old spellings accepted), an existing Manifest, or None (empty)."""
        if value is None:
            return cls()
        if isinstance(value, Manifest):
            return value
        return cls.model_validate(dict(value))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form that is stored: canonical keys only, unset fields left out."""
        return self.model_dump(mode="json", exclude_none=True, by_alias=False)


def _same_path(a: str, b: str) -> bool:
    return PurePath(a) == PurePath(b)


#: The preprocessing path of a stored record that names none: every index made before the fast path.
UNRECORDED_PREPROCESS_PATH = "exact"
#: Facts in a preprocessing record that describe how a run decoded, not whether vectors are comparable.
_PREPROCESSING_FACTS = ("decode_short_side", "decoder")


def _comparable_preprocessing(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A preprocessing record as compared: ``path`` defaulted (old records mean exact), decode facts left out."""
    if record is None:
        return None
    out = {k: v for k, v in record.items() if k not in _PREPROCESSING_FACTS}
    out.setdefault("path", UNRECORDED_PREPROCESS_PATH)
    return out


def _preprocessing_problem(stored: dict[str, Any] | None, new: dict[str, Any] | None) -> str | None:
    """One ``preprocessing: ...`` message, naming the flag to use when only the path differs."""
    a, b = _comparable_preprocessing(stored), _comparable_preprocessing(new)
    if a is None or b is None or a == b:
        return None
    if {k: v for k, v in a.items() if k != "path"} == {k: v for k, v in b.items() if k != "path"}:
        return (
            f"preprocessing: the index was made with --preprocess {a['path']}, these vectors with --preprocess "
            f"{b['path']}; rerun with --preprocess {a['path']} (EMBEDSVC_PREPROCESS={a['path']}) "
            "or use a new index name"
        )
    return f"preprocessing: stored {stored!r}, new {new!r}"


def incompatibilities(
    stored: Manifest | Mapping[str, Any] | None, candidate: Manifest | Mapping[str, Any] | None
) -> list[str]:
    """Why vectors or rows described by ``candidate`` cannot join (or query) the index ``stored`` describes.

    One message per differing field, each starting with the field's name (``"dim: ..."``); empty when
    compatible. Preprocessing records without a ``path`` mean ``exact``; a different path alone names the
    ``--preprocess`` flag to use; the fast path's ``decode_short_side`` is not compared. A field is compared
    only when both sides state it. Weights compare by identity
    (``Weights.same_as``): the same sha256 is compatible whatever the source; random weights with
    another seed are not.
    """
    old, new = Manifest.of(stored), Manifest.of(candidate)
    out: list[str] = []
    for field in ("model_name", "dim", "normalize"):
        a, b = getattr(old, field), getattr(new, field)
        if a is not None and b is not None and a != b:
            out.append(f"{field}: stored {a!r}, new {b!r}")
    preprocessing = _preprocessing_problem(old.preprocessing, new.preprocessing)
    if preprocessing:
        out.append(preprocessing)
    if old.weights is not None and new.weights is not None and not old.weights.same_as(new.weights):
        out.append(f"weights: stored {old.weights.describe()!r}, new {new.weights.describe()!r}")
    if old.index_kind and new.index_kind and old.index_kind != new.index_kind:
        out.append(f"index_kind: stored {old.index_kind!r}, new {new.index_kind!r}")
    if old.dataset_root and new.dataset_root and not _same_path(old.dataset_root, new.dataset_root):
        out.append(f"dataset_root: stored {old.dataset_root!r}, new {new.dataset_root!r}")
    return out


def combined_precision(stored: str | None, new: str | None) -> str | None:
    """The ``precision`` an index records once a run at ``new`` adds rows to one made at ``stored``:
    every precision that wrote rows, sorted and joined with "+" ("bf16+fp32"); None when neither is known."""
    parts = {p for value in (stored, new) if value for p in value.split("+")}
    return "+".join(sorted(parts)) or None


def precision_mismatch(stored: Manifest | Mapping[str, Any] | None, wanted: str) -> str | None:
    """Why the vectors ``stored`` describes were not all made at ``wanted`` (``embedsvc eval --precision``, which
    reads stored vectors and never re-embeds), or None when they were. Manifests older than the field say nothing
    (CPU runs were fp32 then, CUDA runs bf16), so they never match."""
    recorded = Manifest.of(stored).precision
    if recorded == wanted:
        return None
    return f"made at {recorded}" if recorded else "made before precision was recorded"


def incompatible_fields(problems: list[str]) -> list[str]:
    """The field names of ``incompatibilities``' messages, in order."""
    return [p.split(":", 1)[0] for p in problems]
