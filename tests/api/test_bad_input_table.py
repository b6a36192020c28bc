"""The API's bad-input table: uploads, API parameters, jobs, bodies and methods, 200+ cases in one run.

Every case names the answers it may get (status and error code); on top of that each answer must be
JSON ``{detail, error, request_id}`` with the request id of its header, no 5xx, no traceback, and none
of the server's own paths (data directory, database file, dataset folder) or process ids. The test
prints the counts (cases per category, answers per status) so the table's reach is visible in the log.
It includes ``test_errors.CASES`` and adds the rest.
"""

from __future__ import annotations

import base64
import io
import os
import re
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from embedsvc.store import row_id
from tests.api.conftest import INDEX, ApiEnv
from tests.api.test_errors import CASES as BASE_CASES
from tests.api.test_errors import GOSLING, _jpeg

Make = Callable[[TestClient, ApiEnv], Any]
OK = ((200, None),)
BAD_IMAGE = ((400, "corrupt_image"), (400, "truncated_image"), (415, "not_an_image"))


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    make: Make
    expect: tuple[tuple[int, str | None], ...]
    words: str = ""
    echoes_client_path: bool = False  # the client sent a server path; the answer may quote it back


def _img(mode: str, fmt: str, size: tuple[int, int] = (40, 30), **save: Any) -> bytes:
    arr = np.random.default_rng(3).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (1-bit), with one tiny compressed row: only the header matters."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    idat = zlib.compress(b"\x00" * (1 + (width + 7) // 8), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def up(data: bytes | Callable[[ApiEnv], bytes], filename: str = "q.jpg", **params: Any) -> Make:
    def make(c: TestClient, e: ApiEnv) -> Any:
        body = data(e) if callable(data) else data
        return c.post("/search", params={"index": INDEX, **params}, files={"image": (filename, body)})

    return make


def js(body: Any, **params: Any) -> Make:
    def make(c: TestClient, e: ApiEnv) -> Any:
        value = body(e) if callable(body) else body
        return c.post("/search", params={"index": INDEX, **params}, json=value)

    return make


def raw(content: bytes, content_type: str | None, path: str = "/search", **params: Any) -> Make:
    headers = {"content-type": content_type} if content_type is not None else {}
    return lambda c, e: c.post(path, params={"index": INDEX, **params}, content=content, headers=headers)


def get(path: str | Callable[[ApiEnv], str], **params: Any) -> Make:
    return lambda c, e: c.get(path(e) if callable(path) else path, params=params or None)


def job(body: Any, index: str = "table-job") -> Make:
    def make(c: TestClient, e: ApiEnv) -> Any:
        value = body(e) if callable(body) else body
        return c.post(f"/indexes/{index}/jobs", json=value)

    return make


def b64(e: ApiEnv) -> str:
    return base64.b64encode(_jpeg(e)).decode()


GID = row_id(INDEX, GOSLING)
CASES: list[Case] = []


def add(category: str, name: str, make: Make, expect: Any, words: str = "", echoes: bool = False) -> None:
    if isinstance(expect, tuple) and expect and isinstance(expect[0], int):
        expect = (expect,)
    CASES.append(Case(category, name, make, tuple(expect), words, echoes))


# -- the hand-written cases of test_errors ------------------------------------------------------------
for name, make, status, code, words in BASE_CASES:
    add("errors_table", name, make, (status, code), words)

# -- uploads -----------------------------------------------------------------------------------------
for cut in (1, 2, 3, 4, 10, 100, 300, 1000, 3000, 10_000):
    add("uploads", f"jpeg_cut_at_{cut}", up(lambda e, cut=cut: _jpeg(e)[:cut]), BAD_IMAGE)
for size in (1, 2, 7, 64, 1000, 50_000):
    noise = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    add("uploads", f"noise_{size}_bytes", up(noise), (415, "not_an_image"), "not a recognised")
MAGIC = {
    "png": b"\x89PNG\r\n\x1a\n",
    "gif": b"GIF89a",
    "bmp": b"BM",
    "tiff_le": b"II*\x00",
    "tiff_be": b"MM\x00*",
    "jpeg": b"\xff\xd8\xff\xe0",
    "webp": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    "ico": b"\x00\x00\x01\x00",
    "psd": b"8BPS",
}
for fmt, magic in MAGIC.items():
    add("uploads", f"{fmt}_magic_then_garbage", up(magic + bytes(range(256)) * 4), BAD_IMAGE)
    add("uploads", f"{fmt}_magic_only", up(magic), BAD_IMAGE)
TEXTS = {
    "html": b"<!doctype html><html><body>hi</body></html>",
    "json": b'{"image": "no"}',
    "pdf": b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n",
    "zip": b"PK\x03\x04" + b"\0" * 40,
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    "gzip": zlib.compress(b"x" * 100),
    "elf": b"\x7fELF" + b"\0" * 60,
    "utf16": "not an image".encode("utf-16"),
}
for kind, data in TEXTS.items():
    add("uploads", f"{kind}_file", up(data), (415, "not_an_image"), "not a recognised")
for w, h in ((2000, 2000), (65535, 65535), (1, 2_000_000), (1001, 1000)):
    add("uploads", f"claims_{w}x{h}", up(_png_header(w, h)), (413, "too_many_pixels"), "pixels")
for mode, fmt, extra in (
    ("RGB", "JPEG", {}),
    ("CMYK", "JPEG", {}),
    ("L", "PNG", {}),
    ("LA", "PNG", {}),
    ("RGBA", "PNG", {}),
    ("P", "GIF", {}),
    ("1", "BMP", {}),
    ("RGB", "TIFF", {}),
    ("RGB", "WEBP", {}),
    ("I;16", "PNG", {}),
):
    add("uploads", f"valid_{mode}_{fmt}".replace(";", ""), up(_img(mode, fmt, **extra)), OK)
add("uploads", "valid_1x1", up(_img("RGB", "PNG", (1, 1))), OK)
add("uploads", "valid_65535x1_strip", up(_png_header(65535, 1)), ((200, None), (422, "extreme_aspect_ratio")))
add("uploads", "filename_path_traversal", up(_jpeg, filename="../../etc/passwd"), OK)
add("uploads", "filename_10k_chars", up(_jpeg, filename="n" * 10_000), (400, "bad_multipart"))  # header too long
add("uploads", "filename_unicode", up(_jpeg, filename="фото 🐦.jpg"), OK)
add("uploads", "filename_empty", up(_jpeg, filename=""), (422, "validation_error"), "must be a file")  # a text field
add(
    "uploads",
    "two_files",
    lambda c, e: c.post(
        "/search", params={"index": INDEX}, files=[("image", ("a.jpg", _jpeg(e))), ("image", ("b.jpg", _jpeg(e)))]
    ),
    (400, "bad_multipart"),
    "malformed multipart",
)
add(
    "uploads",
    "seventeen_fields",
    lambda c, e: c.post(
        "/search",
        params={"index": INDEX},
        data={f"f{i}": "x" for i in range(17)},
        files={"image": ("q.jpg", _jpeg(e))},
    ),
    (400, "bad_multipart"),
    "malformed multipart",
)
add("uploads", "multipart_without_boundary", raw(b"--x\r\n\r\n", "multipart/form-data"), (400, "bad_multipart"))
add(
    "uploads",
    "multipart_garbage_body",
    raw(b"this is not multipart at all", "multipart/form-data; boundary=zzz"),
    ((422, "validation_error"), (400, "bad_multipart")),
)
add(
    "uploads",
    "multipart_unterminated",
    lambda c, e: c.post(
        "/search",
        params={"index": INDEX},
        content=b'--zz\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n\r\n' + _jpeg(e)[:500],
        headers={"content-type": "multipart/form-data; boundary=zz"},
    ),
    ((400, "bad_multipart"), *BAD_IMAGE, (422, "validation_error")),
)
add("uploads", "raw_jpeg_body", lambda c, e: raw(_jpeg(e), "image/jpeg")(c, e), (415, "unsupported_media_type"))
add(
    "uploads",
    "form_urlencoded",
    raw(b"image=abc", "application/x-www-form-urlencoded"),
    (415, "unsupported_media_type"),
)
add("uploads", "content_type_garbage", raw(b"x", "\x01\x02"), (415, "unsupported_media_type"))

# -- base64 / JSON queries ---------------------------------------------------------------------------------
add("base64", "valid", js(lambda e: {"image_base64": b64(e)}), OK)
add("base64", "data_url", js(lambda e: {"image_base64": "data:image/jpeg;base64," + b64(e)}), OK)
add("base64", "urlsafe", js(lambda e: {"image_base64": base64.urlsafe_b64encode(_jpeg(e)).decode()}), OK)
add(
    "base64",
    "with_newlines",
    js(lambda e: {"image_base64": "\n".join(b64(e)[i : i + 76] for i in range(0, 9000, 76))}),
    BAD_IMAGE,
)
add(
    "base64",
    "wrapped_full",
    js(lambda e: {"image_base64": "\n".join(b64(e)[i : i + 76] for i in range(0, len(b64(e)), 76))}),
    OK,
)
add("base64", "empty_string", js({"image_base64": ""}), (400, "empty_image"))
add("base64", "whitespace_only", js({"image_base64": "   \n\t "}), (400, "empty_image"))
add("base64", "bad_padding", js({"image_base64": "AAA"}), (400, "bad_base64"), "base64")
add("base64", "non_ascii", js({"image_base64": "ÄÖÜ"}), (400, "bad_base64"))
add("base64", "nul_chars", js({"image_base64": "AA\u0000A"}), (400, "bad_base64"))
add("base64", "mixed_alphabets", js({"image_base64": "ab+/cd-_"}), ((400, "bad_base64"), *BAD_IMAGE))
add("base64", "data_url_only", js({"image_base64": "data:image/png;base64,"}), (400, "empty_image"))
add(
    "base64",
    "noise",
    js({"image_base64": base64.b64encode(os.urandom(0) + bytes(range(256))).decode()}),
    (415, "not_an_image"),
)
add("base64", "number", js({"image_base64": 123}), (422, "validation_error"))
add("base64", "list", js({"image_base64": ["a"]}), (422, "validation_error"))
add("base64", "null_and_no_id", js({"image_base64": None}), (422, "validation_error"), "exactly one")
add("json", "id_string", js({"id": "abc"}), (422, "validation_error"))
add("json", "id_float", js({"id": 1.5}), (422, "validation_error"))
add("json", "id_list", js({"id": [1]}), (422, "validation_error"))
add("json", "id_zero", js({"id": 0}), (404, "unknown_id"))
add("json", "id_numeric_string", js({"id": str(GID)}), ((200, None), (422, "validation_error")))
add("json", "id_valid", js({"id": GID}), OK)
add("json", "id_valid_k1", js({"id": GID}, k=1), OK)
add("json", "body_array", js([1, 2]), (422, "validation_error"))
add("json", "body_string", js("x"), (422, "validation_error"))
add("json", "body_null", raw(b"null", "application/json"), (422, "validation_error"))
add("json", "body_number", raw(b"42", "application/json"), (422, "validation_error"))
add("json", "body_empty", raw(b"", "application/json"), (422, "validation_error"), "exactly one")
add("json", "body_no_content_type", raw(b"", None), (422, "validation_error"))
add("json", "body_truncated", raw(b'{"id": 1', "application/json"), (422, "validation_error"))
add(
    "json",
    "body_deeply_nested",
    raw(b'{"id": ' + b"[" * 5000 + b"]" * 5000 + b"}", "application/json"),
    (422, "validation_error"),
)
add(
    "json", "body_latin1", raw('{"image_base64": "é"}'.encode("latin-1"), "application/json"), (422, "validation_error")
)
add(
    "json",
    "body_bom",
    raw(b'\xef\xbb\xbf{"id": 1}', "application/json"),
    ((422, "validation_error"), (404, "unknown_id")),
)
add("json", "content_type_charset", raw(b'{"id": 1}', "application/json; charset=utf-8"), (404, "unknown_id"))
add("json", "content_type_upper", raw(b'{"id": 1}', "APPLICATION/JSON"), (404, "unknown_id"))
add("json", "extra_field_unicode", js({"id": 1, "ключ": 1}), (422, "validation_error"))

# -- /search parameters -----------------------------------------------------------------------------------
K_OUT = (422, "k_out_of_range")
K_BAD = (422, "validation_error")
for value, expect in (
    ("0", K_OUT),
    ("-1", K_OUT),
    ("-100", K_OUT),
    ("21", K_OUT),
    ("1000", K_OUT),
    (str(2**70), K_OUT),
    (str(-(2**70)), K_OUT),
    ("1.5", K_BAD),
    ("", K_BAD),
    (" ", K_BAD),
    ("1e3", K_BAD),
    ("0x10", K_BAD),
    ("nan", K_BAD),
    ("1", OK[0]),
    ("20", OK[0]),
    (" 5 ", (OK[0], K_BAD)),
    ("+5", (OK[0], K_BAD)),
    ("٥", (OK[0], K_BAD)),
):
    add("search_params", f"k={value[:24]!r}", js({"id": GID}, k=value), expect)
for value, expect in (
    ("", OK),
    (",", OK),
    (",,,", OK),
    ("bogus", (404, "unknown_model")),
    ("x" * 1000, (404, "unknown_model")),
    ("efficientnet_lite0,efficientnet_lite0", OK),
    ("EFFICIENTNET_LITE0", ((200, None), (404, "unknown_model"))),
    ("efficientnet_lite0, deit3_small", OK),
    ("ü", (404, "unknown_model")),
    ("\x00", (404, "unknown_model")),
    ("resnet50,", (404, "unknown_model")),
):
    add("search_params", f"models={value[:40]!r}", js({"id": GID}, models=value), expect)
for value, expect in (
    ("bird", OK),
    ("0", OK),
    ("2", OK),
    ("", OK),
    ("-1", (404, "unknown_label")),
    ("3", OK),  # an id without rows: no neighbours, not an error (as in the listing)
    ("99999999999999999999", (404, "unknown_label")),
    ("x" * 513, (422, "validation_error")),
    ("x" * 512, (404, "unknown_label")),
    ("\x00", (404, "unknown_label")),
    ("bird ", OK),  # surrounding spaces are ignored
    ("BIRD", ((200, None), (404, "unknown_label"))),
    ("１", (404, "unknown_label")),
):
    add("search_params", f"label={value[:12]!r}({len(value)})", js({"id": GID}, label=value), expect)
for value, expect in (
    ("", (422, "validation_error")),
    ("x" * 513, (422, "validation_error")),
    ("..", (404, "unknown_index")),
    ("a/b", (404, "unknown_index")),
    ("nope", (404, "unknown_index")),
    ("фото", (404, "unknown_index")),
    ("\x00", (404, "unknown_index")),
    ("photos ", (404, "unknown_index")),
):
    add(
        "search_params",
        f"index={value[:12]!r}",
        lambda c, e, v=value: c.post("/search", params={"index": v}, json={"id": 1}),
        expect,
    )

# -- listing, images, evaluation parameters -----------------------------------------------------------------
V = (422, "validation_error")
for params, expect in (
    ({"offset": "-1"}, V),
    ({"offset": "x"}, V),
    ({"offset": str(2**64)}, V),
    ({"offset": str(2**63 - 1)}, OK),
    ({"limit": "0"}, V),
    ({"limit": "501"}, V),
    ({"limit": "x"}, V),
    ({"limit": "500"}, OK),
    ({"label": "zebra"}, (404, "unknown_label")),
    ({"label": "x" * 513}, V),
):
    add("listing_params", f"images_{params}"[:40], get(f"/indexes/{INDEX}/images", **params), expect)
for params, expect in (
    ({"count": "0"}, V),
    ({"count": "101"}, V),
    ({"count": "-5"}, V),
    ({"seed": "-1"}, V),
    ({"seed": str(2**64)}, V),
    ({"seed": "x"}, V),
    ({"count": "100", "seed": "3"}, OK),
    ({"label": "-1"}, (404, "unknown_label")),
):
    add("listing_params", f"random_{params}"[:40], get(f"/indexes/{INDEX}/images/random", **params), expect)
add("listing_params", "images_unknown_index", get("/indexes/nope/images"), (404, "unknown_index"))
add("listing_params", "random_unknown_index", get("/indexes/nope/images/random"), (404, "unknown_index"))
for rid, expect in (
    ("-1", V),
    ("abc", V),
    ("1.5", V),
    (str(2**63), V),
    ("0", (404, "unknown_id")),
    (str(2**63 - 1), (404, "unknown_id")),
    (str(GID), OK),
):
    add("image_params", f"image_id={rid[:24]}", get(f"/images/{INDEX}/{rid}"), expect)
for size, expect in (
    ("0", V),
    ("-1", V),
    ("4097", V),
    ("x", V),
    ("33", (422, "bad_thumbnail_size")),
    ("128", (422, "bad_thumbnail_size")),
    ("32", OK),
    ("64", OK),
):
    add("image_params", f"thumb_size={size}", get(f"/images/{INDEX}/{GID}/thumbnail", size=size), expect)
add("image_params", "image_unknown_index", get("/images/nope/1"), (404, "unknown_index"))
add("image_params", "thumb_unknown_id", get(f"/images/{INDEX}/7/thumbnail"), (404, "unknown_id"))
add("image_params", "image_no_id", get(f"/images/{INDEX}"), (404, "not_found"))
for params, expect in (
    ({"sample": "0"}, V),
    ({"sample": "-1"}, V),
    ({"sample": "x"}, V),
    ({"seed": "-1"}, V),
    ({"seed": "x"}, V),
):
    add("eval_params", f"eval_{params}", get(f"/indexes/{INDEX}/eval", **params), expect)
add("eval_params", "eval_unknown_index", get("/indexes/nope/eval"), (404, "unknown_index"))

# -- jobs ---------------------------------------------------------------------------------------------------
BAD_ROOT = (400, "bad_root")
NOT_ALLOWED = (403, "root_not_allowed")
for name, body, expect, words in (
    ("component_256", lambda e: {"root": f"{e.allowed}/{'c' * 256}"}, BAD_ROOT, "File name too long"),
    ("component_1000", lambda e: {"root": f"{e.allowed}/{'c' * 1000}"}, BAD_ROOT, "File name too long"),
    ("total_4000", lambda e: {"root": f"{e.allowed}/" + "/".join(["d" * 200] * 19)}, BAD_ROOT, ""),
    ("total_over_4096", lambda e: {"root": "/" + "e" * 4100}, V, "root"),
    ("nul", lambda e: {"root": f"{e.allowed}/a\u0000b"}, BAD_ROOT, "NUL"),
    ("relative", {"root": "photos"}, BAD_ROOT, "absolute"),
    ("dot", {"root": "."}, BAD_ROOT, "absolute"),
    ("tilde", {"root": "~"}, BAD_ROOT, "absolute"),
    ("empty", {"root": ""}, V, "root"),
    ("slash", {"root": "/"}, NOT_ALLOWED, "not under an allowed root"),
    ("double_slash", {"root": "//"}, NOT_ALLOWED, ""),
    ("proc", {"root": "/proc/self"}, NOT_ALLOWED, ""),
    ("dev", {"root": "/dev"}, NOT_ALLOWED, ""),
    ("dotdot_escape", lambda e: {"root": f"{e.allowed}/../outside"}, NOT_ALLOWED, ""),
    ("prefix_sibling", lambda e: {"root": f"{e.allowed}-sibling"}, NOT_ALLOWED, ""),
    ("missing", lambda e: {"root": f"{e.allowed}/missing"}, BAD_ROOT, "not a folder"),
    ("a_file", lambda e: {"root": f"{e.dataset}/{GOSLING}"}, NOT_ALLOWED, ""),
    ("root_int", {"root": 5}, V, "root"),
    ("root_null", {"root": None}, V, "root"),
    ("root_list", {"root": ["/"]}, V, "root"),
    ("no_root", {}, V, "root"),
    ("models_string", lambda e: {"root": str(e.allowed), "models": "efficientnet_lite0"}, V, "models"),
    ("models_ints", lambda e: {"root": str(e.allowed), "models": [1]}, V, "models"),
    ("models_unknown", lambda e: {"root": str(e.allowed), "models": ["bogus"]}, (404, "unknown_model"), "bogus"),
    ("labels_not_bool", lambda e: {"root": str(e.allowed), "labels_from_dirs": "maybe"}, V, "labels_from_dirs"),
    ("prune_not_bool", lambda e: {"root": str(e.allowed), "prune": [1]}, V, "prune"),
    ("extra_field", lambda e: {"root": str(e.allowed), "shell": "rm -rf /"}, V, "shell"),
):
    add("jobs", f"root_{name}", job(body), expect, words, echoes=True)
add("jobs", "index_name_dotdot", job({"root": "/"}, index=".."), (404, "not_found"))  # the URL itself goes up
add(
    "jobs",
    "index_name_dotdot_encoded",
    job({"root": "/"}, index="%2E%2E"),
    ((422, "bad_index_name"), (404, "not_found")),
)
for name, expect in (
    ("-x", (422, "bad_index_name")),
    ("a b", (422, "bad_index_name")),
    ("a" * 65, (422, "bad_index_name")),
    ("фото", (422, "bad_index_name")),
    ("a.b", (422, "bad_index_name")),
    ("_x", (422, "bad_index_name")),
):
    add("jobs", f"index_name_{name[:10]!r}", job(lambda e: {"root": str(e.allowed)}, index=name), expect, "index name")
add(
    "jobs",
    "root_surrogates",
    lambda c, e: raw(f'{{"root": "{e.allowed}/\\udcff\\udcfe"}}'.encode(), "application/json", path="/indexes/x/jobs")(
        c, e
    ),
    V,  # JSON strings must be valid Unicode: lone surrogates are refused by the body's validation
    echoes=True,
)
add("jobs", "index_name_513", job({"root": "/"}, index="a" * 513), V)
add("jobs", "body_not_json", raw(b"{nope", "application/json", path="/indexes/x/jobs"), V)
add("jobs", "body_empty", raw(b"", "application/json", path="/indexes/x/jobs"), V)
add("jobs", "body_array", raw(b"[]", "application/json", path="/indexes/x/jobs"), V)
add(
    "jobs",
    "body_text_plain",
    raw(b'{"root": "/"}', "text/plain", path="/indexes/x/jobs"),
    ((422, "validation_error"), (415, "unsupported_media_type")),
)
add(
    "jobs",
    "body_3mb_json",
    lambda c, e: c.post("/indexes/x/jobs", json={"root": "/" + "a" * 3_000_000}),
    (413, "too_large"),
    "exceeds the limit",
)
add("jobs", "job_id_too_long", get("/indexes/x/jobs/" + "f" * 65), V)
add("jobs", "job_id_unknown", get("/indexes/x/jobs/0123456789abcdef"), (404, "unknown_job"))
add("jobs", "job_id_other_index", get("/indexes/other/jobs/0123456789abcdef"), (404, "unknown_job"))

# -- methods and routes ----------------------------------------------------------------------------------------
for method, path in (
    ("PUT", "/search"),
    ("DELETE", "/search"),
    ("PATCH", "/indexes"),
    ("DELETE", f"/indexes/{INDEX}"),
    ("PUT", "/indexes/x/jobs"),
    ("POST", "/health"),
    ("POST", "/models"),
    ("POST", f"/images/{INDEX}/1"),
):
    add("routes", f"{method}_{path}"[:40], lambda c, e, m=method, p=path: c.request(m, p), (405, "method_not_allowed"))
for path in ("/nothing", "/search/extra", "/indexes/x/y/z", "/images", "/%00", "/" + "x" * 5000):
    add("routes", f"GET_{path[:20]}", get(path), (404, "not_found"))


def _check(case: Case, resp: Any, env: ApiEnv) -> list[str]:
    problems = []
    got = (resp.status_code, None if resp.status_code < 300 else _code(resp))
    if got not in case.expect:
        problems.append(f"got {got}, expected one of {case.expect}: {resp.text[:200]}")
    if resp.status_code >= 500:
        problems.append(f"server error {resp.status_code}")
    text = resp.text if resp.status_code >= 300 else ""
    if "Traceback" in text or 'File "' in text:
        problems.append("traceback in the body")
    secrets = [str(env.settings.data_dir), "milvus.db", f"pid {os.getpid()}"]
    if not case.echoes_client_path:
        secrets += [str(env.dataset), str(env.allowed), str(env.outside)]
    # A whole path, not a prefix of another (".../data" is a prefix of the client's ".../dataset").
    problems += [
        f"server internals in the body: {s!r}" for s in secrets if re.search(re.escape(s) + r"(?![\w-])", text)
    ]
    if resp.status_code >= 300:
        body = resp.json()
        if not set(body) <= {"detail", "error", "errors", "request_id"} or not body.get("detail"):
            problems.append(f"not an error body: {body}")
        if body.get("request_id") != resp.headers.get("x-request-id"):
            problems.append("request_id of the body differs from the X-Request-ID header")
        if case.words and case.words not in body.get("detail", ""):
            problems.append(f"{case.words!r} not in {body.get('detail')!r}")
    return problems


def _code(resp: Any) -> str | None:
    try:
        return resp.json().get("error")
    except ValueError:
        return None


def test_bad_input_table(client: TestClient, api_env: ApiEnv) -> None:
    loop = api_env.allowed / "table-loop"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    failures: dict[str, list[str]] = {}
    statuses: Counter[int] = Counter()
    for case in CASES:
        resp = case.make(client, api_env)
        statuses[resp.status_code] += 1
        problems = _check(case, resp, api_env)
        if problems:
            failures[f"{case.category}/{case.name}"] = problems
    per_category = Counter(case.category for case in CASES)
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    print(f"\nAPI bad-input table: {len(CASES)} cases, {len(failures)} failed, {server_errors} server errors")  # noqa: T201
    print("  per category: " + ", ".join(f"{k} {v}" for k, v in sorted(per_category.items())))  # noqa: T201
    print("  per status:   " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))  # noqa: T201
    assert not failures, "\n".join(f"{name}: {'; '.join(p)}" for name, p in failures.items())
    assert len(CASES) >= 200 and server_errors == 0
    assert len({(c.category, c.name) for c in CASES}) == len(CASES)  # every case is its own


def test_symlink_loop_root_is_a_client_error(client: TestClient, api_env: ApiEnv) -> None:
    """Part of the jobs rows above, kept apart because it needs a link on disk."""
    loop = api_env.allowed / "table-loop"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    for root in (loop, loop / "inner"):
        resp = client.post("/indexes/x/jobs", json={"root": str(root)})
        assert resp.status_code == 400 and resp.json()["error"] == "bad_root", resp.text
