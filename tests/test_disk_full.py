"""Disk full, for real: a 16 MB tmpfs mounted in a private mount namespace (``unshare -m``, needs root).

The data directory (Lite database, reports, thumbnails, eval reports) lives on the tmpfs; the photos do
not. With the tmpfs filled to the last byte, indexing, thumbnails and eval reports each end with one
line saying the disk is full and where, fast (no 30 s stall), and nothing already stored is lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support import REPO, write_images

DRIVER = textwrap.dedent(
    r"""
    import json, os, shutil, subprocess, sys, time
    from pathlib import Path

    mnt, photos = Path(sys.argv[1]), Path(sys.argv[2])
    data = mnt / "data"
    flags = ["--data-dir", str(data), "-m", "deit3_small", "--allow-random-weights", "--device", "cpu",
             "--workers", "0"]
    out = {}

    def cli(*args):
        start = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "embedsvc.cli", *args], capture_output=True, text=True)
        return {"rc": p.returncode, "stderr": p.stderr, "stdout": p.stdout, "s": time.monotonic() - start}

    def count():
        from embedsvc.store import Store
        with Store(str(data / "milvus.db")) as store:
            return store.count("d", "deit3_small")

    out["first"] = cli("index", "folder", str(photos / "a"), "--name", "d", "--labels-from-dirs", *flags)
    out["count_first"] = count()
    with open(mnt / "filler", "wb", buffering=0) as fh:  # fill the tmpfs to the last byte
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
        try:
            while True:
                fh.write(b"\0" * 512)
        except OSError as exc:
            out["fill_errno"] = exc.errno
    out["free_when_full"] = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    out["unchanged"] = cli("index", "folder", str(photos / "a"), "--name", "d", "--labels-from-dirs", *flags)
    shutil.copytree(photos / "b", photos / "a" / "more")  # six new photos to write
    out["full"] = cli("index", "folder", str(photos / "a"), "--name", "d", "--labels-from-dirs", *flags)
    out["eval"] = cli("eval", "d", "--data-dir", str(data), "--out", str(data / "eval"))

    from embedsvc.store.errors import DiskFullError
    from embedsvc.thumbnails import ThumbnailCache
    cache = ThumbnailCache(data / "thumbnails", max_pixels=10_000_000)
    try:
        cache.get(next((photos / "a").rglob("*.png")), size=64, content_hash="abc123", index="d", row_id=1)
        out["thumbnail"] = "written"
    except DiskFullError as exc:
        out["thumbnail"] = {"code": exc.code, "status": exc.http_status, "message": exc.message}
    from embedsvc.indexer.report import write_failures_report
    try:
        write_failures_report(data / "reports" / "d" / "failures-x.csv", [("a.png", "decode", "x" * 200)] * 100)
        out["report"] = "written"
    except DiskFullError as exc:
        out["report"] = {"code": exc.code, "message": exc.message}
    out["thumbnail_leftovers"] = sorted(str(p) for p in (data / "thumbnails").rglob("*") if p.is_file())

    (mnt / "filler").unlink()
    out["count_after"] = count()
    out["rerun"] = cli("index", "folder", str(photos / "a"), "--name", "d", "--labels-from-dirs", *flags)
    out["count_rerun"] = count()
    print("RESULT " + json.dumps(out))
    """
)


def one_error_line(run: dict) -> str:
    lines = [line for line in run["stderr"].splitlines() if line.startswith("error: ")]
    assert run["rc"] != 0, run
    assert len(lines) == 1, run["stderr"][-3000:]
    assert "Traceback" not in run["stderr"] + run["stdout"], run["stderr"][-3000:]
    return lines[0]


def test_disk_full_is_one_line_and_loses_nothing(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_images(photos / "a", 6, subdirs=["cat", "dog"])
    write_images(photos / "b", 6, start_seed=100, subdirs=["cat", "dog"])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "driver.py").write_text(DRIVER)
    env = dict(os.environ, EMBEDSVC_OFFLINE="1", EMBEDSVC_INPUT_SIZE="64", PYTHONPATH=str(REPO))
    for var in ("MILVUS_URI", "EMBEDSVC_MILVUS_URI", "EMBEDSVC_DEBUG"):
        env.pop(var, None)
    script = f"mount -t tmpfs -o size=16m tmpfs {mnt} && exec {sys.executable} {tmp_path / 'driver.py'} {mnt} {photos}"
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    result_lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and result_lines, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    out = json.loads(result_lines[0].removeprefix("RESULT "))

    assert out["first"]["rc"] == 0, out["first"]["stderr"][-3000:]
    assert out["count_first"] == 6
    assert out["fill_errno"] == 28 and out["free_when_full"] == 0

    data = str(mnt / "data")
    for key in ("full", "eval"):
        line = one_error_line(out[key])
        assert line.startswith("error: disk full: no space left in "), (key, line)
        assert data in line, (key, line)  # where: the data directory (or the eval folder under it)
        # No Milvus timeout on the way: not much slower than the first run, which loaded the same model.
        took, first = out[key]["s"], out["first"]["s"]
        assert took < first + 20, (key, took, first, out[key]["stderr"][-6000:].splitlines())
    if out["unchanged"]["rc"] != 0:  # nothing new to index: fine, or one line if the bookkeeping cannot be written
        assert "disk full" in one_error_line(out["unchanged"])

    assert out["thumbnail"]["code"] == "disk_full" and out["thumbnail"]["status"] == 507
    assert "disk full" in out["thumbnail"]["message"] and "thumbnails" in out["thumbnail"]["message"]
    assert not any(".tmp-" in p for p in out["thumbnail_leftovers"]), out["thumbnail_leftovers"]
    assert out["report"]["code"] == "disk_full" and f"{data}/reports/d" in out["report"]["message"]

    assert out["count_after"] == 6  # nothing already stored was lost
    assert out["rerun"]["rc"] == 0, out["rerun"]["stderr"][-3000:]
    assert out["count_rerun"] == 12
