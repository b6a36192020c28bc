"""Any timm model as an embedder: `-m KEY=timm:<arch.tag>` end to end, and one error line for a bad name."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
from typer.testing import CliRunner

from embedsvc.core.config import get_settings
from embedsvc.embedder import load_embedders
from embedsvc.models.registry import get_spec
from embedsvc.store import Store
from tests.support import make_settings, write_images


def invoke(args: list[str]):
    from embedsvc.cli import app

    get_settings.cache_clear()
    return CliRunner().invoke(app, args)


def test_index_folder_with_a_named_timm_model(tmp_path: Path, cli_env) -> None:
    root = tmp_path / "photos"
    write_images(root, 4)
    data = tmp_path / "data"
    result = invoke(["index", "folder", str(root), "--name", "t", "--data-dir", str(data), "--workers", "0",
                     "-m", "mini=timm:resnet18.a1_in1k", "--allow-random-weights", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with Store(str(data / "milvus.db")) as store:
        manifest = store.get_manifest("t", "mini")
        assert store.count("t", "mini") == 4
    cfg = timm.get_pretrained_cfg("resnet18.a1_in1k")
    assert manifest["model_name"] == "resnet18.a1_in1k" and manifest["dim"] == 512  # resnet18's num_features
    assert manifest["preprocessing"] == {  # timm's pretrained cfg, at the 64 px the test asks for
        "input_size": [3, 64, 64], "interpolation": cfg.interpolation, "crop_pct": cfg.crop_pct,
        "crop_mode": cfg.crop_mode, "mean": list(cfg.mean), "std": list(cfg.std),
        "path": "fast", "decoder": "worker",
        "decode_short_side": math.ceil(2.5 * int(64 / cfg.crop_pct)),  # fast decode: 2.5x its resize
    }
    assert cfg.interpolation == "bicubic" and cfg.crop_pct == 0.95  # not ours: resnet18.a1's own
    assert manifest["weights"]["trained"] is False and "hf-hub:timm/resnet18.a1_in1k" in manifest["weights"]["reason"]


def test_settings_models_accept_timm_names_with_a_derived_key(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, models=["timm:resnet18.a1_in1k", "deit3_small"])
    embedders = load_embedders(settings.model_keys(), settings=settings)
    assert list(embedders) == ["resnet18", "deit3_small"]
    assert embedders["resnet18"].dim == 512 and embedders["resnet18"].manifest()["model_name"] == "resnet18.a1_in1k"
    assert get_spec("timm:vit_small_patch14_dinov2.lvd142m").key == "vit_small_patch14_dinov2"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("timm:nosuch_arch.x", "unknown timm architecture 'nosuch_arch'"),
        ("timm:resnet18.nosuch", "has no pretrained tag 'nosuch'"),
        ("Bad Key=timm:resnet18", "use lowercase letters"),
        ("deit3_small=timm:resnet18", "is a built-in model's"),
    ],
)
def test_bad_timm_names_are_one_error_line(tmp_path: Path, cli_env, model: str, message: str) -> None:
    result = invoke(["index", "folder", str(tmp_path), "--name", "t", "--data-dir", str(tmp_path), "-m", model])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_timm_model_weights_from_an_explicit_file(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    settings = make_settings(tmp_path, allow_random_weights=False, weights={"r18": str(path)})
    emb = load_embedders(["r18=timm:resnet18.a1_in1k"], settings=settings)["r18"]
    assert emb.provenance.trained and emb.provenance.source == f"file:{path.resolve()}"
    assert emb.manifest()["weights"]["sha256"] == emb.provenance.sha256 and emb.dim == 512
