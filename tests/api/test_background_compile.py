"""``compile=auto``: the service starts eager, compiles its CPU models in the background and swaps each in when
ready; a model that cannot compile stays eager and the service keeps answering. Batch commands never compile
under auto; ``on`` compiles at load."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

from embedsvc.embedder import compile_later, load_embedder
from embedsvc.main import create_app
from tests.support import make_settings

TINY = "timm:test_vit"  # the smallest timm model: compiling it still takes ~25 s on 2 cores (C++ kernels)


def _app_settings(tmp_path: Path, **overrides: object):
    values = {"models": [TINY], "input_size": 32, "precision": "fp32", "compile": "auto",
              "milvus_uri": str(tmp_path / "milvus.db")}
    return make_settings(tmp_path, **(values | overrides))


@pytest.mark.slow  # inductor compiles C++ kernels: ~25-50 s on 2 cores
def test_service_swaps_in_the_compiled_forward(tmp_path: Path) -> None:
    with TestClient(create_app(_app_settings(tmp_path))) as client:
        state = client.app.state.svc
        assert client.get("/models").status_code == 200  # answering while the compile runs
        assert state.compiler.join(timeout=400), "background compile did not finish"
        assert not state.compiler.failed
        info = client.get("/models").json()["data"][0]
        assert info["key"] == "test_vit" and info["compiled"] is True
        compiled = state.embedders["test_vit"]
        eager = dataclasses.replace(compiled, compiled=False)  # __post_init__: a fresh, uncompiled forward
        for n in (1, 4):  # a query's batch and any other
            x = torch.randn(n, 3, 32, 32)
            np.testing.assert_allclose(compiled.embed(x), eager.embed(x), atol=1e-4)


def test_model_that_cannot_compile_stays_eager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(module: torch.nn.Module, **_: object):
        def run(*_args: object) -> None:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.WARNING, logger="embedsvc.embedder"), TestClient(
        create_app(_app_settings(tmp_path))
    ) as client:
        state = client.app.state.svc
        assert state.compiler.join(timeout=60)
        assert "No working C++ compiler" in state.compiler.failed["test_vit"]
        assert client.get("/models").json()["data"][0]["compiled"] is False
        vectors = state.embedders["test_vit"].embed(torch.randn(2, 3, 32, 32))  # still embeds, eager
        assert vectors.shape == (2, state.embedders["test_vit"].dim)
    assert any("test_vit stays eager" in r.getMessage() for r in caplog.records)


def test_auto_compiles_nothing_at_load_and_on_compiles_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr("embedsvc.embedder.compile_forward", lambda e: calls.append(e.key))
    auto = load_embedder(TINY, settings=_app_settings(tmp_path))
    assert not auto.compiled and calls == []  # index and eval load this way: they never compile under auto
    assert compile_later(_app_settings(tmp_path), {"test_vit": auto}) == [auto]
    assert compile_later(_app_settings(tmp_path, compile="off"), {"test_vit": auto}) == []
    load_embedder(TINY, settings=_app_settings(tmp_path, compile="on"))
    assert calls == ["test_vit"]


@pytest.mark.parametrize(("given", "mode"), [("true", "on"), (" FALSE ", "off"), ("1", "on"), (False, "off"),
                                             ("Auto", "auto")])
def test_compile_setting_reads_booleans_as_on_off(tmp_path: Path, given: object, mode: str) -> None:
    assert make_settings(tmp_path, compile=given).compile == mode


def test_unknown_compile_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="compile"):
        make_settings(tmp_path, compile="sometimes")
