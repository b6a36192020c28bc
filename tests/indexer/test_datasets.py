"""Dataset listing: folder discovery by content, labels, ImageNet val layouts and id mapping, subsets, shards."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest

from embedsvc.indexer.datasets import DatasetError, parse_shard, shard_of
from embedsvc.indexer.folder import folder_source
from embedsvc.indexer.imagenet import imagenet_val_source, parse_meta_mat
from tests.indexer.imagenet_fixtures import (
    DEVKIT_IDS,
    VAL_WNIDS,
    WNIDS,
    val_name,
    write_devkit,
    write_flat_val,
    write_loc_val_solution,
    write_synset_folders,
)
from tests.support import png_bytes, write_images


def _expected_val_labels() -> dict[str, int]:
    return {val_name(k): WNIDS[w] for k, w in enumerate(VAL_WNIDS, start=1)}


# ----------------------------------------------------------------------------------------------- folders
def test_folder_discovers_by_content_recursively(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_images(root, 4, subdirs=["cats", "dogs"])
    (root / "deep" / "er").mkdir(parents=True)
    (root / "deep" / "er" / "no_extension").write_bytes(png_bytes(7))  # an image without an extension
    (root / "notes.txt").write_text("hello")  # not an image, not image-named: ignored
    (root / "broken.jpg").write_bytes(b"")  # image-named but broken: kept, so it gets reported
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(png_bytes(8))
    src = folder_source(root)
    assert [it.rel_path for it in src.items] == [
        "broken.jpg",
        "cats/img_000.png",
        "cats/img_002.png",
        "deep/er/no_extension",
        "dogs/img_001.png",
        "dogs/img_003.png",
    ]
    assert all(it.label_id == -1 and it.label_name == "" for it in src.items)
    assert src.kind == "folder" and src.label_names is None


def test_folder_labels_from_dirs_and_csv(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_images(root, 4, subdirs=["zebra", "ant"])
    (root / "top.png").write_bytes(png_bytes(9))
    src = folder_source(root, labels_from_dirs=True)
    labels = {it.rel_path: (it.label_id, it.label_name) for it in src.items}
    assert src.label_names == ["ant", "zebra"]
    assert labels["ant/img_001.png"] == (0, "ant")
    assert labels["zebra/img_000.png"] == (1, "zebra")
    assert labels["top.png"] == (-1, "")

    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("path,label,fine\nzebra/img_000.png,striped,x\n./ant/img_001.png,small,y\n")
    src = folder_source(root, labels_csv=csv_file)
    labels = {it.rel_path: (it.label_id, it.label_name) for it in src.items}
    assert src.label_names == ["small", "striped"]
    assert labels["zebra/img_000.png"] == (1, "striped")
    assert labels["ant/img_001.png"] == (0, "small")
    assert labels["top.png"] == (-1, "")


def test_labels_of_names_that_are_not_utf8(tmp_path: Path) -> None:
    """A Latin-1 label folder gives a readable, storable label; a labels CSV names files in their stored form."""
    root = tmp_path / "photos"
    for raw, seed in ((b"Fotos-\xe9t\xe9/a.png", 1), (b"plain/caf\xe9.png", 2)):
        path = os.path.join(os.fsencode(root), raw)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(png_bytes(seed))
    src = folder_source(root, labels_from_dirs=True)
    assert src.label_names == ["Fotos-\\xe9t\\xe9", "plain"]
    assert {it.stored: it.label_name for it in src.items} == {
        "Fotos-\\xe9t\\xe9/a.png": "Fotos-\\xe9t\\xe9", "plain/caf\\xe9.png": "plain"}
    assert all(it.label_name.encode("utf-8") for it in src.items)

    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("path,label\nplain/caf\\xe9.png,coffee\n", encoding="utf-8")
    src = folder_source(root, labels_csv=csv_file)
    labels = {it.stored: it.label_name for it in src.items}
    assert labels == {"Fotos-\\xe9t\\xe9/a.png": "", "plain/caf\\xe9.png": "coffee"}


def test_a_folder_of_only_refused_entries_lists_them(tmp_path: Path) -> None:
    """No image but a FIFO: the source lists the refusal (reported by the run) instead of 'no images found'."""
    root = tmp_path / "photos"
    root.mkdir()
    os.mkfifo(root / "pipe.png")
    src = folder_source(root)
    assert src.items == [] and [(f.rel_path, f.reason) for f in src.refused] == [("pipe.png", "special_file")]


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        folder_source(tmp_path / "empty")
    with pytest.raises(DatasetError, match="not a folder"):
        folder_source(tmp_path / "missing")
    with pytest.raises(DatasetError, match="shard"):
        parse_shard("3/3")
    with pytest.raises(DatasetError, match="shard"):
        parse_shard("1-of-3")
    assert parse_shard("2/3") == (2, 3) and parse_shard(None) is None


def test_shards_partition_exactly(tmp_path: Path) -> None:
    """n workers' selections are disjoint and together equal one worker's, with and without --limit."""
    root = tmp_path / "photos"
    write_images(root, 30, subdirs=["a", "b", "c"])
    for limit in (None, 17):
        whole = [it.rel_path for it in folder_source(root, limit=limit, labels_from_dirs=True).items]
        parts = [
            [it.rel_path for it in folder_source(root, limit=limit, labels_from_dirs=True, shard=f"{i}/3").items]
            for i in range(3)
        ]
        assert all(parts), "every shard gets some files"
        flat = [p for part in parts for p in part]
        assert len(flat) == len(set(flat)) == len(whole)
        assert set(flat) == set(whole)
    # stable: the partition is a pure function of the path
    assert shard_of("a/img_000.png", 3) == shard_of("a/img_000.png", 3)
    # labels agree across shards: ids come from the whole listing
    ids = {it.label_name: it.label_id for i in range(3) for it in folder_source(root, labels_from_dirs=True,
                                                                                  shard=(i, 3)).items}
    assert ids == {"a": 0, "b": 1, "c": 2}


# ---------------------------------------------------------------------------------------------- ImageNet
def test_imagenet_flat_with_loc_val_solution(tmp_path: Path) -> None:
    root = write_flat_val(tmp_path / "val")
    write_loc_val_solution(tmp_path / "LOC_val_solution.csv")  # found next to the folder
    src = imagenet_val_source(root)
    assert {it.rel_path: it.label_id for it in src.items} == _expected_val_labels()
    names = {it.label_id: it.label_name for it in src.items}
    assert names[0] == "tench" and names[1] == "goldfish" and names[2] == "great white shark"
    assert src.kind == "imagenet-val"


def test_imagenet_devkit_ids_map_through_meta_mat(tmp_path: Path) -> None:
    root = write_flat_val(tmp_path / "val")
    devkit = write_devkit(tmp_path / "ILSVRC2012_devkit_t12")
    # leaf classes only, keyed by devkit id
    assert parse_meta_mat(devkit) == {i: w for w, i in DEVKIT_IDS.items()}
    expected = _expected_val_labels()
    for kwargs in ({"devkit": devkit}, {"labels": devkit / "data" / "ILSVRC2012_validation_ground_truth.txt"}, {}):
        src = imagenet_val_source(root, **kwargs)
        assert {it.rel_path: it.label_id for it in src.items} == expected, kwargs
    # the devkit ids are not timm ids: reading them as such would be wrong for this file
    assert any(DEVKIT_IDS[w] - 1 != WNIDS[w] for w in VAL_WNIDS)


def test_fake_meta_mat_matches_torchvisions_parser(tmp_path: Path) -> None:
    """Our fake devkit has the layout torchvision's own (nested) parser reads, and both agree."""
    from torchvision.datasets import imagenet

    devkit = write_devkit(tmp_path / "ILSVRC2012_devkit_t12")
    code = next(
        c for c in imagenet.parse_devkit_archive.__code__.co_consts
        if isinstance(c, types.CodeType) and c.co_name == "parse_meta_mat"
    )
    import scipy.io

    free = {"sio": scipy.io}  # the nested function closes over its parent's ``import scipy.io as sio``
    closure = tuple(types.CellType(free[name]) for name in code.co_freevars)
    tv_parse = types.FunctionType(code, imagenet.__dict__, None, None, closure)
    idx_to_wnid, wnid_to_classes = tv_parse(str(devkit))
    assert {int(k): str(v) for k, v in idx_to_wnid.items()} == parse_meta_mat(devkit)
    assert set(wnid_to_classes) == set(DEVKIT_IDS)


def test_imagenet_synset_folders_classes_and_limit(tmp_path: Path) -> None:
    root = write_synset_folders(tmp_path / "val")
    src = imagenet_val_source(root)
    assert {Path(it.rel_path).name: it.label_id for it in src.items} == _expected_val_labels()
    assert all(it.rel_path.split("/")[0] in WNIDS for it in src.items)
    sub = imagenet_val_source(root, classes=["n01440764", "2"])
    assert {it.label_id for it in sub.items} == {0, 2} and len(sub.items) == 4
    assert {it.label_id for it in imagenet_val_source(root, classes=["0-1"]).items} == {0, 1}
    assert len(imagenet_val_source(root, limit=3).items) == 3
    assert len(sub.all_rel_paths) == 6  # prune looks at the whole listing, not the subset
    with pytest.raises(DatasetError, match="not an ImageNet-1k synset"):
        imagenet_val_source(root, classes=["n99999999"])


def test_imagenet_errors(tmp_path: Path) -> None:
    root = write_flat_val(tmp_path / "val")
    with pytest.raises(DatasetError, match="no labels"):
        imagenet_val_source(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no ImageNet val images"):
        imagenet_val_source(tmp_path / "empty")


def test_imagenet_layouts_refuse_odd_entries(tmp_path: Path) -> None:
    """Both ImageNet layouts list through the same entry policy as any folder."""
    root = write_synset_folders(tmp_path / "val")
    wnid = VAL_WNIDS[0]
    os.mkfifo(root / wnid / "pipe.JPEG")
    os.symlink("/etc/passwd", root / wnid / "passwd.JPEG")
    src = imagenet_val_source(root)
    assert {(f.rel_path, f.reason) for f in src.refused} == {
        (f"{wnid}/pipe.JPEG", "special_file"), (f"{wnid}/passwd.JPEG", "outside_root")}
    assert len(src.items) == len(VAL_WNIDS)

    flat = write_flat_val(tmp_path / "flat")
    write_loc_val_solution(flat / "LOC_val_solution.csv")
    os.symlink("ILSVRC2012_val_99999998.JPEG", flat / "ILSVRC2012_val_99999999.JPEG")  # dangling
    src = imagenet_val_source(flat)
    assert [(f.rel_path, f.reason) for f in src.refused] == [("ILSVRC2012_val_99999999.JPEG", "dangling_symlink")]


def test_labels_longer_than_the_store_keeps_are_refused_not_fatal(tmp_path: Path) -> None:
    """A 255-byte Latin-1 label folder is 1020 bytes once stored: over the 512 a row keeps, so it is a failure."""
    root = tmp_path / "photos"
    (root / "ok").mkdir(parents=True)
    (root / "ok" / "a.png").write_bytes(png_bytes(1))
    long_dir = os.path.join(os.fsencode(root), b"\xe9" * 255)
    os.mkdir(long_dir)
    with open(os.path.join(long_dir, b"b.png"), "wb") as fh:
        fh.write(png_bytes(2))
    src = folder_source(root, labels_from_dirs=True)
    assert [it.rel_path for it in src.items] == ["ok/a.png"]
    assert [(f.reason, "512" in f.detail) for f in src.refused] == [("label_too_long", True)]
