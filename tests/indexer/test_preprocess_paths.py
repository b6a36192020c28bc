"""The preprocessing path of an index: recorded in its manifest, enforced on append, followed by queries.

Real Milvus Lite, real JPEGs large enough that the fast path decodes them reduced (so the two paths give
measurably different vectors), two models at 64 px.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from embedsvc.embedder import Embedder
from embedsvc.images import decode_image
from embedsvc.indexer.embedder import decode_short_side_of, model_inputs, transforms_of
from embedsvc.indexer.folder import folder_source
from embedsvc.indexer.reader import ImageReadDataset, collate
from embedsvc.indexer.runner import run_index
from embedsvc.manifest import incompatibilities
from embedsvc.search import SearchEngine, StoreHolder
from embedsvc.store import ManifestMismatchError, Store, row_id
from tests.support import SAMPLE_PHOTOS

N_PHOTOS = 4


def _on_path(embedders: dict[str, Embedder], path: str) -> dict[str, Embedder]:
    """The same models (same weights) writing vectors on another preprocessing path."""
    return {k: dataclasses.replace(e, preprocess_path=path) for k, e in embedders.items()}


def _write_photos(folder: Path) -> list[Path]:
    """Real photos as 640x480 JPEGs: 2x+ the 64 px models' decode bound (146 px), so fast decodes reduced."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, src in enumerate(sorted(SAMPLE_PHOTOS.glob("*/*.jpg"))[:N_PHOTOS]):
        buf = io.BytesIO()
        decode_image(src).image.resize((640, 480), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=92)
        (folder / f"photo_{i}.jpg").write_bytes(buf.getvalue())
        out.append(folder / f"photo_{i}.jpg")
    return out


def _index(settings, embedders: dict[str, Embedder], root: Path, name: str) -> None:
    with Store.from_settings(settings) as store:
        run_index(folder_source(root), index_name=name, embedders=embedders, store=store, settings=settings,
                  workers=0)


def test_manifest_records_the_path_and_decode_bound(tmp_path: Path, two_embedders, settings) -> None:
    photos = tmp_path / "photos"
    _write_photos(photos)
    _index(settings, _on_path(two_embedders, "fast"), photos, "fastidx")
    _index(settings, _on_path(two_embedders, "exact"), photos, "exactidx")
    bound = decode_short_side_of(two_embedders)
    assert bound == 183  # ceil(2.5 x 73): ConvNeXt at 64 px resizes to floor(64 / 0.875); DeiT-III to 64
    with Store.from_settings(settings) as store:
        for key in two_embedders:
            fast = store.get_manifest("fastidx", key)["preprocessing"]
            exact = store.get_manifest("exactidx", key)["preprocessing"]
            assert fast["path"] == "fast" and fast["decode_short_side"] == bound
            assert exact["path"] == "exact" and "decode_short_side" not in exact
            [row] = store.get_rows("fastidx", key, [row_id("fastidx", "photo_0.jpg")])
            assert (row["width"], row["height"]) == (640, 480)  # the file's size, not the reduced decode's


def test_appending_fast_rows_to_an_exact_index_names_the_flag(tmp_path: Path, two_embedders, settings) -> None:
    photos = tmp_path / "photos"
    _write_photos(photos)
    _index(settings, _on_path(two_embedders, "exact"), photos, "mixed")
    with pytest.raises(ManifestMismatchError) as caught:
        _index(settings, _on_path(two_embedders, "fast"), photos, "mixed")
    message = str(caught.value)
    assert "preprocessing" in message and "--preprocess exact" in message and "EMBEDSVC_PREPROCESS=exact" in message
    assert "preprocessing" in caught.value.fields
    _index(settings, _on_path(two_embedders, "exact"), photos, "mixed")  # the named flag works


def test_cli_mismatch_is_one_error_line(tmp_path: Path, cli_env, two_embedders) -> None:
    from embedsvc.cli import app

    photos = tmp_path / "photos"
    _write_photos(photos)
    args = ["index", "folder", str(photos), "--name", "cli", "-m", "deit3_small", "--allow-random-weights",
            "--device", "cpu", "--data-dir", str(tmp_path / "data"), "--workers", "0"]
    first = CliRunner().invoke(app, [*args, "--preprocess", "exact"])
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(app, args)  # the default, fast
    assert second.exit_code == 1
    errors = [line for line in second.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--preprocess exact" in errors[0] and "Traceback" not in second.output


def test_manifests_without_a_path_mean_exact() -> None:
    old = {"input_size": [3, 64, 64], "interpolation": "bicubic", "crop_pct": 0.875, "crop_mode": "center",
           "mean": [0.5] * 3, "std": [0.5] * 3}
    exact = old | {"path": "exact"}
    fast = old | {"path": "fast", "decode_short_side": 146}
    assert incompatibilities({"preprocessing": old}, {"preprocessing": exact}) == []
    [problem] = incompatibilities({"preprocessing": old}, {"preprocessing": fast})
    assert problem.startswith("preprocessing:") and "--preprocess exact" in problem
    # the decode bound is how a run decoded, not whether its vectors compare
    assert incompatibilities({"preprocessing": fast}, {"preprocessing": fast | {"decode_short_side": 600}}) == []
    [other] = incompatibilities({"preprocessing": fast}, {"preprocessing": fast | {"crop_pct": 1.0}})
    assert "crop_pct" in other and "--preprocess" not in other


@pytest.mark.parametrize("index_path", ["exact", "fast"])
def test_queries_use_the_path_their_index_recorded(tmp_path: Path, two_embedders, settings, index_path) -> None:
    """A service whose own default is the other path still embeds a query the way its index was made:
    an indexed photo uploaded as the query finds itself at distance ~0 (the other path would not)."""
    photos = tmp_path / "photos"
    paths = _write_photos(photos)
    _index(settings, _on_path(two_embedders, index_path), photos, "q")
    other = "fast" if index_path == "exact" else "exact"
    service = _on_path(two_embedders, other)
    holder = StoreHolder(lambda: Store.from_settings(settings))
    try:
        engine = SearchEngine(store=holder, embedders=service, settings=settings)
        data = paths[1].read_bytes()
        result = engine.search_image("q", data, k=2)
    finally:
        holder.close()
    bound = decode_short_side_of(two_embedders)

    def vector(emb: Embedder, path: str) -> np.ndarray:
        decoded = decode_image(data, min_short_side=bound if path == "fast" else None)
        return emb.embed(emb.preprocess(decoded.image, path).unsqueeze(0))[0]

    for model in result.models:
        emb = two_embedders[model.model_key]
        first = model.neighbours[0]
        assert first.id == row_id("q", "photo_1.jpg") and first.distance < 1e-6, (model.model_key, first.distance)
        gap = float(((vector(emb, other) - vector(emb, index_path)) ** 2).sum())
        assert gap > 100 * max(first.distance, 1e-9), (gap, first.distance)  # the other path would not match
    assert (result.query.width, result.query.height) == (640, 480)


def test_device_side_models_take_the_shared_uint8_decode(tmp_path: Path, two_embedders) -> None:
    """The accelerator layout (transform None): one uint8 image per file, preprocessed by the model itself,
    gives the same tensors as the CPU layout (tensor ops in the worker)."""
    photos = tmp_path / "photos"
    paths = _write_photos(photos)
    fast = _on_path(two_embedders, "fast")
    rels, ids = [p.name for p in paths], list(range(len(paths)))
    bound = decode_short_side_of(fast)
    worker = ImageReadDataset(photos, rels, ids, transforms_of(fast), decode_short_side=bound)
    device = ImageReadDataset(photos, rels, ids, dict.fromkeys(fast), decode_short_side=bound)
    on_worker = collate([worker[i] for i in ids])
    on_device = collate([device[i] for i in ids])
    assert on_device.tensors == {} and sorted(on_device.images) == ids
    assert all(t.dtype == torch.uint8 and min(t.shape[1:]) >= bound for t in on_device.images.values())
    assert all(min(t.shape[1:]) < 480 for t in on_device.images.values())  # reduced: 640x480 -> 320x240
    inputs = model_inputs(fast, on_device)
    for key in fast:
        assert on_device.rows[key] == ids
        np.testing.assert_allclose(inputs[key].numpy(), on_worker.tensors[key].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="decode_short_side"):
        ImageReadDataset(photos, rels, ids, dict.fromkeys(fast))
