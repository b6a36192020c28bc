"""``--decode device``: JPEGs left encoded by the workers and decoded where the models run.

On this CPU-only machine the "device" is the CPU (torchvision's libjpeg-turbo decode in the model's
thread); on CUDA the same code calls nvJPEG. What is checked here holds for both: orientation, sizes,
failures and vectors equal to the query path the manifest names; Milvus Lite, real photos.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from typer.testing import CliRunner

from embedsvc.core.config import Settings
from embedsvc.embedder import Embedder
from embedsvc.images import decode_image, probe_image
from embedsvc.indexer.folder import folder_source
from embedsvc.indexer.reader import ENCODED, UINT8, ImageReadDataset, upright
from embedsvc.indexer.report import StrictModeError
from embedsvc.indexer.runner import run_index
from embedsvc.search import SearchEngine, StoreHolder
from embedsvc.store import Store, row_id
from tests.indexer.test_runner import write_bad_files
from tests.support import SAMPLE_PHOTOS


def _jpeg(image: Image.Image, orientation: int = 1, **kw) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(buf, "JPEG", quality=95, exif=exif, **kw)
    return buf.getvalue()


def _on_device(embedders: dict[str, Embedder]) -> dict[str, Embedder]:
    return {k: dataclasses.replace(e, preprocess_path="fast", decoder="device") for k, e in embedders.items()}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_turns_a_decode_as_pillow_does(orientation: int) -> None:
    """Each EXIF orientation: the header probe's size and ``upright`` of torchvision's decode equal what
    ``decode_image`` (Pillow's ``exif_transpose``) gives, pixel for pixel within JPEG decoder rounding."""
    pixels = np.random.default_rng(orientation).integers(0, 255, (12, 20, 3), dtype=np.uint8)
    pixels = np.kron(pixels, np.ones((4, 4, 1), np.uint8))  # 48x80 in 4x4 blocks: little JPEG ringing
    data = _jpeg(Image.fromarray(pixels), orientation)
    probe = probe_image(data)
    reference = decode_image(data)
    assert probe.plain_jpeg and probe.orientation == orientation
    assert (probe.width, probe.height) == (reference.width, reference.height)
    raw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    turned = upright(raw, orientation).permute(1, 2, 0).numpy().astype(np.int16)
    expected = np.asarray(reference.image, np.int16)
    assert turned.shape == expected.shape
    assert np.abs(turned - expected).max() <= 2  # the same libjpeg-turbo maths, maybe another build


def test_only_whole_plain_jpegs_are_left_encoded(tmp_path: Path, two_embedders) -> None:
    """CMYK and truncated JPEGs and PNGs decode in the worker (in full); bad files fail there as ever."""
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    files = {
        "plain.jpg": _jpeg(photo),
        "grey.jpg": _jpeg(photo.convert("L")),
        "cmyk.jpg": _jpeg(photo.convert("CMYK")),
        "cut.jpg": _jpeg(photo)[:-300],
    }
    png = io.BytesIO()
    photo.save(png, "PNG")
    files["lossless.png"] = png.getvalue()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    bad = write_bad_files(tmp_path)
    rels = sorted([*files, *bad])
    dataset = ImageReadDataset(tmp_path, rels, list(range(len(rels))), dict.fromkeys(two_embedders), decoder="device")
    samples = {rel: dataset[i] for i, rel in enumerate(rels)}
    assert {rel for rel, (_, t) in samples.items() if ENCODED in t} == {"plain.jpg", "grey.jpg"}
    assert {rel for rel, (_, t) in samples.items() if UINT8 in t} == {"cmyk.jpg", "lossless.png"}
    assert samples["lossless.png"][1][UINT8].shape == (3, 60, 90)  # in full: no decode bound on this path
    assert {rel: r.error[0] for rel, (r, _) in samples.items() if r.error} == bad | {"cut.jpg": "truncated"}
    assert (samples["plain.jpg"][0].width, samples["plain.jpg"][0].height) == (90, 60)
    with pytest.raises(ValueError, match="decoder='device'"):
        ImageReadDataset(tmp_path, rels, list(range(len(rels))), {"m": lambda image: image}, decoder="device")


def _photo_folder(root: Path) -> dict[str, str]:
    """Real photos (one turned by EXIF, one a CMYK JPEG, one damaged inside), plus every bad kind."""
    root.mkdir(parents=True)
    sources = sorted(SAMPLE_PHOTOS.glob("*/*.jpg"))[:5]
    for i, src in enumerate(sources[:3]):
        (root / f"photo_{i}.jpg").write_bytes(src.read_bytes())
    (root / "turned.jpg").write_bytes(_jpeg(decode_image(sources[3]).image, orientation=6))
    (root / "cmyk.jpg").write_bytes(_jpeg(decode_image(sources[4]).image.convert("CMYK")))
    damaged = bytearray(_jpeg(decode_image(sources[0]).image))
    scan = damaged.index(b"\xff\xda") + 600  # a second start-of-image marker inside the scan: the header parses,
    damaged[scan : scan + 4] = b"\xff\xd8\xff\xd8"  # the workers leave it encoded, and every decoder refuses it
    (root / "damaged.jpg").write_bytes(bytes(damaged))
    assert probe_image(bytes(damaged)).plain_jpeg
    return write_bad_files(root) | {"damaged.jpg": "corrupt"}


def test_index_on_the_device_matches_the_query_path_and_reports_the_same_failures(
    tmp_path: Path, two_embedders, settings
) -> None:
    root = tmp_path / "photos"
    bad = _photo_folder(root)
    models = _on_device(two_embedders)
    with Store.from_settings(settings) as store:
        summary = run_index(folder_source(root), index_name="dev", embedders=models, store=store,
                            settings=settings, workers=1, batch_size=3)
        failed = dict(summary.failures)
        assert failed == bad  # "damaged.jpg": refused on the device, then by decode_image, whose reason it reports
        good = sorted(p.name for p in root.iterdir() if p.name not in failed)
        assert {"photo_0.jpg", "turned.jpg", "cmyk.jpg"} <= set(good)
        for key, emb in models.items():
            manifest = store.get_manifest("dev", key)
            assert manifest["preprocessing"]["decoder"] == "device"
            assert manifest["preprocessing"]["decode_short_side"] is None
            path, bound = emb.query_preprocessing(manifest)
            assert (path, bound) == ("fast", None)  # a query decodes in full, as this index did
            assert summary.per_model[key].indexed == len(good) and store.count("dev", key) == len(good)
            ids = [row_id("dev", n) for n in good]
            rows = {r["rel_path"]: r for r in store.get_rows("dev", key, ids, with_vectors=True)}
            for name in good:
                decoded = decode_image(root / name, min_short_side=bound)
                query = emb.embed(emb.preprocess(decoded.image, path).unsqueeze(0))[0]
                stored = np.asarray(rows[name]["vector"], np.float32)
                cosine = float(query @ stored / (np.linalg.norm(query) * np.linalg.norm(stored)))
                assert cosine >= 0.9999, (key, name, cosine)
                assert (rows[name]["width"], rows[name]["height"]) == (decoded.width, decoded.height)
        # the rerun finds every file unchanged; nothing is decoded twice or stored twice; --strict still fails
        again = run_index(folder_source(root), index_name="dev", embedders=models, store=store, settings=settings,
                          workers=0)
        assert all(c.indexed == 0 and c.unchanged == len(good) for c in again.per_model.values())
        assert all(store.count("dev", key) == len(good) for key in models)
        with pytest.raises(StrictModeError):
            run_index(folder_source(root), index_name="dev", embedders=models, store=store, settings=settings,
                      workers=0, strict=True)
    # a service that decodes with workers by default still queries this index as it was made: in full
    holder = StoreHolder(lambda: Store.from_settings(settings))
    try:
        engine = SearchEngine(store=holder, embedders=two_embedders, settings=settings)
        result = engine.search_image("dev", (root / "turned.jpg").read_bytes(), k=1)
    finally:
        holder.close()
    for model in result.models:
        [first] = model.neighbours
        assert first.id == row_id("dev", "turned.jpg") and first.distance < 1e-3, (model.model_key, first.distance)


def test_device_decode_needs_the_fast_path_and_the_local_engine(tmp_path: Path, cli_env) -> None:
    with pytest.raises(ValueError, match="--preprocess fast"):
        Settings(decode="device", preprocess="exact")
    assert Settings(decode=" DEVICE ").decode == "device"
    from embedsvc.cli import app

    root = tmp_path / "photos"
    root.mkdir()
    (root / "a.jpg").write_bytes(_jpeg(Image.new("RGB", (40, 30), (9, 99, 199))))
    base = ["index", "folder", str(root), "--name", "d", "--data-dir", str(tmp_path / "data"), "-m", "deit3_small",
            "--allow-random-weights", "--device", "cpu", "--decode", "device"]
    for extra, message in (
        (["--preprocess", "exact"], "needs the fast preprocessing path"),
        (["--engine", "ray", "--ray-cpus", "1"], "--decode device runs with --engine local"),
    ):
        result = CliRunner().invoke(app, [*base, *extra])
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code != 0 and len(errors) == 1 and message in errors[0], result.output
        assert "Traceback" not in result.output
    done = CliRunner().invoke(app, [*base, "--workers", "0"])
    assert done.exit_code == 0, done.output
    assert "it pays on a GPU" in done.output  # the warning on a CPU model
