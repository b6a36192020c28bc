"""Plan stage of a run: check the name and the dataset against what is stored, set up collections, prune.

Everything that can refuse a run happens here, before a single row is written or a file is read:
the index name (``check_index_name``, also before any report path exists), the stored manifests
(another dataset under the same name), label ids (stored ids are kept, new names appended).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from embedsvc.core.errors import EmbedsvcError
from embedsvc.embedder import Embedder
from embedsvc.indexer.datasets import DatasetSource, Item
from embedsvc.indexer.embedder import decode_short_side_of
from embedsvc.manifest import incompatibilities
from embedsvc.paths import stored_rel_path
from embedsvc.store import Store, row_id
from embedsvc.store.naming import check_index_name

log = logging.getLogger(__name__)

MAX_LABELS_JSON = 32_000


class IndexerError(EmbedsvcError):
    """A run that cannot start or must not continue; the message is meant for the user as is."""

    code = "indexing_refused"
    http_status = 409


@dataclass
class RunPlan:
    """What the run stage needs: the items and their ids, what each model may keep, what was pruned."""

    index_name: str
    source: DatasetSource
    keys: list[str]
    items: list[Item]
    ids: list[int]
    known: dict[str, dict[int, Any]]  # per model: id -> (content hash, label id, label name) of stored rows
    reusable: dict[str, dict[int, str]]  # per model: id -> content hash a file may keep as it is
    pruned: dict[str, int] = field(default_factory=dict)
    # (stored rel path, reason, detail) of entries the listing refused: the run's first failures
    refused: list[tuple[str, str, str]] = field(default_factory=list)


def plan_run(
    source: DatasetSource, *, index_name: str, embedders: Mapping[str, Embedder], store: Store, prune: bool,
    on_prune: Any = None,
) -> RunPlan:
    """Collections and manifests (a mismatch raises here, before any write), known rows, pruning."""
    check_index_name(index_name)
    keys = list(embedders)
    stored_labels: list[str] | None = None
    for key in keys:
        stored = store.get_manifest(index_name, key)
        if stored:
            _check_compatible(index_name, key, stored, source)
            stored_labels = stored_labels or stored.get("label_names")
    label_names = _merge_labels(source, stored_labels)
    label_changes = stored_labels is not None and label_names != stored_labels
    date = datetime.now(UTC).isoformat(timespec="seconds")
    decode_bound = decode_short_side_of(embedders)  # the run's one fast decode, recorded for queries to repeat
    for key, emb in embedders.items():
        manifest = emb.manifest(decode_short_side=decode_bound) | {
            "index": index_name,
            "index_kind": source.kind,
            "dataset_root": str(source.root),
            "dataset": source.description,
            "label_names": _storable_labels(label_names),
            "date": date,
        }
        store.ensure_collection(index_name, key, manifest)
        if label_changes:
            store.update_manifest(index_name, key, label_names=_storable_labels(label_names))

    items = source.items
    known = {k: store.existing_rows(index_name, k) for k in keys}
    ids = [row_id(index_name, it.rel_path) for it in items]
    pruned: dict[str, int] = {}
    if prune:
        if on_prune is not None:
            on_prune()
        alive = {row_id(index_name, rp) for rp in source.all_rel_paths}
        for key in keys:
            gone = [i for i in known[key] if i not in alive]
            if gone:
                store.delete(index_name, key, gone)
                pruned[key] = len(gone)
                log.info("pruned %d rows of missing files from %s/%s", len(gone), index_name, key)
                for i in gone:
                    known[key].pop(i, None)
    labelled = source.label_names is not None or any(it.label_id >= 0 for it in items)
    return RunPlan(
        index_name=index_name,
        source=source,
        keys=keys,
        items=items,
        ids=ids,
        known=known,
        reusable={k: _reusable(rows, items, ids, labelled) for k, rows in known.items()},
        pruned=pruned,
        refused=[(stored_rel_path(f.rel_path), f.reason, f.detail) for f in source.refused],
    )


def refused_ids(plan: RunPlan) -> list[int]:
    """Ids of refused entries (a file that became e.g. a link out of the root keeps no row)."""
    return [row_id(plan.index_name, f.rel_path) for f in plan.source.refused]


def _merge_labels(source: DatasetSource, stored: list[str] | None) -> list[str] | None:
    """Keep the ids an index already uses: stored names first, names new to this run appended."""
    if source.label_names is None:
        return stored
    if not stored or stored == source.label_names:
        return source.label_names
    merged = list(stored) + [n for n in source.label_names if n not in set(stored)]
    ids = {name: i for i, name in enumerate(merged)}
    source.items = [
        type(it)(it.rel_path, ids[it.label_name], it.label_name) if it.label_id >= 0 else it for it in source.items
    ]
    return merged


def _check_compatible(index_name: str, key: str, stored: Mapping[str, Any], source: DatasetSource) -> None:
    """Same index name, different dataset: refuse rather than mix rows whose paths mean different files."""
    problems = incompatibilities(stored, {"index_kind": source.kind, "dataset_root": str(source.root)})
    if problems:
        raise IndexerError(
            f"index {index_name!r} ({key}) was built from another dataset ({'; '.join(problems)}): use another --name"
        )


def _storable_labels(label_names: list[str] | None) -> list[str] | None:
    """Label names go into the manifest (a 64 KB JSON field) when they fit; ids still work without."""
    if label_names is None or len(json.dumps(label_names)) <= MAX_LABELS_JSON:
        return label_names
    log.warning("%d label names are too many to record in the manifest; label ids may shift if labels are added",
                len(label_names))
    return None


def _reusable(
    stored: Mapping[int, tuple[str, int, str]], items: list[Item], ids: list[int], labelled: bool
) -> dict[int, str]:
    """id -> content hash of the stored rows a file may keep as they are.

    When this run labels its files, a row whose label differs from the file's label now is left out, so
    the file is re-embedded and its row rewritten with the new label. A run without any labelling
    (a plain folder) leaves stored labels alone, as before.
    """
    if not labelled:
        return {i: h for i, (h, _, _) in stored.items()}
    out = {}
    for item, i in zip(items, ids, strict=True):
        row = stored.get(i)
        if row is not None and row[1:] == (int(item.label_id), str(item.label_name or "")):
            out[i] = row[0]
    return out
