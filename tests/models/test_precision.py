"""Precision as a setting: what ``auto`` resolves to, bf16 fidelity on this CPU, the manifest records it (and an
index answers queries of the other precision), the CLI flag and env var, bad values, and torch.compile on CPU."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from embedsvc.core.config import get_settings
from embedsvc.embedder import CompileError, load_embedder
from embedsvc.images import decode_image
from embedsvc.manifest import combined_precision, incompatibilities, precision_mismatch
from embedsvc.models import precision as P
from embedsvc.models.precision import PrecisionError, cpu_bf16_flags, resolve_precision
from embedsvc.store import Store, row_id
from tests.support import SAMPLE_PHOTOS, make_settings
from tests.test_cli_errors import check

PHOTOS = sorted(SAMPLE_PHOTOS.glob("*/*.jpg"))


# -- which precision runs where ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("requested", "device", "cpu_bf16", "cuda_bf16", "expected"),
    [
        ("auto", "cpu", True, False, "bf16"),
        ("auto", "cpu", False, False, "fp32"),
        ("auto", "cuda", False, True, "bf16"),
        ("auto", "cuda:0", False, False, "fp32"),  # a GPU without bf16 (pre-Ampere): fp32, not a guess
        ("auto", "mps", True, False, "fp32"),
        ("fp32", "cpu", True, True, "fp32"),
        ("bf16", "cpu", True, False, "bf16"),
        ("bf16", "cpu", False, False, "bf16"),  # asked for: runs (emulated), with a warning
        (" BF16 ", "cuda", False, True, "bf16"),
        ("fp16", "cuda", False, True, "fp16"),
    ],
)
def test_resolution(
    monkeypatch: pytest.MonkeyPatch, requested: str, device: str, cpu_bf16: bool, cuda_bf16: bool, expected: str
) -> None:
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: cpu_bf16)
    monkeypatch.setattr(P, "_cuda_has_bf16", lambda _device: cuda_bf16)
    assert resolve_precision(requested, device) == expected


@pytest.mark.parametrize(
    ("requested", "device", "message"),
    [
        ("fp16", "cpu", "fp16 needs a CUDA device"),
        ("int8", "cpu", "unknown precision 'int8'"),
        ("bf16", "mps", "bf16 runs on cpu or cuda"),
    ],
)
def test_refused(monkeypatch: pytest.MonkeyPatch, requested: str, device: str, message: str) -> None:
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: True)
    with pytest.raises(PrecisionError, match=message):
        resolve_precision(requested, device)


def test_bf16_units_read_from_cpuinfo_flags(tmp_path: Path) -> None:
    """Both units count, whichever core line names them; no file (not Linux) means none."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_bf16_flags(info) == ("avx512_bf16",)
    info.write_text("flags\t: fpu amx_bf16 amx_tile avx512_bf16\n")
    assert cpu_bf16_flags(info) == ("amx_bf16", "avx512_bf16")
    info.write_text("flags\t: fpu avx512f avx512_vnni\n")  # AVX512 alone is emulation, not a bf16 unit
    assert cpu_bf16_flags(info) == ()
    assert cpu_bf16_flags(tmp_path / "missing") == ()


def test_this_machine_resolves_by_its_own_flags() -> None:
    """Whatever this CPU is, ``auto`` follows its flags (a bf16-capable CPU gets bf16)."""
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_bf16_flags() else "fp32")


# -- fidelity ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["gresnet50", "convnext_tiny", "deit3_small"])
def test_bf16_agrees_with_fp32(tmp_path: Path, key: str) -> None:
    """Random weights at 64 px on real photos: per-image cosine >= 0.999, float32 unit vectors out."""
    fp32 = load_embedder(key, settings=make_settings(tmp_path), precision="fp32")
    bf16 = dataclasses.replace(fp32, precision="bf16")  # the same weights, autocast to bf16
    images = [decode_image(p).image for p in PHOTOS[::11]]
    a, b = fp32.embed_images(images), bf16.embed_images(images)
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (len(images), fp32.dim)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, rtol=1e-5)  # normalised after the upcast
    cosine = (a * b).sum(1)
    assert cosine.min() >= 0.999, cosine
    assert not np.array_equal(a, b)  # bf16 really ran (else the comparison proves nothing)


@pytest.mark.parametrize("key", ["gresnet50", "convnext_tiny", "deit3_small"])
def test_weights_cast_once_give_autocasts_own_vectors(tmp_path: Path, key: str) -> None:
    """A bf16 embedder keeps its conv/linear weights in bf16 (not re-cast every forward), norms in float32, and
    gives exactly the vectors autocast gives from the float32 weights."""
    settings = make_settings(tmp_path)
    bf16 = load_embedder(key, settings=settings, precision="bf16")
    modules = list(bf16.model.modules())
    assert {m.weight.dtype for m in modules if type(m) in (torch.nn.Conv2d, torch.nn.Linear)} == {torch.bfloat16}
    norms = [m for m in modules if isinstance(m, torch.nn.LayerNorm)]  # autocast runs norms in float32
    assert all(m.weight.dtype == torch.float32 for m in norms) and (norms or key == "gresnet50")  # GResNet: folded
    autocast_only = dataclasses.replace(
        load_embedder(key, settings=settings, precision="fp32"), precision="bf16"
    )  # float32 weights, cast by autocast at every call
    x = torch.rand(3, 3, 64, 64)
    np.testing.assert_array_equal(bf16.embed(x), autocast_only.embed(x))


def test_weights_cast_for_bf16_refuse_fp32_at_once(tmp_path: Path) -> None:
    bf16 = load_embedder("convnext_tiny", settings=make_settings(tmp_path), precision="bf16")
    with pytest.raises(ValueError, match="cast to bfloat16; load it again to run it in fp32"):
        dataclasses.replace(bf16, precision="fp32")


# -- recorded, shown, never refuses -------------------------------------------------------------------
def _index(store: Store, settings, root: Path, precision: str):
    from embedsvc.indexer.folder import folder_source
    from embedsvc.indexer.runner import run_index

    emb = load_embedder("efficientnet_lite0", settings=settings, precision=precision)
    summary = run_index(folder_source(root), index_name="prec", embedders={emb.key: emb}, store=store,
                        settings=settings, workers=0)
    return emb, summary


def test_manifest_records_precision_and_index_answers_the_other(tmp_path: Path) -> None:
    """Index at bf16 (real Lite0 weights): the manifest says bf16, /indexes and /models show it, an fp32 service
    finds each photo first; rows added at fp32 make the manifest say bf16+fp32."""
    from embedsvc.main import create_app

    settings = make_settings(tmp_path, input_size=None, models=["efficientnet_lite0"])
    root = tmp_path / "photos"
    root.mkdir()
    for photo in PHOTOS[:6]:
        shutil.copy(photo, root / photo.name)
    with Store.from_settings(settings) as store:
        bf16, summary = _index(store, settings, root, "bf16")
        assert summary.per_model["efficientnet_lite0"].indexed == 6
        assert bf16.manifest()["precision"] == "bf16"
        stored = store.get_manifest("prec", "efficientnet_lite0")
        assert stored["precision"] == "bf16"
    fp32 = load_embedder("efficientnet_lite0", settings=settings, precision="fp32")
    assert incompatibilities(stored, fp32.manifest()) == []
    with TestClient(create_app(settings, embedders={fp32.key: fp32})) as client:
        (model,) = client.get("/models").json()["data"]
        assert (model["precision"], model["compiled"]) == ("fp32", False)
        (index,) = [i for i in client.get("/indexes").json()["data"] if i["name"] == "prec"]
        (entry,) = index["models"]
        assert entry["manifest"]["precision"] == "bf16" and entry["compatible"] is True
        for photo in PHOTOS[:6]:
            resp = client.post("/search", params={"index": "prec", "k": 2},
                               files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
            assert resp.status_code == 200, resp.text
            first, second = resp.json()["models"][0]["neighbours"]
            assert first["id"] == row_id("prec", photo.name), first
            assert first["distance"] < 0.01 * second["distance"], (first, second)  # bf16 vs fp32: ~1e-3
    for photo in PHOTOS[6:8]:
        shutil.copy(photo, root / photo.name)
    with Store.from_settings(settings) as store:
        _, summary = _index(store, settings, root, "fp32")
        assert summary.per_model["efficientnet_lite0"].indexed == 2
        assert store.get_manifest("prec", "efficientnet_lite0")["precision"] == "bf16+fp32"


def test_combined_precision_and_mismatch() -> None:
    assert combined_precision("bf16", "bf16") == "bf16"
    assert combined_precision("fp32", "bf16") == combined_precision("bf16+fp32", "fp32") == "bf16+fp32"
    assert combined_precision(None, None) is None
    assert precision_mismatch({"precision": "bf16"}, "bf16") is None
    assert precision_mismatch({"precision": "bf16+fp32"}, "bf16") == "made at bf16+fp32"
    assert precision_mismatch({}, "fp32") == "made before precision was recorded"
    assert incompatibilities({"precision": "fp32", "dim": 8}, {"precision": "bf16", "dim": 8}) == []


# -- the CLI ------------------------------------------------------------------------------------------------
def _cli(args: list[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None):
    from embedsvc.cli import app

    with monkeypatch.context() as m:
        for key, value in (env or {}).items():
            m.setenv(key, value)
        get_settings.cache_clear()
        result = CliRunner().invoke(app, args)
    get_settings.cache_clear()
    return result


@pytest.fixture
def cli_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path]:
    for var in ("MILVUS_URI", "EMBEDSVC_MILVUS_URI", "EMBEDSVC_MODELS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("EMBEDSVC_OFFLINE", "1")
    monkeypatch.setenv("EMBEDSVC_INPUT_SIZE", "64")
    monkeypatch.setenv("EMBEDSVC_DATA_DIR", str(tmp_path / "data"))
    root = tmp_path / "photos"
    root.mkdir()
    for photo in PHOTOS[:3]:
        shutil.copy(photo, root / photo.name)
    return ["--workers", "0", "-m", "deit3_small", "--allow-random-weights", "--device", "cpu"], root


def test_flag_and_env_var_choose_the_recorded_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_setup: tuple[list[str], Path]
) -> None:
    fast, root = cli_setup
    runs = [
        ("flag", ["--precision", "bf16"], {}, "bf16"),
        ("env", [], {"EMBEDSVC_PRECISION": "bf16"}, "bf16"),
        ("flag over env", ["--precision", "fp32"], {"EMBEDSVC_PRECISION": "bf16"}, "fp32"),
    ]
    for name, flags, env, _expected in runs:
        result = _cli(["index", "folder", str(root), "--name", name.replace(" ", "-"), *fast, *flags], monkeypatch,
                      env)
        assert result.exit_code == 0, (name, result.output)
    with Store(str(tmp_path / "data" / "milvus.db")) as store:
        for name, _, _, expected in runs:
            manifest = store.get_manifest(name.replace(" ", "-"), "deit3_small")
            assert (manifest["precision"], manifest["row_count"]) == (expected, 3), name
    ok = _cli(["eval", "flag", "--precision", "bf16", "--ci-resamples", "10"], monkeypatch)
    assert ok.exit_code == 0, ok.output
    refused = _cli(["eval", "flag", "--precision", "fp32"], monkeypatch)
    assert not check("eval --precision other", refused.exit_code, refused.stdout, refused.stderr)
    assert "deit3_small made at bf16" in refused.stderr


@pytest.mark.parametrize(
    ("args", "env", "expect"),
    [
        (["index", "folder", "{root}", "--name", "x", "--precision", "int8"], {}, "--precision"),
        (["index", "folder", "{root}", "--name", "x"], {"EMBEDSVC_PRECISION": "int8"}, "precision"),
        (["index", "folder", "{root}", "--name", "x", "--precision", "fp16"], {}, "fp16 needs a CUDA device"),
        (["serve", "--precision", "half"], {}, "--precision"),
        (["eval", "x", "--precision", "int8"], {}, "--precision"),
    ],
)
def test_bad_precision_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, cli_setup: tuple[list[str], Path], args: list[str], env: dict[str, str],
    expect: str,
) -> None:
    fast, root = cli_setup
    args = [a.replace("{root}", str(root)) for a in args] + (fast if args[0] == "index" else [])
    result = _cli(args, monkeypatch, env)
    assert not check(" ".join(args), result.exit_code, result.stdout, result.stderr)
    assert expect.lower() in result.stderr.lower(), result.stderr


# -- torch.compile on CPU ----------------------------------------------------------------------------
@pytest.mark.slow  # inductor compiles C++ kernels: ~25 s on 2 cores, however small the model
def test_compile_works_on_cpu_and_matches(tmp_path: Path) -> None:
    """A tiny timm ViT compiled on this CPU (inductor needs a C++ compiler): the eager forward's vectors, for
    batch sizes other than the warm-up's (one dynamic-batch graph)."""
    compiled = load_embedder("timm:test_vit", settings=make_settings(tmp_path, input_size=32), precision="fp32",
                             compile=True)
    assert compiled.compiled
    eager = dataclasses.replace(compiled, compiled=False)  # __post_init__: a fresh, uncompiled forward
    for n in (3, 5):
        x = torch.randn(n, 3, 32, 32)
        np.testing.assert_allclose(compiled.embed(x), eager.embed(x), atol=1e-4)


def test_compile_failure_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where compiling fails (no C++ compiler, an op inductor cannot lower), loading says so and how to go on."""

    def broken(module: torch.nn.Module, **_: object):
        def run(*_args: object) -> None:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(CompileError, match=r"torch.compile failed for deit3_small on cpu .*without --compile"):
        load_embedder("deit3_small", settings=make_settings(tmp_path), compile=True)
