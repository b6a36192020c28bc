"""Milvus Lite shared by two processes: the owner file, sharing, in-use errors, takeover (embedsvc.store.lite)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from embedsvc.store import DatabaseInUseError, Store
from tests.store.conftest import DIM, REPO, make_rows, manifest

CHILD_PRELUDE = """
import json, sys, numpy as np
from embedsvc.store import Store, DatabaseInUseError, row_id
def say(**kw):
    print(json.dumps(kw), flush=True)
"""


def child(code: str, *args: str) -> subprocess.Popen[str]:
    """Run ``code`` in a separate interpreter (this venv's python); it talks JSON lines on stdout."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def read_msg(proc: subprocess.Popen[str]) -> dict:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        raise AssertionError(f"child exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
    return json.loads(line)


def finish(proc: subprocess.Popen[str]) -> None:
    if proc.stdin and not proc.stdin.closed:
        proc.stdin.close()
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


def test_second_process_shares_the_owners_lite_server(lite_uri: str) -> None:
    with Store(lite_uri, owner="search service (test)") as owner:
        assert owner.lite_role == "owner"
        info = json.loads(Path(lite_uri + ".owner.json").read_text())
        assert info["pid"] == os.getpid() and info["owner"] == "search service (test)" and info["shared"]
        owner.ensure_collection("shared", "m", manifest())
        rows = make_rows("shared", n=50)
        owner.upsert("shared", "m", rows[:30])

        proc = child(
            """
            with Store(sys.argv[1], owner="indexer (test)") as s:
                rows = [dict(id=row_id("shared", f"x{i}"), vector=np.full(32, i, np.float32), rel_path=f"x{i}",
                             content_hash="c") for i in range(20)]
                s.ensure_collection("shared", "m", json.loads(sys.argv[2]))
                s.upsert("shared", "m", rows)
                say(role=s.lite_role, count=s.count("shared", "m"), indexes=list(s.list_indexes()))
            """,
            lite_uri,
            json.dumps(manifest()),
        )
        try:
            msg = read_msg(proc)
        finally:
            finish(proc)
        assert msg == {"role": "guest", "count": 50, "indexes": ["shared"]}
        assert proc.returncode == 0
        # The owner sees the guest's rows, and keeps working after the guest left.
        assert owner.count("shared", "m") == 50
        assert owner.search("shared", "m", np.full(DIM, 3, np.float32), k=1)[0][0].rel_path == "x3"
    assert not Path(lite_uri + ".owner.json").exists()  # removed on close


def test_in_use_error_names_an_owner_that_does_not_share(lite_uri: str) -> None:
    proc = child(
        """
        s = Store(sys.argv[1], owner="exclusive holder (test)", share_lite=False)
        say(role=s.lite_role)
        sys.stdin.read()
        s.close()
        """,
        lite_uri,
    )
    try:
        assert read_msg(proc) == {"role": "owner"}
        t0 = time.monotonic()
        with pytest.raises(DatabaseInUseError) as err:
            Store(lite_uri, owner="pytest")
        assert time.monotonic() - t0 < 5
        text = str(err.value)
        assert "exclusive holder (test)" in text and f"pid {proc.pid}" in text and "since" in text
        assert "Open local milvus failed" not in text
        assert err.value.owner_info["pid"] == proc.pid
    finally:
        finish(proc)
    with Store(lite_uri) as s:  # free again once the holder is gone
        assert s.lite_role == "owner"


def test_in_use_error_names_a_foreign_holder_via_the_lock(lite_uri: str) -> None:
    """A process that opened the file with plain pymilvus (no owner file) is still named."""
    proc = child(
        """
        from pymilvus import MilvusClient
        c = MilvusClient(uri=sys.argv[1])
        say(ok=True)
        sys.stdin.read()
        """,
        lite_uri,
    )
    try:
        assert read_msg(proc) == {"ok": True}
        with pytest.raises(DatabaseInUseError, match=rf"in use by pid {proc.pid} \(.*python") as err:
            Store(lite_uri, lite_wait=1)
        assert "Open local milvus failed" not in str(err.value)
    finally:
        finish(proc)


def test_guest_takes_over_when_the_owner_exits(lite_uri: str) -> None:
    proc = child(
        """
        s = Store(sys.argv[1], owner="short-lived indexer (test)")
        s.ensure_collection("idx", "m", json.loads(sys.argv[2]))
        s.upsert("idx", "m", [dict(id=i + 1, vector=np.full(32, i, np.float32), rel_path=f"p{i}", content_hash="c")
                              for i in range(25)])
        say(role=s.lite_role)
        sys.stdin.read()
        s.close()
        """,
        lite_uri,
        json.dumps(manifest()),
    )
    try:
        assert read_msg(proc) == {"role": "owner"}
        with Store(lite_uri, owner="service (test)") as guest:
            assert guest.lite_role == "guest"
            assert guest.count("idx", "m") == 25
            finish(proc)  # the owner closes and exits: its Lite server stops
            assert proc.returncode == 0
            assert guest.count("idx", "m") == 25  # reopened the file itself, data intact
            assert guest.lite_role == "owner"
            assert json.loads(Path(lite_uri + ".owner.json").read_text())["pid"] == os.getpid()
    finally:
        finish(proc)


def test_stale_owner_file_is_ignored(lite_uri: str) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"pid": dead.pid, "owner": "crashed", "host": socket.gethostname(), "uri": "unix:/nonexistent.sock"}
    Path(lite_uri + ".owner.json").write_text(json.dumps({**stale, "shared": True}))
    with Store(lite_uri) as s:
        assert s.lite_role == "owner"
        assert json.loads(Path(lite_uri + ".owner.json").read_text())["pid"] == os.getpid()


def test_two_stores_in_one_process_share_one_server(lite_uri: str) -> None:
    a = Store(lite_uri)
    b = Store(lite_uri)
    try:
        assert a.lite_role == b.lite_role == "owner"
        a.ensure_collection("i", "m", manifest(dim=4))
        a.close()  # b still holds a reference: the server keeps running
        assert b.models_of("i") == ["m"]
    finally:
        a.close()
        b.close()
    assert not Path(lite_uri + ".owner.json").exists()
