"""Checkpoint loading through timm (one EMA rule), key mapping, and errors that name the file and the reason."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import load_state_dict

import embedsvc.models  # noqa: F401  (registers gresnet50 with timm)
from embedsvc.core.errors import EmbedsvcError
from embedsvc.models.checkpoints import EMA_FIRST_KEYS, CheckpointError, CheckpointMismatchError, load_weights
from embedsvc.models.gresnet import GDRIVE_FILE_ID, GResNet, checkpoint_filter_fn
from embedsvc.models.registry import get_spec
from embedsvc.models.weights import hub_source, sha256_of

TINY = dict(layers=(1, 2), widths=(2, 4), stem_chs=(2, 3, 4))


def _gresnet(seed: int, **kwargs: object) -> GResNet:
    """A tiny GResNet with non-trivial statistics, so a wrong tensor anywhere changes the output."""
    torch.manual_seed(seed)
    model = GResNet(**{**TINY, "num_classes": 3, **kwargs}).eval()  # type: ignore[arg-type]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.randn(2, 3, 19, 19, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def _load(path: Path, **kwargs: object) -> GResNet:
    model = _gresnet(99, **kwargs)
    load_weights(model, path, checkpoint_filter_fn)
    return model


def test_ema_weights_win_with_timms_priority_at_every_level(tmp_path: Path) -> None:
    """state_dict_ema > model_ema > state_dict > model, as timm's load_state_dict(use_ema=True), nested too."""
    models = {key: _gresnet(i) for i, key in enumerate(EMA_FIRST_KEYS)}
    for first in range(len(EMA_FIRST_KEYS)):
        present = {k: models[k].state_dict() for k in EMA_FIRST_KEYS[first:]} | {"epoch": 7}
        winner = models[EMA_FIRST_KEYS[first]]
        for label, ckpt in (("top", present), ("nested", {"state_dict": present})):
            path = tmp_path / f"{label}{first}.pth"
            torch.save(ckpt, path)
            assert _same_outputs(_load(path), winner), (label, EMA_FIRST_KEYS[first])
        top = load_state_dict(str(tmp_path / f"top{first}.pth"), use_ema=True)  # timm's own choice agrees
        assert all(torch.equal(top[k], v) for k, v in winner.state_dict().items())


def test_module_and_compile_prefixed_checkpoints(tmp_path: Path) -> None:
    source = _gresnet(1)
    for prefix in ("module.", "_orig_mod.", "_orig_mod.module."):
        path = tmp_path / "ddp.pth"
        torch.save({"model": {prefix + k: v for k, v in source.state_dict().items()}}, path)
        assert _same_outputs(_load(path), source), prefix


def test_gresnet_alternative_key_names_map_in_order(tmp_path: Path) -> None:
    """Another codebase's names (a gist-style layout with BN counters and a 1000-class head), mapped in order."""
    source = _gresnet(2, num_classes=1000)
    renamed = {}
    for i, (k, v) in enumerate(source.state_dict().items()):
        leaf = k.rsplit(".", 1)[-1]
        renamed[f"features.{i}.{leaf}"] = v.clone()
    sorted_file = tmp_path / "gist.safetensors"  # safetensors stores keys sorted: position means nothing there
    save_file(renamed, str(sorted_file))
    with pytest.raises(CheckpointMismatchError, match=r"gist\.safetensors: .*safetensors file.*sorted"):
        _load(sorted_file, num_classes=1000)
    path = tmp_path / "gist.pth"
    torch.save(renamed, path)
    model = _load(path, num_classes=1000)
    assert _same_outputs(model, source)
    headless = _load(path, num_classes=0)  # classifier of the checkpoint dropped, body loaded
    x = torch.randn(1, 3, 21, 21)
    with torch.no_grad():
        torch.testing.assert_close(headless(x), source.forward_head(source.forward_features(x), pre_logits=True))


def test_mismatch_names_the_file_and_lists_keys(tmp_path: Path) -> None:
    path = tmp_path / "wider.pth"
    torch.save({"state_dict": {f"x.{k}": v for k, v in _gresnet(3, widths=(2, 5)).state_dict().items()}}, path)
    with pytest.raises(CheckpointMismatchError) as info:
        _load(path)
    message = info.value.message
    assert str(path) in message and "stages.1.0.conv1.conv.weight" in message and "(5, 8, 1, 1)" in message
    assert info.value.reason == "mismatch" and isinstance(info.value, EmbedsvcError)


def test_truncated_and_empty_files_are_named_with_their_reason(tmp_path: Path) -> None:
    good = tmp_path / "good.pth"
    torch.save(_gresnet(4).state_dict(), good)
    data = good.read_bytes()
    save_file(_gresnet(4).state_dict(), str(tmp_path / "good.safetensors"))
    cases = {
        "truncated.pth": data[: len(data) // 2],
        "truncated.safetensors": (tmp_path / "good.safetensors").read_bytes()[:300],
        "notes.pth": b"these are not weights\n",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            _load(tmp_path / name)
        assert str(tmp_path / name) in info.value.message and "truncated" in info.value.message, name
        assert info.value.reason == "truncated_or_corrupt" and info.value.code == "checkpoint_unreadable"
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pth: empty file \(0 bytes\)") as info:
        _load(tmp_path / "empty.pth")
    assert info.value.reason == "empty"


def test_pickled_module_is_refused_without_unpickling_code(tmp_path: Path) -> None:
    path = tmp_path / "whole_model.pth"
    torch.save(_gresnet(5), path)  # torch.save(model), not model.state_dict()
    with pytest.raises(CheckpointError) as info:
        _load(path)
    message = info.value.message
    assert info.value.reason == "pickled_objects" and str(path) in message
    assert "embedsvc.models.gresnet.GResNet" in message and "state_dict()" in message


def test_drive_id_lives_in_the_pretrained_cfg_and_file_hashing() -> None:
    cfg = timm.get_pretrained_cfg("gresnet50.fl_in1k")
    assert cfg.origin_url == f"https://drive.google.com/file/d/{GDRIVE_FILE_ID}"
    source = get_spec("gresnet50").weights
    assert source is not None and source.kind == "gdrive" and source.location == GDRIVE_FILE_ID
    assert source.describe() == f"gdrive:{GDRIVE_FILE_ID}" and source.filename == "gresnet50.pth"
    assert hub_source("convnext_tiny.fb_in1k").location == "timm/convnext_tiny.fb_in1k"
    path = Path(embedsvc.models.gresnet.__file__)
    assert sha256_of(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def _embedding(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(2, 3, 19, 19, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def test_gresnet_checkpoint_variants_load_or_are_refused_with_the_list(tmp_path: Path) -> None:
    """Variants a published file may be: each loads with the source's embeddings, or is refused with the list."""
    source = _gresnet(6)
    ours = source.state_dict()
    head = ("fc.weight", "fc.bias")
    body = {k: v for k, v in ours.items() if k not in head}
    foreign_body = {f"layer{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(body.items())}
    loads = {
        "ours.pth": ours,
        "ema_ddp.pth": {"model_ema": {f"module.{k}": v for k, v in ours.items()}, "optimizer": {}, "epoch": 3},
        "no_classifier.pth": body,
        "no_classifier_foreign.pth": foreign_body,
    }
    for name, checkpoint in loads.items():
        torch.save(checkpoint, tmp_path / name)
        model = _load(tmp_path / name)
        torch.testing.assert_close(_embedding(model), _embedding(source), rtol=0, atol=0, msg=name)
        if "classifier" not in name:
            assert _same_outputs(model, source), name

    wrong = dict(ours)
    wrong["stages.1.0.conv2.conv.weight"] = torch.zeros(4, 4, 5, 5)
    torch.save(wrong, tmp_path / "wrong_shape.pth")
    with pytest.raises(CheckpointMismatchError) as info:
        _load(tmp_path / "wrong_shape.pth")
    message = info.value.message
    assert str(tmp_path / "wrong_shape.pth") in message and "shape mismatches" in message
    assert "stages.1.0.conv2.conv.weight: checkpoint (4, 4, 5, 5) != model (4, 4, 3, 3)" in message
