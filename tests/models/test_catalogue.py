"""`embedsvc models --catalogue`: curated timm backbones with dims and input sizes read from timm."""

from __future__ import annotations

import json

import timm
from typer.testing import CliRunner

from embedsvc.models.registry import get_spec


def test_catalogue_lists_curated_backbones_with_dims_and_input_sizes() -> None:
    from embedsvc.cli import app

    result = CliRunner().invoke(app, ["models", "--catalogue", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["timm_name"]: row for row in json.loads(result.stdout)}
    expected = {  # (dim, input side), as published for each model
        "vit_small_patch14_dinov2.lvd142m": (384, 518),
        "vit_base_patch16_clip_224.openai": (768, 224),
        "vit_base_patch16_siglip_224.webli": (768, 224),
        "eva02_base_patch14_224.mim_in22k": (768, 224),
        "convnextv2_tiny.fcmae_ft_in22k_in1k": (768, 224),
        "resnet50.a1_in1k": (2048, 224),
    }
    for name, (dim, side) in expected.items():
        assert (rows[name]["dim"], rows[name]["input_size"]) == (dim, [3, side, side]), name
    # the meta-device dimension is the real model's, and every entry is a valid -m value
    assert rows["resnet50.a1_in1k"]["dim"] == timm.create_model("resnet50", pretrained=False).num_features
    for row in rows.values():
        assert get_spec(row["use"]).model_name == row["timm_name"]
        assert row["weights"] == f"hf-hub:timm/{row['timm_name']}"


def test_catalogue_table_names_every_entry() -> None:
    from embedsvc.cli import app

    result = CliRunner(env={"COLUMNS": "250"}).invoke(app, ["models", "--catalogue"])
    assert result.exit_code == 0, result.output
    assert "vit_small_patch14_dinov2.lvd142m" in result.stdout and "384" in result.stdout
