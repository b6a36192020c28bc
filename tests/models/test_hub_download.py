"""The first run with internet, against a Hugging Face hub on 127.0.0.1 (``HF_ENDPOINT``), end to end.

Each run is a fresh ``embedsvc models --load`` process: huggingface_hub reads ``HF_HOME``,
``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` when it is imported, as it does for users. The served file is a
real ``model.safetensors`` of seeded random ConvNeXt-T weights, made once per session.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from embedsvc.models.download import endpoint_unreachable
from tests.models.local_hub import LocalHub

REPO_ID = "timm/convnext_tiny.fb_in1k"
RESOLVE = f"/{REPO_ID}/resolve/main/model.safetensors"


@pytest.fixture(scope="session")
def convnext_safetensors(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """ConvNeXt-T's state dict (seed 0) as the hub stores it: safetensors, ~114 MB."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hub") / "model.safetensors"
    save_file(timm.create_model("convnext_tiny", pretrained=False).state_dict(), str(path))
    return path.read_bytes()


def _run(tmp_path: Path, hub: LocalHub, **env: str) -> subprocess.CompletedProcess[str]:
    """One `embedsvc models --load -m convnext_tiny --json` run with only the test's hub settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDSVC_", "HF_")) and "proxy" not in k.lower()}
    clean |= {
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_ENDPOINT": hub.url,
        "EMBEDSVC_DATA_DIR": str(tmp_path / "data"),
        "EMBEDSVC_DEVICE": "cpu",
        "COLUMNS": "200",
    } | env
    return subprocess.run(
        [sys.executable, "-m", "embedsvc.cli", "models", "--load", "-m", "convnext_tiny", "--json"],
        env=clean, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )


def _cache_files(tmp_path: Path) -> list[str]:
    """Files under the Hugging Face cache (HF_HOME/hub), bookkeeping (locks, refs, tags) left out."""
    hub_cache = tmp_path / "hf_home" / "hub"
    return sorted(
        str(p.relative_to(hub_cache)) for p in hub_cache.rglob("*")
        if p.is_file() and ".locks" not in p.parts and "refs" not in p.parts and p.name != "CACHEDIR.TAG"
    )


def test_first_run_downloads_into_the_hf_cache_then_loads_from_it(tmp_path: Path, convnext_safetensors: bytes) -> None:
    """Interrupted download: nothing cached. Then: download with progress, cache without a request, HF_HUB_OFFLINE;
    a cached file gone bad is refused with the command that removes it."""
    with LocalHub() as hub:
        sha = hub.add_hf_file(REPO_ID, "model.safetensors", convnext_safetensors, mode="drop")
        dropped = _run(tmp_path, hub)
        assert dropped.returncode != 0, dropped.stderr
        assert [(r.method, r.range is not None) for r in hub.requests_for(RESOLVE)] == [
            ("HEAD", False), ("GET", False), ("GET", True)  # metadata, the download cut midway, a refused resume
        ]
        assert "no weights for convnext_tiny.fb_in1k" in dropped.stderr and f"hf-hub:{REPO_ID}" in dropped.stderr
        assert "--allow-random-weights" in dropped.stderr
        assert _cache_files(tmp_path) == []  # no blob, no .incomplete file: the next run starts clean

        hub.add_hf_file(REPO_ID, "model.safetensors", convnext_safetensors)
        before = len(hub.requests)
        first = _run(tmp_path, hub)
        assert first.returncode == 0, first.stderr
        label = f"hf-hub:{REPO_ID} (sha256 {sha[:12]})"
        assert json.loads(first.stdout)[0]["weights"] == label
        assert [r.method for r in hub.requests[before:]] == ["HEAD", "GET"]
        size_mb = f"{len(convnext_safetensors) / 1e6:.1f} MB"
        for pct in (10, 50, 100):  # not a terminal: one log line per 10% instead of tqdm's bar
            assert f"downloading {REPO_ID}/model.safetensors: {pct}% of {size_mb}" in first.stderr, first.stderr
        blob = f"models--timm--convnext_tiny.fb_in1k/blobs/{sha}"
        assert blob in _cache_files(tmp_path)  # huggingface_hub's own cache under HF_HOME, not ours
        assert not (tmp_path / "data" / "models").exists()

        before = len(hub.requests)
        second = _run(tmp_path, hub)
        assert second.returncode == 0 and json.loads(second.stdout)[0]["weights"] == label, second.stderr
        assert hub.requests[before:] == []  # from the cache, without even a HEAD

        offline = _run(tmp_path, hub, HF_HUB_OFFLINE="1")
        assert offline.returncode == 0 and json.loads(offline.stdout)[0]["weights"] == label, offline.stderr
        assert hub.requests[before:] == []

    blob_path = tmp_path / "hf_home" / "hub" / blob
    blob_path.write_bytes(convnext_safetensors[: len(convnext_safetensors) // 3])  # a cached file gone bad
    bad = _run(tmp_path, hub, HF_HUB_OFFLINE="1")
    assert bad.returncode != 0 and "differs from the hub's" in bad.stderr, bad.stderr
    command = re.search(r"remove it with `(hf cache rm [^`(]+?) \(or rm -r", bad.stderr, re.S)
    assert command and "--allow-random-weights" in bad.stderr, bad.stderr
    hf = Path(sys.executable).with_name("hf")
    subprocess.run([str(hf), *shlex.split(command[1])[1:]], check=True, capture_output=True, timeout=120)
    assert _cache_files(tmp_path) == []  # removed: the next run downloads it again


def test_the_reachability_probe_steps_aside_for_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behind a proxy the hub's host need not resolve here: the client (which honours HTTPS_PROXY) tries."""
    for name in list(os.environ):
        if "proxy" in name.lower():
            monkeypatch.delenv(name)
    assert "hub.invalid:443 is unreachable" in (endpoint_unreachable("https://hub.invalid") or "")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert endpoint_unreachable("https://hub.invalid") is None
    monkeypatch.setenv("NO_PROXY", "hub.invalid")
    assert endpoint_unreachable("https://hub.invalid") is not None
