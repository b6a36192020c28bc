"""Folder contents a real-world folder holds, indexed through real Milvus Lite: the bad-input table and its counts.

Every entry is a case: names that are not UTF-8 (indexed, ids from the raw bytes, served back by
``/images``), FIFOs and sockets (never opened), dangling and looping symlinks, links out of the root
(never read), a sub-folder that cannot be listed, and the index name itself. Each case is either a row
or a listed failure with its reason: never both, never silently gone.
"""

from __future__ import annotations

import csv
import hashlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from embedsvc.indexer.folder import folder_source
from embedsvc.indexer.listing import check_entry, read_regular_file
from embedsvc.indexer.reader import content_hash
from embedsvc.indexer.runner import StrictModeError, failures_report_path, run_index
from embedsvc.paths import fs_rel_path, resolve_rel_path, stored_rel_path
from embedsvc.store import Store, row_id
from embedsvc.store.naming import BadIndexNameError
from tests.indexer.test_cli import MODEL_FLAGS, invoke
from tests.support import make_settings, png_bytes

INDEXED = "indexed"
ABSENT = "absent"  # neither a row nor a failure, by design (hidden files, non-images, links into the root)


@dataclass(frozen=True)
class Case:
    name: str  # what the case is about
    stored: str  # the rel_path as rows and reports show it
    expect: str  # INDEXED, ABSENT or the failure reason
    make: Callable[[Path, Path], None]  # (root, outside) -> None


def _write(root: Path, raw_rel: bytes, seed: int) -> None:
    path = os.path.join(os.fsencode(root), raw_rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(png_bytes(seed))


def _link(target: str | Path, rel: str) -> Callable[[Path, Path], None]:
    def make(root: Path, outside: Path) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(str(target).replace("{outside}", str(outside)), path)

    return make


def _socket(root: Path, outside: Path) -> None:
    cwd = os.getcwd()
    os.chdir(root)  # AF_UNIX paths are limited to 108 bytes: bind relative to the folder
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind("sock.png")
        sock.close()
    finally:
        os.chdir(cwd)


DEEP_NAME = "d" * 200
DEEP_LEVELS = 22  # 22 * 201 bytes: past PATH_MAX (4096), so listing the bottom folders fails even for root


def _deep(root: Path, outside: Path) -> None:
    """A real folder the walker gets an OSError (ENAMETOOLONG) on: it cannot be listed by any user, root too."""
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(DEEP_LEVELS):
            os.mkdir(DEEP_NAME, dir_fd=fd)
            child = os.open(DEEP_NAME, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        photo = os.open("lost.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(photo, png_bytes(99))
        os.close(photo)
    finally:
        os.close(fd)


def _deep_failure_rel(root: Path) -> str:
    """The first folder whose absolute path is too long to list: where the walker's OSError names it."""
    parts = []
    for _ in range(DEEP_LEVELS):
        parts.append(DEEP_NAME)
        if len(os.fsencode(root / "deep" / "/".join(parts))) >= 4096:
            return "deep/" + "/".join(parts)
    raise AssertionError("tree not deep enough")


LONG_UTF8 = (b"u" * 250 + b"/") * 12 + b"x.png"  # 3017 bytes: within the store's 4096
LONG_BAD = (b"\xe9" * 250 + b"/") * 5 + b"x.png"  # 1260 bytes on disk, 5010 once every byte is written \xNN

CASES = [
    Case("plain file", "plain.png", INDEXED, lambda r, o: _write(r, b"plain.png", 1)),
    Case("UTF-8 non-ASCII name", "été-ß.png", INDEXED, lambda r, o: _write(r, "été-ß.png".encode(), 2)),
    Case("Latin-1 file name", "caf\\xe9.png", INDEXED, lambda r, o: _write(r, b"caf\xe9.png", 3)),
    Case("Latin-1 folder name", "Fotos-\\xe9t\\xe9/inner.png", INDEXED,
         lambda r, o: _write(r, b"Fotos-\xe9t\xe9/inner.png", 4)),
    Case("CP932 name with a backslash byte", "\\x83\\x5cx.png", INDEXED, lambda r, o: _write(r, b"\x83\\x.png", 5)),
    Case("invalid UTF-8 sequence", "bad-\\xc3(.png", INDEXED, lambda r, o: _write(r, b"bad-\xc3\x28.png", 6)),
    Case("UTF-8 name with a literal backslash", "back\\slash.png", INDEXED,
         lambda r, o: _write(r, b"back\\slash.png", 7)),
    Case("UTF-8 name that reads like an escape", "amb\\xe9.png", INDEXED, lambda r, o: _write(r, b"amb\\xe9.png", 8)),
    Case("Latin-1 name whose readable form is taken", "amb\\xe9.png", "ambiguous_name",
         lambda r, o: _write(r, b"amb\xe9.png", 9)),
    Case("FIFO with an image name", "pipe.png", "special_file", lambda r, o: os.mkfifo(r / "pipe.png")),
    Case("FIFO without extension", "pipe", "special_file", lambda r, o: os.mkfifo(r / "pipe")),
    Case("symlink to a FIFO in the root", "pipe-link.png", "special_file", _link("pipe", "pipe-link.png")),
    Case("unix socket", "sock.png", "special_file", _socket),
    Case("dangling symlink", "dangling.png", "dangling_symlink", _link("missing.png", "dangling.png")),
    Case("symlink to itself", "loop.png", "symlink_loop", _link("loop.png", "loop.png")),
    Case("symlink loop of two (a)", "ping.png", "symlink_loop", _link("pong.png", "ping.png")),
    Case("symlink loop of two (b)", "pong.png", "symlink_loop", _link("ping.png", "pong.png")),
    Case("symlink to a photo outside", "outside.png", "outside_root", _link("{outside}/photo.png", "outside.png")),
    Case("symlink to /etc/passwd", "passwd.jpg", "outside_root", _link("/etc/passwd", "passwd.jpg")),
    Case("symlink to a device", "null.png", "outside_root", _link("/dev/null", "null.png")),
    Case("relative symlink climbing out", "sub/up.png", "outside_root", _link("../../outside/photo.png", "sub/up.png")),
    Case("dangling symlink outside", "gone.png", "outside_root", _link("{outside}/missing.png", "gone.png")),
    Case("symlink to a folder outside", "outdir", "outside_root", _link("{outside}", "outdir")),
    Case("symlink to a photo inside", "inside-link.png", INDEXED, _link("plain.png", "inside-link.png")),
    Case("symlink into a sub-folder", "sub/down.png", INDEXED, _link("../real/x.png", "sub/down.png")),
    Case("real sub-folder", "real/x.png", INDEXED, lambda r, o: _write(r, b"real/x.png", 10)),
    Case("symlink to a folder inside", "linked", ABSENT, _link("real", "linked")),
    Case("symlink to the root itself", "self", ABSENT, _link(".", "self")),
    Case("hidden file", ".hidden.png", ABSENT, lambda r, o: _write(r, b".hidden.png", 11)),
    Case("text file", "notes.txt", ABSENT, lambda r, o: (r / "notes.txt").write_text("not an image")),
    Case("folder nobody can list", "<deep>", "unreadable_folder", _deep),
    Case("NFC é", "\u00e9.png", INDEXED, lambda r, o: _write(r, "\u00e9.png".encode(), 12)),
    Case("NFD é beside it (another file)", "e\u0301.png", INDEXED, lambda r, o: _write(r, "e\u0301.png".encode(), 13)),
    Case("newline in the name", "new\nline.png", INDEXED, lambda r, o: _write(r, b"new\nline.png", 14)),
    Case("control character", "\x01ctrl.png", INDEXED, lambda r, o: _write(r, b"\x01ctrl.png", 15)),
    Case("emoji", "\U0001f4f7.png", INDEXED, lambda r, o: _write(r, "\U0001f4f7.png".encode(), 16)),
    Case("percent-encoded dots", "%2e%2e.png", INDEXED, lambda r, o: _write(r, b"%2e%2e.png", 17)),
    Case("leading dash, spaces", "-a b .png", INDEXED, lambda r, o: _write(r, b"-a b .png", 18)),
    Case("upper-case extension", "UPPER.PNG", INDEXED, lambda r, o: _write(r, b"UPPER.PNG", 19)),
    Case("image without extension", "no_extension", INDEXED, lambda r, o: _write(r, b"no_extension", 20)),
    Case("255-byte UTF-8 name", "\u00e9" * 125 + ".png", INDEXED,
         lambda r, o: _write(r, ("\u00e9" * 125 + ".png").encode(), 21)),
    Case("255-byte Latin-1 name", "\\xe9" * 251 + ".png", INDEXED, lambda r, o: _write(r, b"\xe9" * 251 + b".png", 22)),
    Case("3 KB UTF-8 path", LONG_UTF8.decode(), INDEXED, lambda r, o: _write(r, LONG_UTF8, 23)),
    Case("path over the store's limit once stored", stored_rel_path(os.fsdecode(LONG_BAD)), "name_too_long",
         lambda r, o: _write(r, LONG_BAD, 24)),
]


def build_folder(tmp_path: Path) -> tuple[Path, list[Case]]:
    root, outside = tmp_path / "photos", tmp_path / "outside"
    root.mkdir()
    (root / "deep").mkdir()
    outside.mkdir()
    (outside / "photo.png").write_bytes(png_bytes(50))
    for case in CASES:
        case.make(root if case.make is not _deep else root / "deep", outside)
    deep_rel = _deep_failure_rel(root)
    return root, [Case(c.name, deep_rel, c.expect, c.make) if c.stored == "<deep>" else c for c in CASES]


def test_folder_contents_table(tmp_path: Path, two_embedders, settings, lite_uri) -> None:
    root, cases = build_folder(tmp_path)
    want_rows = {c.stored for c in cases if c.expect == INDEXED}
    want_failures = {c.stored: c.expect for c in cases if c.expect not in (INDEXED, ABSENT)}
    tracebacks = 0
    with Store(lite_uri) as store:
        try:
            summary = run_index(folder_source(root), index_name="odd", embedders=two_embedders, store=store,
                                settings=settings, batch_size=4, workers=2)
        except Exception:  # counted, then shown: the table's contract is that this never happens
            tracebacks += 1
            raise
        got_failures = dict(summary.failures)
        per_model_rows = {}
        for key in two_embedders:
            ids = list(store.existing_rows("odd", key))
            rows = store.get_rows("odd", key, ids)
            per_model_rows[key] = rows
            paths = [r["rel_path"] for r in rows]
            lost = len(want_rows - set(paths))
            duplicated = len(paths) - len(set(paths))
            assert set(paths) == want_rows and duplicated == 0, key
            for row in rows:  # ids from the raw bytes; the stored form leads back to the very file
                on_disk = resolve_rel_path(root, row["rel_path"]).relative_to(root).as_posix()
                assert row["id"] == row_id("odd", on_disk)
                assert row["content_hash"] == content_hash(resolve_rel_path(root, row["rel_path"]).read_bytes())
        with open(summary.failures_report, newline="", encoding="utf-8") as fh:
            report = list(csv.DictReader(fh))
        tracebacks += sum("Traceback" in r["detail"] for r in report)

        counts = (f"\nfolder-contents table: {len(cases)} cases, {len(want_rows)} rows expected, "
                  f"{len(want_failures)} failures expected; rows lost = {lost}, rows duplicated = {duplicated}, "
                  f"failures missing = {len(set(want_failures) - set(got_failures))}, tracebacks = {tracebacks}")
        print(counts)  # noqa: T201
        assert got_failures == want_failures
        assert {r["file"]: r["reason"] for r in report} == want_failures and all(r["detail"] for r in report)
        assert summary.failures_report.parent == settings.data_dir / "reports" / "odd"
        for counts in summary.per_model.values():
            assert (counts.indexed, counts.failed) == (len(want_rows), len(want_failures))
        assert lost == duplicated == tracebacks == 0
        # ids of UTF-8 names are what they always were (existing indexes stay valid)
        for name in ("plain.png", "été-ß.png", "back\\slash.png", "real/x.png"):
            old = int.from_bytes(hashlib.blake2b(f"odd\0{name}".encode(), digest_size=8).digest(), "big")
            assert row_id("odd", name) == (old & 0x7FFF_FFFF_FFFF_FFFF)

        # a rerun changes nothing and lists the same failures; --strict counts the listing's failures too
        again = run_index(folder_source(root), index_name="odd", embedders=two_embedders, store=store,
                          settings=settings, workers=0)
        assert dict(again.failures) == want_failures
        assert all((c.indexed, c.unchanged) == (0, len(want_rows)) for c in again.per_model.values())
        with pytest.raises(StrictModeError, match=r"--strict"):
            run_index(folder_source(root), index_name="odd", embedders=two_embedders, store=store,
                      settings=settings, workers=0, strict=True)
        assert store.count("odd", "deit3_small") == len(want_rows)


def test_file_that_turns_into_a_link_out_of_the_root_loses_its_row(tmp_path: Path, two_embedders, settings,
                                                                     lite_uri) -> None:
    root, outside = tmp_path / "photos", tmp_path / "outside"
    for i in range(3):
        _write(root, f"img_{i}.png".encode(), i)
    outside.mkdir()
    (outside / "photo.png").write_bytes(png_bytes(50))
    kw = dict(index_name="turn", embedders=two_embedders, settings=settings, workers=0)
    with Store(lite_uri) as store:
        run_index(folder_source(root), store=store, **kw)
        assert store.count("turn", "deit3_small") == 3
        (root / "img_1.png").unlink()
        os.symlink(outside / "photo.png", root / "img_1.png")
        summary = run_index(folder_source(root), store=store, **kw)
        assert dict(summary.failures) == {"img_1.png": "outside_root"}
        assert store.count("turn", "deit3_small") == 2
        assert row_id("turn", "img_1.png") not in store.existing_rows("turn", "deit3_small")


def test_reader_rechecks_the_policy_before_opening(tmp_path: Path) -> None:
    """The folder may change between listing and reading: a FIFO or an outside link is refused, not opened."""
    root = tmp_path / "photos"
    root.mkdir()
    (root / "ok.png").write_bytes(png_bytes(1))
    assert read_regular_file(root, "ok.png") == png_bytes(1)
    os.mkfifo(root / "swapped.png")  # a blocking open() would hang here forever
    with pytest.raises(OSError) as info:
        read_regular_file(root, "swapped.png")
    assert getattr(info.value, "reason", None) == "special_file"
    os.symlink("/etc/hostname", root / "out.png")
    with pytest.raises(OSError) as info:
        read_regular_file(root, "out.png")
    assert getattr(info.value, "reason", None) == "outside_root"


def test_device_is_never_opened() -> None:
    """A character device (``/dev/null``, as a folder's own entry) is refused by ``stat``, before any open."""
    reason, detail = check_entry(Path("/dev"), Path("/dev/null"))
    assert reason == "special_file" and "device" in detail


@pytest.mark.parametrize("raw", [b"plain.png", "été.png".encode(), b"caf\xe9.png", b"\xff\xfe", b"a\\b", b"a\\x41",
                                 b"a\\\xe9", b"\xed\xa0\x80", b"x\x80y/z\xc0.png", bytes(range(1, 47)),
                                 bytes(range(128, 256))])
def test_stored_form_is_readable_and_reversible(raw: bytes) -> None:
    on_disk = os.fsdecode(raw)
    stored = stored_rel_path(on_disk)
    stored.encode("utf-8")  # storable in Milvus, JSON and a UTF-8 CSV
    assert fs_rel_path(stored) == on_disk and os.fsencode(fs_rel_path(stored)) == raw
    digest = hashlib.blake2b(b"i\0" + raw, digest_size=8).digest()  # the id: from the name's raw bytes
    assert row_id("i", on_disk) == (int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF or 1)
    try:
        assert stored == raw.decode("utf-8")  # valid UTF-8: unchanged
    except UnicodeDecodeError:
        assert "\\x" in stored


def test_bad_index_names_build_no_path(tmp_path: Path, two_embedders, settings, lite_uri, cli_env) -> None:
    root = tmp_path / "photos"
    _write(root, b"a.png", 1)
    (root / "pipe.png").parent.mkdir(exist_ok=True)
    os.mkfifo(root / "pipe.png")  # a failure, so a report would be written if the name got that far
    with Store(lite_uri) as store:
        for name in ("../../escaped", "..", "", "a/b", ".", "x y"):
            with pytest.raises(BadIndexNameError):
                run_index(folder_source(root), index_name=name, embedders=two_embedders, store=store,
                          settings=settings, workers=0)
            with pytest.raises(BadIndexNameError):
                failures_report_path(settings, name, None)
        assert store.list_indexes() == {}
    assert not (settings.data_dir / "reports").exists() and not (tmp_path / "escaped").exists()

    data = ["--data-dir", str(tmp_path / "cli-data"), "--workers", "0", *MODEL_FLAGS]
    result = invoke(["index", "folder", str(root), "--name", "../../escaped", *data])
    assert result.exit_code != 0
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "cli-data" / "reports").exists()
    result = invoke(["index", "folder", str(root), "--name", "ok", "--strict", *data])
    assert result.exit_code != 0 and "pipe.png" in result.stderr


def test_api_job_and_images_route(tmp_path: Path, two_embedders) -> None:
    """API jobs run the same policy; ``/images`` serves a file whose name is not UTF-8 from its stored row."""
    from embedsvc.main import create_app

    allowed = tmp_path / "allowed"
    root = allowed / "photos"
    _write(root, b"caf\xe9.png", 3)
    _write(root, b"plain.png", 4)
    os.symlink("/etc/passwd", root / "passwd.jpg")
    os.mkfifo(root / "pipe.png")
    settings = make_settings(tmp_path, allowed_roots=[allowed], models=list(two_embedders))
    with TestClient(create_app(settings, embedders=two_embedders)) as client:
        resp = client.post("/indexes/odd-api/jobs", json={"root": str(root)})
        assert resp.status_code in (200, 201, 202), resp.text
        job = resp.json()
        deadline = time.monotonic() + 120
        while job["state"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
            job = client.get(f"/indexes/odd-api/jobs/{job['id']}").json()
        assert job["state"] == "succeeded", job
        failures = {f[0]: f[1] for f in job["summary"]["failures"]}
        assert failures == {"passwd.jpg": "outside_root", "pipe.png": "special_file"}
        rid = row_id("odd-api", os.fsdecode(b"caf\xe9.png"))
        resp = client.get(f"/images/odd-api/{rid}")
        assert resp.status_code == 200 and resp.content == png_bytes(3)
        page = client.get("/indexes/odd-api/images")
        assert page.status_code == 200, page.text
        listed = {item["rel_path"]: item["id"] for item in page.json()["data"]}
        assert listed == {"caf\\xe9.png": rid, "plain.png": row_id("odd-api", "plain.png")}  # readable stored form
        thumb = client.get(f"/images/odd-api/{rid}/thumbnail")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"

        # an index named ".." is refused (422 by the route's type, or the job fails at the name check)
        # before anything is written: its report would land in the data directory itself
        resp = client.post("/indexes/%2e%2e/jobs", json={"root": str(root)})
        if resp.status_code < 300:
            job = resp.json()
            while job["state"] in ("queued", "running") and time.monotonic() < deadline:
                time.sleep(0.2)
                job = client.get(f"/indexes/%2e%2e/jobs/{job['id']}").json()
            assert job["state"] == "failed", job
        else:
            assert resp.status_code == 422, resp.text
    assert not list(settings.data_dir.glob("failures-*.csv"))


def test_cli_reports_a_folder_of_only_refused_entries(tmp_path: Path, cli_env) -> None:
    """No image, only a FIFO and a link out of the root: the CLI lists both in the report, --strict fails."""
    root = tmp_path / "photos"
    root.mkdir()
    os.mkfifo(root / "pipe.png")
    os.symlink("/etc/passwd", root / "passwd.jpg")
    data = ["--data-dir", str(tmp_path / "data"), "--workers", "0", *MODEL_FLAGS]
    result = invoke(["index", "folder", str(root), "--name", "refused", *data])
    assert result.exit_code == 0, result.output
    assert "2 file(s) skipped; report:" in result.stderr
    (report,) = (tmp_path / "data" / "reports" / "refused").glob("failures-*.csv")
    with open(report, newline="", encoding="utf-8") as fh:
        assert {r["file"]: r["reason"] for r in csv.DictReader(fh)} == {
            "passwd.jpg": "outside_root", "pipe.png": "special_file"}
    result = invoke(["index", "folder", str(root), "--name", "refused", "--strict", *data])
    assert result.exit_code != 0 and "--strict" in result.stderr
