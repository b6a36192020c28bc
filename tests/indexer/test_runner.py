"""run_index against real Milvus (Lite here, a real server in one test): search parity, resume semantics,
idempotence, changed and pruned files, bad files, manifests, ImageNet labels, shards, stop."""

from __future__ import annotations

import csv
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedsvc.embedder import load_embedder
from embedsvc.images import decode_image
from embedsvc.indexer.folder import folder_source
from embedsvc.indexer.imagenet import imagenet_val_source
from embedsvc.indexer.reader import content_hash
from embedsvc.indexer.runner import IndexerError, ProgressUpdate, StrictModeError, run_index
from embedsvc.store import ManifestMismatchError, Store, row_id
from tests.indexer.imagenet_fixtures import (
    VAL_WNIDS,
    WNIDS,
    write_devkit,
    write_flat_val,
    write_loc_val_solution,
    write_synset_folders,
)
from tests.support import make_settings, png_bytes, write_images


def numpy_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    d = ((queries[:, None, :] - vectors[None, :, :]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def check_index_matches_numpy(store: Store, embedders: dict, root: Path, index: str) -> None:
    """Stored rows are the model's embeddings of each file, and Milvus search == exact NumPy search."""
    for key, emb in embedders.items():
        ids, vectors, labels = store.fetch_all(index, key)
        rows = {r["id"]: r for r in store.get_rows(index, key, ids.tolist())}
        paths = [root / rows[int(i)]["rel_path"] for i in ids]
        expected = emb.embed_images([decode_image(p).image for p in paths], batch_size=8)
        np.testing.assert_allclose(vectors, expected, atol=1e-5)
        for i, p in zip(ids, paths, strict=True):
            assert rows[int(i)]["content_hash"] == content_hash(p.read_bytes())
            assert (rows[int(i)]["width"], rows[int(i)]["height"]) == (48, 40)
            assert int(i) == row_id(index, p.relative_to(root).as_posix())
        queries = vectors[:5] + 0.01
        hits = store.search(index, key, queries, k=4)
        want = ids[numpy_topk(vectors, queries, 4)]
        assert [[h.id for h in hs] for hs in hits] == want.tolist(), key
        exact = ((queries[:, None, :] - vectors[None, :, :]) ** 2).sum(-1)
        got = np.array([[h.distance for h in hs] for hs in hits])
        np.testing.assert_allclose(got, np.sort(exact, axis=1)[:, :4], rtol=1e-4, atol=1e-5)


def index_labelled_folder(store: Store, embedders: dict, settings, root: Path, workers: int) -> None:
    write_images(root, 12, subdirs=["cat", "dog", "eel"])
    source = folder_source(root, labels_from_dirs=True)
    updates: list[ProgressUpdate] = []
    summary = run_index(
        source, index_name="photos", embedders=embedders, store=store, settings=settings,
        batch_size=5, workers=workers, progress=updates.append,
    )
    assert {k: c.indexed for k, c in summary.per_model.items()} == {k: 12 for k in embedders}
    assert summary.failures == [] and summary.failures_report is None
    assert updates[0].phase == "prepare" and updates[-1].phase == "done" and updates[-1].done == 12
    check_index_matches_numpy(store, embedders, root, "photos")
    _, _, labels = store.fetch_all("photos", "deit3_small")
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    manifest = store.get_manifest("photos", "convnext_tiny")
    assert manifest["row_count"] == 12 and manifest["label_names"] == ["cat", "dog", "eel"]
    assert manifest["index_kind"] == "folder" and manifest["dataset_root"] == str(root.resolve())
    assert manifest["weights"]["source"] == "random" and manifest["normalize"] is True


def test_index_folder_lite_search_equals_numpy(tmp_path: Path, two_embedders, settings, lite_uri) -> None:
    with Store(lite_uri) as store:
        index_labelled_folder(store, two_embedders, settings, tmp_path / "photos", workers=2)


@pytest.mark.integration
def test_index_folder_server_search_equals_numpy(tmp_path: Path, two_embedders, settings, milvus_server_uri) -> None:
    with Store(milvus_server_uri) as store:
        try:
            index_labelled_folder(store, two_embedders, settings, tmp_path / "photos", workers=0)
        finally:
            store.drop_index("photos")


def test_rerun_unchanged_changed_pruned(tmp_path: Path, two_embedders, settings, lite_uri) -> None:
    root = tmp_path / "photos"
    paths = write_images(root, 8)
    kw = dict(index_name="p", embedders=two_embedders, settings=settings, batch_size=4, workers=0)
    with Store(lite_uri) as store:
        first = run_index(folder_source(root), store=store, **kw)
        assert all(c.indexed == 8 for c in first.per_model.values())
        _, before, _ = store.fetch_all("p", "convnext_tiny")

        again = run_index(folder_source(root), store=store, **kw)
        assert all((c.indexed, c.unchanged) == (0, 8) for c in again.per_model.values())

        paths[2].write_bytes(png_bytes(999))  # content changed
        paths[5].unlink()  # file gone
        changed = run_index(folder_source(root), store=store, **kw)
        assert all((c.indexed, c.unchanged, c.pruned) == (1, 6, 0) for c in changed.per_model.values())
        assert store.count("p", "convnext_tiny") == 8, "without --prune the gone file's row stays"
        rid = row_id("p", paths[2].name)
        row = store.get_rows("p", "convnext_tiny", [rid], with_vectors=True)[0]
        assert row["content_hash"] == content_hash(paths[2].read_bytes())
        expected = two_embedders["convnext_tiny"].embed_images([decode_image(paths[2]).image])[0]
        np.testing.assert_allclose(row["vector"], expected, atol=1e-5)

        pruned = run_index(folder_source(root), store=store, prune=True, **kw)
        assert all((c.indexed, c.unchanged, c.pruned) == (0, 7, 1) for c in pruned.per_model.values())
        for key in two_embedders:
            assert store.count("p", key) == 7
            assert row_id("p", paths[5].name) not in store.existing_rows("p", key)
            assert store.get_manifest("p", key)["row_count"] == 7
        # prune only drops rows of files gone from the whole listing, never rows outside --limit/--shard
        limited = run_index(folder_source(root, limit=2), store=store, prune=True, **kw)
        assert all(c.pruned == 0 for c in limited.per_model.values())
        assert store.count("p", "deit3_small") == 7


def write_bad_files(root: Path) -> dict[str, str]:
    """Each bad kind from the foundation issue, with the reason the report must give."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "text.jpg").write_text("this is not a JPEG\n" * 20)
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, "PNG")  # 81 Mpx > the 64 Mpx limit, ~10 KB on disk
    (root / "bomb.png").write_bytes(bomb.getvalue())
    return {
        "zero.jpg": "empty",
        "truncated.jpg": "truncated",
        "text.jpg": "not_an_image",
        "bomb.png": "too_many_pixels",
    }


def test_bad_files_skipped_and_reported_strict_fails(tmp_path: Path, two_embedders, settings, lite_uri) -> None:
    root = tmp_path / "photos"
    write_images(root, 3)
    bad = write_bad_files(root)
    kw = dict(index_name="b", embedders=two_embedders, settings=settings, batch_size=4, workers=2)
    with Store(lite_uri) as store:
        summary = run_index(folder_source(root), store=store, **kw)
        assert dict(summary.failures) == bad
        assert all((c.indexed, c.failed) == (3, 4) for c in summary.per_model.values())
        report = summary.failures_report
        assert report is not None and report.parent == settings.data_dir / "reports" / "b"
        with open(report, newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert {r["file"]: r["reason"] for r in rows} == bad
        assert all(r["detail"] for r in rows)
        assert store.count("b", "convnext_tiny") == 3

        # a file that was fine and is now corrupt: its old (stale) row goes, it is reported
        good = root / "img_000.png"
        good.write_bytes(good.read_bytes()[:60])
        again = run_index(folder_source(root), store=store, **kw)
        assert ("img_000.png", "truncated") in again.failures or ("img_000.png", "corrupt") in again.failures
        assert store.count("b", "convnext_tiny") == 2

        with pytest.raises(StrictModeError, match="--strict"):
            run_index(folder_source(root), store=store, strict=True, **kw)


def test_manifest_mismatch_is_an_error_and_writes_nothing(tmp_path: Path, two_embedders, settings, lite_uri) -> None:
    root = tmp_path / "photos"
    write_images(root, 4)
    deit = {"deit3_small": two_embedders["deit3_small"]}
    with Store(lite_uri) as store:
        run_index(folder_source(root), index_name="m", embedders=deit, store=store, settings=settings, workers=0)
        write_images(root, 6, start_seed=50)  # new files that would be indexed
        raw = load_embedder("deit3_small", settings=make_settings(tmp_path, normalize=False))
        with pytest.raises(ManifestMismatchError, match="normalize"):
            run_index(folder_source(root), index_name="m", embedders={"deit3_small": raw}, store=store,
                      settings=settings, workers=0)
        assert store.count("m", "deit3_small") == 4
        assert store.get_manifest("m", "deit3_small")["normalize"] is True
        # the same name for another folder is refused too (paths would mean other files)
        other = tmp_path / "other"
        write_images(other, 2)
        with pytest.raises(IndexerError, match="was built from"):
            run_index(folder_source(other), index_name="m", embedders=deit, store=store, settings=settings)


@pytest.mark.parametrize("layout", ["flat-loc", "flat-devkit", "synset-folders"])
def test_imagenet_layouts_index_timm_labels(tmp_path: Path, two_embedders, settings, lite_uri, layout: str) -> None:
    root = tmp_path / "val"
    if layout == "synset-folders":
        write_synset_folders(root)
    else:
        write_flat_val(root)
        if layout == "flat-loc":
            write_loc_val_solution(tmp_path / "LOC_val_solution.csv")
        else:
            write_devkit(tmp_path / "ILSVRC2012_devkit_t12")
    deit = {"deit3_small": two_embedders["deit3_small"]}
    with Store(lite_uri) as store:
        summary = run_index(imagenet_val_source(root), index_name="imagenet-val", embedders=deit, store=store,
                            settings=settings, workers=0)
        assert summary.per_model["deit3_small"].indexed == 6
        ids, _, labels = store.fetch_all("imagenet-val", "deit3_small")
        rows = store.get_rows("imagenet-val", "deit3_small", ids.tolist())
        got = {Path(r["rel_path"]).name: (r["label_id"], r["label_name"]) for r in rows}
        names = {0: "tench", 1: "goldfish", 2: "great white shark"}
        assert got == {
            f"ILSVRC2012_val_{k:08d}.JPEG": (WNIDS[w], names[WNIDS[w]]) for k, w in enumerate(VAL_WNIDS, start=1)
        }
        assert store.get_manifest("imagenet-val", "deit3_small")["index_kind"] == "imagenet-val"


def test_shards_together_index_what_one_worker_does(tmp_path: Path, two_embedders, settings, lite_uri) -> None:
    root = tmp_path / "photos"
    write_images(root, 12, subdirs=["a", "b"])
    deit = {"deit3_small": two_embedders["deit3_small"]}
    kw = dict(embedders=deit, settings=settings, batch_size=4, workers=0)
    with Store(lite_uri) as store:
        run_index(folder_source(root, labels_from_dirs=True), index_name="one", store=store, **kw)
        per_shard = []
        for i in range(3):
            before = set(store.existing_rows("sharded", "deit3_small")) if i else set()
            run_index(folder_source(root, labels_from_dirs=True, shard=f"{i}/3"), index_name="sharded", store=store,
                      **kw)
            per_shard.append(set(store.existing_rows("sharded", "deit3_small")) - before)
        assert all(per_shard) and sum(map(len, per_shard)) == 12

        def rows_of(index: str) -> dict[str, dict]:
            ids = list(store.existing_rows(index, "deit3_small"))
            return {r["rel_path"]: r for r in store.get_rows(index, "deit3_small", ids, with_vectors=True)}

        one, sharded = rows_of("one"), rows_of("sharded")
        assert set(one) == set(sharded)
        for rel, row in one.items():
            np.testing.assert_allclose(row["vector"], sharded[rel]["vector"], atol=1e-6)
            assert row["label_id"] == sharded[rel]["label_id"]


def test_stop_event_then_resume(tmp_path: Path, two_embedders, settings, lite_uri) -> None:
    root = tmp_path / "photos"
    write_images(root, 10)
    stop = threading.Event()

    def stop_after_first_batch(update: ProgressUpdate) -> None:
        if update.phase == "index" and update.done >= 2:
            stop.set()

    kw = dict(index_name="s", embedders=two_embedders, settings=settings, batch_size=2, workers=0)
    with Store(lite_uri) as store:
        summary = run_index(folder_source(root), store=store, progress=stop_after_first_batch, stop_event=stop, **kw)
        assert summary.stopped
        c = summary.per_model["convnext_tiny"]
        assert c.indexed == 2 and c.skipped == 8
        assert store.count("s", "convnext_tiny") == 2
        rest = run_index(folder_source(root), store=store, **kw)
        assert (rest.per_model["convnext_tiny"].indexed, rest.per_model["convnext_tiny"].unchanged) == (8, 2)
        assert store.count("s", "deit3_small") == 10


def test_new_label_folder_keeps_existing_ids(tmp_path: Path, two_embedders, settings, lite_uri) -> None:
    root = tmp_path / "photos"
    write_images(root, 4, subdirs=["b", "c"])
    deit = {"deit3_small": two_embedders["deit3_small"]}
    with Store(lite_uri) as store:
        run_index(folder_source(root, labels_from_dirs=True), index_name="l", embedders=deit, store=store,
                  settings=settings, workers=0)
        write_images(root / "a", 1, start_seed=70)  # sorts first: would shift every id if recomputed
        run_index(folder_source(root, labels_from_dirs=True), index_name="l", embedders=deit, store=store,
                  settings=settings, workers=0)
        rows = store.get_rows("l", "deit3_small", list(store.existing_rows("l", "deit3_small")))
        assert {(r["label_name"], r["label_id"]) for r in rows} == {("b", 0), ("c", 1), ("a", 2)}
        assert store.get_manifest("l", "deit3_small")["label_names"] == ["b", "c", "a"]


def test_relabelled_file_is_updated_on_rerun(tmp_path: Path, two_embedders, settings, lite_uri) -> None:
    """Same content, new label in the CSV: the rerun rewrites that one row (same id), nothing else."""
    root = tmp_path / "photos"
    paths = write_images(root, 4)
    labels = {p.name: ("cat" if i % 2 else "dog") for i, p in enumerate(paths)}
    csv_path = tmp_path / "labels.csv"

    def run(labels: dict[str, str]):
        csv_path.write_text("path,label\n" + "".join(f"{k},{v}\n" for k, v in labels.items()))
        return run_index(folder_source(root, labels_csv=csv_path), index_name="r", embedders=two_embedders,
                         store=store, settings=settings, batch_size=3, workers=0)

    def stored(key: str) -> dict[str, tuple[int, str, str]]:
        rows = store.get_rows("r", key, list(store.existing_rows("r", key)))
        return {r["rel_path"]: (r["label_id"], r["label_name"], r["content_hash"]) for r in rows}

    with Store(lite_uri) as store:
        first = run(labels)
        assert all(c.indexed == 4 for c in first.per_model.values())
        before = {key: stored(key) for key in two_embedders}
        assert before["deit3_small"]["img_001.png"][:2] == (0, "cat")

        relabelled = run(labels | {"img_001.png": "dog"})
        assert all((c.indexed, c.unchanged) == (1, 3) for c in relabelled.per_model.values())
        for key in two_embedders:
            after = stored(key)
            assert store.count("r", key) == 4 and set(after) == set(before[key])
            assert after["img_001.png"] == (1, "dog", before[key]["img_001.png"][2])
            assert {k: v for k, v in after.items() if k != "img_001.png"} == {
                k: v for k, v in before[key].items() if k != "img_001.png"
            }
            rid = row_id("r", "img_001.png")
            assert store.existing_rows("r", key)[rid] == (before[key]["img_001.png"][2], 1, "dog")

        again = run(labels | {"img_001.png": "dog"})
        assert all((c.indexed, c.unchanged) == (0, 4) for c in again.per_model.values())


def test_default_three_models_one_pass(tmp_path: Path, two_embedders, settings, lite_uri) -> None:
    """GResNet-50 (folded) with the other two defaults in one pass."""
    root = tmp_path / "photos"
    write_images(root, 3)
    embedders = {"gresnet50": load_embedder("gresnet50", settings=settings), **two_embedders}
    with Store(lite_uri) as store:
        summary = run_index(folder_source(root), index_name="three", embedders=embedders, store=store,
                            settings=settings, workers=0)
        assert {k: c.indexed for k, c in summary.per_model.items()} == {k: 3 for k in embedders}
        assert store.get_manifest("three", "gresnet50")["dim"] == embedders["gresnet50"].dim
        check_index_matches_numpy(store, {"gresnet50": embedders["gresnet50"]}, root, "three")
