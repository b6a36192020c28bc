"""Bad input table: every kind of bad request gets its 4xx, a JSON body {detail, error}, no traceback."""

from __future__ import annotations

import base64
import io
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from embedsvc.store import Store, row_id
from tests.api.conftest import INDEX, MODELS, ApiEnv

GOSLING = "bird/erase_gosling.jpg"


def _jpeg(env: ApiEnv) -> bytes:
    return (env.dataset / GOSLING).read_bytes()


def _png(width: int, height: int, noise: bool = False) -> bytes:
    arr = (
        np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        if noise
        else np.zeros((height, width, 3), np.uint8)
    )
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _png_bomb(side: int = 30_000) -> bytes:
    """A ~1 KB PNG that claims 30000x30000 pixels (a decompression bomb): only the header matters."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # 1-bit greyscale
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    idat = zlib.compress(row * 64, 9)  # only the first rows; decoding is refused before it matters
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def upload(data: bytes, **params: Any) -> Callable[[TestClient], Any]:
    return lambda c: c.post("/search", params={"index": INDEX, **params}, files={"image": ("q.jpg", data)})


def post_json(body: Any, **params: Any) -> Callable[[TestClient], Any]:
    return lambda c: c.post("/search", params={"index": INDEX, **params}, json=body)


# (case id, request builder taking (client, env), status, error code, words the message must contain)
CASES: list[tuple[str, Callable[[TestClient, ApiEnv], Any], int, str, str]] = [
    (
        "not_an_image",
        lambda c, e: upload(b"hello, I am text, not a picture")(c),
        415,
        "not_an_image",
        "not a recognised",
    ),
    ("corrupt", lambda c, e: upload(_jpeg(e)[:200] + bytes(range(256)) * 20)(c), 400, "corrupt_image", "cannot"),
    ("truncated", lambda c, e: upload(_jpeg(e)[: len(_jpeg(e)) // 2])(c), 400, "truncated_image", "truncated"),
    ("zero_bytes", lambda c, e: upload(b"")(c), 400, "empty_image", "zero-byte"),
    ("too_many_bytes", lambda c, e: upload(_png(300, 300, noise=True))(c), 413, "too_large", "200,000"),
    ("body_over_limit", lambda c, e: upload(b"\0" * 600_000)(c), 413, "too_large", "exceeds"),
    ("too_many_pixels", lambda c, e: upload(_png(1100, 1000))(c), 413, "too_many_pixels", "1,100,000"),
    ("decompression_bomb", lambda c, e: upload(_png_bomb())(c), 413, "too_many_pixels", "decompression bomb"),
    ("base64_too_large", lambda c, e: post_json({"image_base64": "A" * 400_000})(c), 413, "too_large", "limit"),
    ("bad_base64", lambda c, e: post_json({"image_base64": "not*base64!"})(c), 400, "bad_base64", "base64"),
    (
        "base64_not_image",
        lambda c, e: post_json({"image_base64": base64.b64encode(b"text").decode()})(c),
        415,
        "not_an_image",
        "not a recognised",
    ),
    (
        "unknown_index",
        lambda c, e: c.post("/search", params={"index": "nope"}, files={"image": ("q", _jpeg(e))}),
        404,
        "unknown_index",
        "nope",
    ),
    ("unknown_model", lambda c, e: upload(_jpeg(e), models="resnet50")(c), 404, "unknown_model", "resnet50"),
    (
        "unknown_model_in_list",
        lambda c, e: upload(_jpeg(e), models="efficientnet_lite0,bogus")(c),
        404,
        "unknown_model",
        "bogus",
    ),
    ("unknown_label", lambda c, e: upload(_jpeg(e), label="zebra")(c), 404, "unknown_label", "zebra"),
    ("superscript_digit_label", lambda c, e: upload(_jpeg(e), label="²")(c), 404, "unknown_label", "²"),
    ("k_zero", lambda c, e: upload(_jpeg(e), k=0)(c), 422, "k_out_of_range", "between 1 and 20"),
    ("k_negative", lambda c, e: upload(_jpeg(e), k=-3)(c), 422, "k_out_of_range", "between 1 and 20"),
    ("k_above_max", lambda c, e: upload(_jpeg(e), k=21)(c), 422, "k_out_of_range", "between 1 and 20"),
    ("k_not_int", lambda c, e: upload(_jpeg(e), k="ten")(c), 422, "validation_error", "k"),
    ("unknown_id", lambda c, e: post_json({"id": 12345})(c), 404, "unknown_id", "12345"),
    ("negative_id", lambda c, e: post_json({"id": -1})(c), 404, "unknown_id", "-1"),
    ("huge_id", lambda c, e: post_json({"id": 2**70})(c), 404, "unknown_id", str(2**70)),
    (
        "id_and_image",
        lambda c, e: post_json({"id": 1, "image_base64": "AAAA"})(c),
        422,
        "validation_error",
        "exactly one",
    ),
    ("empty_json", lambda c, e: post_json({})(c), 422, "validation_error", "exactly one"),
    ("extra_json_field", lambda c, e: post_json({"id": 1, "path": "/etc/passwd"})(c), 422, "validation_error", "path"),
    (
        "invalid_json",
        lambda c, e: c.post(
            "/search", params={"index": INDEX}, content=b"{nope", headers={"content-type": "application/json"}
        ),
        422,
        "validation_error",
        "JSON",
    ),
    (
        "text_plain",
        lambda c, e: c.post("/search", params={"index": INDEX}, content=b"x", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
        "multipart",
    ),
    (
        "multipart_without_image",
        lambda c, e: c.post("/search", params={"index": INDEX}, data={"x": "1"}, files={"other": ("a", b"1")}),
        422,
        "validation_error",
        "'image'",
    ),
    (
        "image_as_text_field",
        lambda c, e: c.post("/search", params={"index": INDEX}, data={"image": "abc"}, files={"other": ("a", b"1")}),
        422,
        "validation_error",
        "must be a file",
    ),
    (
        "missing_index",
        lambda c, e: c.post("/search", files={"image": ("q", _jpeg(e))}),
        422,
        "validation_error",
        "index",
    ),
    ("unknown_route", lambda c, e: c.get("/nothing/here"), 404, "not_found", "Not Found"),
    ("wrong_method", lambda c, e: c.get("/search"), 405, "method_not_allowed", "Method Not Allowed"),
    ("get_unknown_index", lambda c, e: c.get("/indexes/nope"), 404, "unknown_index", "nope"),
    ("image_unknown_id", lambda c, e: c.get(f"/images/{INDEX}/1"), 404, "unknown_id", "no image with id 1"),
    ("image_non_int_id", lambda c, e: c.get(f"/images/{INDEX}/abc"), 422, "validation_error", "row_id"),
    (
        "thumbnail_bad_size",
        lambda c, e: c.get(f"/images/{INDEX}/{row_id(INDEX, GOSLING)}/thumbnail?size=33"),
        422,
        "bad_thumbnail_size",
        "32, 64",
    ),
    (
        "thumbnail_huge_size",
        lambda c, e: c.get(f"/images/{INDEX}/{row_id(INDEX, GOSLING)}/thumbnail?size=99999"),
        422,
        "validation_error",
        "size",
    ),
]


@pytest.mark.parametrize(("case", "make", "status", "code", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    client: TestClient, api_env: ApiEnv, case: str, make: Callable, status: int, code: str, words: str
) -> None:
    resp = make(client, api_env)
    assert resp.status_code == status, (case, resp.text)
    body = resp.json()
    assert body["error"] == code, body
    assert words in body["detail"], body
    assert set(body) <= {"detail", "error", "errors", "request_id"}
    assert "Traceback" not in resp.text and 'File "' not in resp.text


@pytest.fixture(scope="module")
def mismatched_index(client: TestClient, store: Store) -> str:
    """An index whose Lite0 vectors came from other weights than the loaded ones."""
    name = "other-weights"
    manifest = client.app.state.svc.embedders["efficientnet_lite0"].manifest()
    manifest["weights"] = {"source": "file:/elsewhere.pth", "sha256": "ff" * 32, "trained": True, "label": "other"}
    manifest["dataset_root"] = "/nonexistent"
    store.ensure_collection(name, "efficientnet_lite0", manifest)
    vec = np.random.default_rng(1).standard_normal(manifest["dim"]).astype(np.float32)
    rows = [
        {"id": row_id(name, f"x{i}.jpg"), "vector": vec + i, "rel_path": f"x{i}.jpg", "content_hash": "h"}
        for i in range(3)
    ]
    store.upsert(name, "efficientnet_lite0", rows)
    return name


def test_manifest_mismatch_is_409_but_by_id_still_works(
    client: TestClient, api_env: ApiEnv, mismatched_index: str
) -> None:
    resp = client.post("/search", params={"index": mismatched_index}, files={"image": ("q.jpg", _jpeg(api_env))})
    assert resp.status_code == 409, resp.text
    body = resp.json()
    assert body["error"] == "manifest_mismatch" and "weights" in body["detail"] and "other" in body["detail"]
    # "More like this" uses stored vectors: no loaded model is involved, so it still answers.
    resp = client.post(
        "/search", params={"index": mismatched_index, "k": 5}, json={"id": row_id(mismatched_index, "x0.jpg")}
    )
    assert resp.status_code == 200, resp.text
    assert [n["rel_path"] for n in resp.json()["models"][0]["neighbours"]] == ["x1.jpg", "x2.jpg"]
    info = client.get(f"/indexes/{mismatched_index}").json()
    assert info["models"][0]["compatible"] is False and info["models"][0]["loaded"] is True
    assert client.get(f"/indexes/{INDEX}").json()["models"][0]["compatible"] is True
    assert MODELS[0] == info["models"][0]["model_key"]


def test_missing_file_is_404_not_500(client: TestClient, mismatched_index: str) -> None:
    resp = client.get(f"/images/{mismatched_index}/{row_id(mismatched_index, 'x0.jpg')}")
    assert resp.status_code == 404 and resp.json()["error"] == "image_unavailable"
