"""GResNet-50: architecture numbers, timm interface, exact folding, checkpoint remapping."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import embedsvc.models  # noqa: F401  (registers gresnet50 with timm)
from embedsvc.models.checkpoints import load_weights
from embedsvc.models.gresnet import GDRIVE_FILE_ID, GResNet, checkpoint_filter_fn, fold_gresnet
from embedsvc.models.layers import Affine, MeanPad, SNConv

TINY = dict(layers=(1, 2), widths=(2, 4), stem_chs=(2, 3, 4))  # 2 stages, 3 blocks: a few hundred params


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@torch.no_grad()
def _randomize_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial statistics and affines: a fold that ignores mu, s, gamma or beta anywhere shows up."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
        elif isinstance(m, Affine):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    return model.eval()


def _tiny(**kwargs: object) -> GResNet:
    torch.manual_seed(0)
    return GResNet(**{**TINY, "num_classes": 3, **kwargs}).eval()  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def gresnet50() -> GResNet:
    torch.manual_seed(0)
    return _randomize_stats(timm.create_model("gresnet50"))


@pytest.fixture(scope="module")
def folded(gresnet50: GResNet) -> GResNet:
    return fold_gresnet(gresnet50)


@pytest.fixture(scope="module")
def folded_naive(gresnet50: GResNet) -> GResNet:
    return gresnet50.fold(exact_border=False)


# --- architecture and timm interface -------------------------------------------------------------


def test_registered_with_exact_parameter_count(gresnet50: GResNet) -> None:
    assert "gresnet50" in timm.list_models("gresnet*")
    assert isinstance(gresnet50, GResNet)
    assert sum(p.numel() for p in gresnet50.parameters()) == 25_661_448
    assert gresnet50.num_features == 2048
    assert gresnet50.num_classes == 1000


@pytest.mark.parametrize("size", [176, 224, 97])
def test_forward_shapes(gresnet50: GResNet, size: int) -> None:
    torch.manual_seed(size)
    x = torch.randn(1, 3, size, size)
    side = size
    for _ in range(5):  # stem conv + four downsampling stages, each ceil-halving
        side = math.ceil(side / 2)
    with torch.no_grad():
        feats = gresnet50.forward_features(x)
        assert feats.shape == (1, 2048, side, side)
        assert gresnet50.forward_head(feats, pre_logits=True).shape == (1, 2048)
        assert gresnet50.forward_head(feats).shape == (1, 1000)


def test_num_classes_zero_and_reset_classifier() -> None:
    model = timm.create_model("gresnet50", num_classes=0, **TINY).eval()
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        emb = model(x)
        assert emb.shape == (2, model.num_features) == (2, 16)
        assert torch.equal(emb, model.forward_head(model.forward_features(x), pre_logits=True))
        model.reset_classifier(5)
        assert isinstance(model.get_classifier(), nn.Linear)
        assert model.get_classifier(name_only=True) == "fc"
        assert model(x).shape == (2, 5)


def test_options_zero_init_last_drop_path_act() -> None:
    model = _tiny(zero_init_last=True, drop_path_rate=0.1, act_layer="relu")
    blocks = [b for stage in model.stages for b in stage]
    assert all(torch.count_nonzero(b.conv3.affine.weight) == 0 for b in blocks)
    assert isinstance(blocks[-1].drop_path, timm.layers.DropPath)
    assert isinstance(blocks[0].act1, nn.ReLU)
    assert not any(isinstance(m, timm.layers.DropPath) for m in model.fold().modules())
    default = _tiny()
    assert not any(isinstance(m, timm.layers.DropPath) for m in default.modules())
    assert all(torch.all(b.conv3.affine.weight == 1) for stage in default.stages for b in stage)


def test_pretrained_cfg(gresnet50: GResNet) -> None:
    cfg = gresnet50.pretrained_cfg
    assert cfg["tag"] == "fl_in1k"
    assert GDRIVE_FILE_ID == "1WKPkLybhrE389sierVj2-uZ_ZYAJI1Gf"
    assert GDRIVE_FILE_ID in cfg["origin_url"]
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["interpolation"] == "bilinear"
    assert cfg["crop_pct"] == pytest.approx(224 / 232)
    assert cfg["first_conv"] == "stem.conv1.conv" and cfg["classifier"] == "fc"
    assert "license" in cfg
    gresnet50.get_submodule(cfg["first_conv"])  # names a real module
    data = timm.data.resolve_model_data_config(gresnet50)
    assert data["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and data["std"] == timm.data.IMAGENET_DEFAULT_STD


# --- folding ---------------------------------------------------------------------------------------


def test_mean_pad_matches_padding_the_normalized_input() -> None:
    torch.manual_seed(0)
    x, mu = torch.randn(2, 3, 5, 4), torch.randn(3)
    ref = F.pad(x - mu.view(1, 3, 1, 1), [1, 1, 1, 1]) + mu.view(1, 3, 1, 1)
    torch.testing.assert_close(MeanPad(mu, 1)(x), ref)


@pytest.mark.parametrize(("kernel_size", "stride", "size"), [(3, 2, 7), (3, 1, 6), (1, 1, 5)])
def test_snconv_fold_exact(kernel_size: int, stride: int, size: int) -> None:
    torch.manual_seed(0)
    unit = _randomize_stats(SNConv(4, 6, kernel_size, stride))
    x = torch.randn(2, 4, size, size)
    with torch.no_grad():
        assert _rel(unit.fold()(x), unit(x)) < 1e-6


@pytest.mark.parametrize("size", [176, 224])
def test_fold_is_exact(gresnet50: GResNet, folded: GResNet, folded_naive: GResNet, size: int) -> None:
    torch.manual_seed(size)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ref = gresnet50.forward_features(x)
        out = folded.forward_features(x)
        naive = folded_naive.forward_features(x)
        for pre_logits in (True, False):
            r = gresnet50.forward_head(ref, pre_logits=pre_logits)
            assert _rel(folded.forward_head(out, pre_logits=pre_logits), r) < 1e-5
            # the border correction is what makes it exact: the naive fold is visibly off
            assert _rel(folded_naive.forward_head(naive, pre_logits=pre_logits), r) > 1e-3


def test_folded_model_structure_and_interface(gresnet50: GResNet, folded: GResNet) -> None:
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert not any(isinstance(m, SNConv | Affine) for m in folded.modules())
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is not None for c in convs)
    assert all(c.padding in ((0, 0), 0) for c in convs)  # padding now comes from MeanPad
    assert sum(isinstance(m, MeanPad) for m in folded.modules()) == 3 + 16  # stem + one 3x3 per block
    assert isinstance(folded.get_classifier(), nn.Linear)
    assert folded.num_features == 2048 and not folded.training and folded.is_folded
    assert folded.pretrained_cfg == gresnet50.pretrained_cfg and folded.default_cfg
    assert any(isinstance(m, SNConv) for m in gresnet50.modules())  # original untouched
    assert all(p.dtype == torch.float32 for p in folded.parameters())


# --- checkpoint_filter_fn --------------------------------------------------------------------------


def _foreign(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors under unrelated names, no num_batches_tracked: what another codebase might save."""
    return {f"net.{i}.p": v.clone() for i, (k, v) in enumerate(sd.items()) if "num_batches" not in k}


def test_filter_passes_our_names_and_loader_unwraps(tmp_path: Path) -> None:
    """The filter is key mapping only; wrappers are timm's loader's: EMA chosen, ``module.`` stripped, nested."""
    source, target = _randomize_stats(_tiny(), seed=1), _tiny()
    sd = source.state_dict()
    out = checkpoint_filter_fn(sd | {"n_averaged": torch.tensor(7)}, target)
    assert set(out) == set(sd)
    assert all(out[k] is sd[k] for k in sd)  # our names, returned as is
    ckpt = {
        "model": {"module." + k: torch.zeros_like(v) for k, v in sd.items()},
        "model_ema": {"module." + k: v for k, v in sd.items()} | {"n_averaged": torch.tensor(7)},
        "epoch": 3,
    }
    for i, wrapped in enumerate((ckpt, {"state_dict": {"model": sd}})):
        path = tmp_path / f"wrapped{i}.pth"
        torch.save(wrapped, path)
        model = _tiny()
        load_weights(model, path, checkpoint_filter_fn)
        loaded = model.state_dict()
        assert set(loaded) == set(sd)
        assert all(torch.equal(loaded[k], sd[k]) for k in sd)  # EMA chosen (the raw model is all zeros)


def test_filter_maps_renamed_keys_in_order() -> None:
    source, target = _randomize_stats(_tiny(), seed=2), _tiny()
    out = checkpoint_filter_fn(_foreign(source.state_dict()), target)  # timm's loader unwraps, see above
    target.load_state_dict(out, strict=True)
    x = torch.randn(1, 3, 19, 19)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


def test_filter_refuses_shape_mismatch_and_lists_it() -> None:
    source, target = _tiny(), _tiny(widths=(2, 5))
    with pytest.raises(ValueError, match=r"stages\.1\.0\.conv1\.conv\.weight") as err:
        checkpoint_filter_fn(_foreign(source.state_dict()), target)
    assert "(5, 8, 1, 1)" in str(err.value) and "(4, 8, 1, 1)" in str(err.value)
    with pytest.raises(ValueError, match="count"):
        checkpoint_filter_fn(dict(list(_foreign(source.state_dict()).items())[:-3]), _tiny())


def test_filter_through_timm_loader_headless(tmp_path: Path) -> None:
    """The embedder's path: a downloaded file, foreign names, `num_classes=0`, strict timm loading."""
    source = _randomize_stats(_tiny(num_classes=1000), seed=3)
    path = tmp_path / "gresnet.pth"
    torch.save({"model_ema": {"module." + k: v for k, v in _foreign(source.state_dict()).items()}}, path)
    model = timm.create_model(
        "gresnet50.fl_in1k", pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=str(path)), **TINY
    ).eval()
    x = torch.randn(1, 3, 21, 21)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source.forward_head(source.forward_features(x), pre_logits=True))
