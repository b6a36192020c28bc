"""Read stage: one decode per file, each model's own preprocessing, unchanged files not decoded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import embedsvc.indexer.reader as reader
from embedsvc.images import decode_image
from embedsvc.indexer.embedder import transforms_of
from embedsvc.indexer.reader import ImageReadDataset, collate, content_hash, make_loader
from tests.support import write_images


def test_one_decode_feeds_every_model(tmp_path: Path, two_embedders, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_images(tmp_path, 5)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    rels = [p.name for p in paths] + ["bad.png"]
    calls: list[str] = []

    def counting_decode(data, **kwargs):
        calls.append(kwargs.get("name"))
        return decode_image(data, **kwargs)

    monkeypatch.setattr(reader, "decode_image", counting_decode)
    ds = ImageReadDataset(tmp_path, rels, list(range(len(rels))), transforms_of(two_embedders))
    batch = next(iter(make_loader(ds, batch_size=8, workers=0)))
    assert sorted(calls) == sorted(rels), "each file decoded exactly once for both models"
    assert [r.error[0] if r.error else None for r in batch.results] == [None] * 5 + ["not_an_image"]
    for key, emb in two_embedders.items():
        assert batch.rows[key] == [0, 1, 2, 3, 4]
        expected = torch.stack([emb.preprocess(decode_image(p).image) for p in paths])
        assert torch.equal(batch.tensors[key], expected), key
    assert batch.tensors["convnext_tiny"].shape[1:] == (3, 64, 64)
    assert batch.results[0].content_hash == content_hash(paths[0].read_bytes())
    assert (batch.results[0].width, batch.results[0].height) == (48, 40)


def test_known_hashes_skip_decode_per_model(tmp_path: Path, two_embedders, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_images(tmp_path, 3)
    rels = [p.name for p in paths]
    hashes = [content_hash(p.read_bytes()) for p in paths]
    known = {
        "convnext_tiny": {0: hashes[0], 1: hashes[1], 2: "stale"},
        "deit3_small": {0: hashes[0], 1: "stale"},
    }
    calls: list[str] = []
    monkeypatch.setattr(reader, "decode_image", lambda data, **kw: calls.append(kw["name"]) or decode_image(data, **kw))
    ds = ImageReadDataset(tmp_path, rels, [0, 1, 2], transforms_of(two_embedders), known)
    batch = collate([ds[i] for i in range(3)])
    assert batch.results[0].unchanged and calls == [rels[1], rels[2]]
    assert batch.rows == {"deit3_small": [1, 2], "convnext_tiny": [2]}
    assert batch.results[1].needed == ("deit3_small",)


def test_loader_workers_match_in_process(tmp_path: Path, two_embedders) -> None:
    paths = write_images(tmp_path, 6)
    ds = ImageReadDataset(tmp_path, [p.name for p in paths], list(range(6)), transforms_of(two_embedders))
    inproc = list(make_loader(ds, batch_size=4, workers=0))
    workers = list(make_loader(ds, batch_size=4, workers=2))
    assert [len(b.results) for b in workers] == [4, 2]
    for a, b in zip(inproc, workers, strict=True):
        assert [r.position for r in a.results] == [r.position for r in b.results]
        for key in two_embedders:
            assert torch.equal(a.tensors[key], b.tensors[key])
