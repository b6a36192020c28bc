"""embedsvc.store against Milvus Lite 2.5.1 (a temp file) and a real Milvus 2.3.5 server.

Server tests carry ``@pytest.mark.integration`` and run by default; the server is started once per
session in a loopback-only network namespace (tests/milvus_server.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedsvc.results import Neighbour
from embedsvc.store import (
    COMPAT_FIELDS,
    DatabaseInUseError,
    DimensionMismatchError,
    IndexNotFoundError,
    ManifestMismatchError,
    Store,
    StoreUnavailableError,
    row_id,
)

REPO = Path(__file__).resolve().parents[1]
DIM = 32
N = 300
N_LABELS = 4

ENGINES = [
    pytest.param("lite", id="lite"),
    pytest.param("server", id="server", marks=pytest.mark.integration),
]


def manifest(dim: int = DIM, **overrides: object) -> dict:
    base = {
        "model_name": "tiny_test.v1",
        "weights": {"source": "seeded-random", "sha256": "ab" * 32},
        "dim": dim,
        "normalize": True,
        "preprocessing": {"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.5] * 3},
    }
    base.update(overrides)
    return base


def make_rows(index: str, n: int = N, dim: int = DIM, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    rows = []
    for i in range(n):
        rel = f"class_{i % N_LABELS}/img_{i:04d}.png"
        rows.append(
            {
                "id": row_id(index, rel),
                "vector": vecs[i],
                "rel_path": rel,
                "content_hash": f"h{i}",
                "label_id": i % N_LABELS,
                "label_name": f"class_{i % N_LABELS}",
                "width": 40 + i,
                "height": 30 + i,
            }
        )
    return rows


def numpy_topk(rows: list[dict], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact search, squared L2, as the reference."""
    ids = np.array([r["id"] for r in rows], dtype=np.int64)
    base = np.stack([r["vector"] for r in rows]).astype(np.float64)
    q = queries.astype(np.float64)
    d2 = (q**2).sum(1)[:, None] - 2 * q @ base.T + (base**2).sum(1)[None, :]
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(d2, order, axis=1)


def assert_hits_equal(hits: list[list[Neighbour]], ref_ids: np.ndarray, ref_d2: np.ndarray) -> None:
    assert len(hits) == len(ref_ids)
    for got, want_ids, want_d in zip(hits, ref_ids, ref_d2, strict=True):
        assert [h.id for h in got] == want_ids.tolist()
        np.testing.assert_allclose([h.distance for h in got], want_d, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module", params=ENGINES)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    if request.param == "lite":
        uri = str(tmp_path_factory.mktemp("lite") / "milvus.db")
    else:
        uri = request.getfixturevalue("milvus_server_uri")
    with Store(uri, owner="pytest test_store") as s:
        yield s


@pytest.fixture
def index(store: Store) -> Iterator[str]:
    """A unique index name, dropped afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    yield name
    if store.models_of(name):
        store.drop_index(name)


def _fill(store: Store, index: str) -> tuple[str, list[dict]]:
    store.ensure_collection(index, "m", manifest())
    rows = make_rows(index)
    store.upsert(index, "m", rows)
    return index, rows


@pytest.fixture(scope="module")
def shared_filled(store: Store) -> Iterator[tuple[str, list[dict]]]:
    """300 x 32 rows for the read-only tests (one per engine: creating collections is slow on a server)."""
    index, rows = _fill(store, f"ro-{uuid.uuid4().hex[:8]}")
    yield index, rows
    store.drop_index(index)


@pytest.fixture
def filled(store: Store, index: str) -> tuple[str, list[dict]]:
    """Like shared_filled, but private to a test that changes rows."""
    return _fill(store, index)


# -- both engines -------------------------------------------------------------------------------
def test_search_equals_numpy_exact_search(store: Store, shared_filled: tuple[str, list[dict]]) -> None:
    index, rows = shared_filled
    assert store.count(index, "m") == N
    queries = np.random.default_rng(1).standard_normal((64, DIM)).astype(np.float32)
    hits = store.search(index, "m", queries, k=10)  # a batch of 64 in one call
    assert_hits_equal(hits, *numpy_topk(rows, queries, 10))
    # A stored vector finds itself at distance 0, with its metadata.
    [[first, *_]] = store.search(index, "m", rows[7]["vector"], k=3)
    assert first.id == rows[7]["id"] and first.distance == pytest.approx(0.0, abs=1e-4)
    assert (first.rel_path, first.label_id, first.label_name) == (rows[7]["rel_path"], 3, "class_3")
    assert (first.width, first.height, first.content_hash) == (47, 37, "h7")


def test_upsert_same_id_twice_keeps_one_row(store: Store, index: str) -> None:
    store.ensure_collection(index, "m", manifest())
    [row] = make_rows(index, n=1)
    store.upsert(index, "m", [row])
    newer = {**row, "vector": row["vector"] + 1.0, "content_hash": "new"}
    store.upsert(index, "m", [newer])
    assert store.count(index, "m") == 1
    [got] = store.get_rows(index, "m", [row["id"]], with_vectors=True)
    assert got["content_hash"] == "new"
    np.testing.assert_allclose(got["vector"], newer["vector"], rtol=1e-6)


def test_manifest_mismatch_names_each_field(store: Store, index: str) -> None:
    store.ensure_collection(index, "m", manifest())
    store.ensure_collection(index, "m", manifest())  # same setup: fine, idempotent
    with pytest.raises(ManifestMismatchError) as err:
        store.ensure_collection(index, "m", manifest(dim=64, normalize=False))
    assert err.value.fields == ["dim", "normalize"]
    assert "dim: stored 32, new 64" in str(err.value) and "normalize" in str(err.value)
    other_weights = manifest(weights={"source": "seeded-random", "sha256": "cd" * 32})
    with pytest.raises(ManifestMismatchError, match="weights") as err:
        store.ensure_collection(index, "m", other_weights)
    assert err.value.fields == ["weights"]
    # The same weights file passed from another place is the same weights: accepted.
    store.ensure_collection(index, "m", manifest(weights={"source": "file:/elsewhere.pth", "sha256": "ab" * 32}))
    with pytest.raises(ManifestMismatchError, match="weights"):  # random weights: only the same seed
        store.ensure_collection(index, "m", manifest(weights={"source": "random", "trained": False, "seed": 1}))
    with pytest.raises(ManifestMismatchError, match="preprocessing"):
        store.ensure_collection(index, "m", manifest(preprocessing={"input_size": [3, 224, 224]}))
    assert set(COMPAT_FIELDS) >= {"model_name", "dim", "normalize", "preprocessing"}
    assert store.get_manifest(index, "m")["dim"] == DIM  # nothing was overwritten


def test_wrong_dimension_gives_clear_errors(store: Store, shared_filled: tuple[str, list[dict]]) -> None:
    index, rows = shared_filled
    with pytest.raises(DimensionMismatchError, match="dimension 16, the index expects 32"):
        store.search(index, "m", np.zeros((2, 16), np.float32), k=5)
    with pytest.raises(DimensionMismatchError, match="dimension 31"):
        store.upsert(index, "m", [{**rows[0], "vector": rows[0]["vector"][:31]}])
    with pytest.raises(ValueError, match="NaN"):
        store.search(index, "m", np.full(DIM, np.nan, np.float32), k=5)


def test_label_filter_and_exclude_ids(store: Store, shared_filled: tuple[str, list[dict]]) -> None:
    index, rows = shared_filled
    queries = np.random.default_rng(2).standard_normal((3, DIM)).astype(np.float32)
    label_rows = [r for r in rows if r["label_id"] == 2]
    hits = store.search(index, "m", queries, k=5, label_id=2)
    assert all(h.label_id == 2 for q in hits for h in q)
    assert_hits_equal(hits, *numpy_topk(label_rows, queries, 5))

    top_ids, _ = numpy_topk(rows, queries[:1], 3)
    excluded = top_ids[0].tolist()
    hits = store.search(index, "m", queries[:1], k=5, exclude_ids=excluded)
    kept = [r for r in rows if r["id"] not in excluded]
    assert_hits_equal(hits, *numpy_topk(kept, queries[:1], 5))

    hits = store.search(index, "m", queries[:1], k=5, label_id=2, exclude_ids=excluded)
    assert_hits_equal(hits, *numpy_topk([r for r in label_rows if r["id"] not in excluded], queries[:1], 5))


def test_existing_delete_get_rows_fetch_all(store: Store, filled: tuple[str, list[dict]]) -> None:
    index, rows = filled
    assert store.existing(index, "m") == {r["id"]: r["content_hash"] for r in rows}
    gone = [r["id"] for r in rows[:10]]
    store.delete(index, "m", gone)
    assert store.count(index, "m") == N - 10
    existing = store.existing(index, "m")
    assert len(existing) == N - 10 and not set(gone) & set(existing)
    asked = [rows[20]["id"], gone[0], rows[11]["id"]]
    got = store.get_rows(index, "m", asked)
    assert [g["id"] for g in got] == [rows[20]["id"], rows[11]["id"]]  # order kept, deleted left out
    assert got[0]["rel_path"] == rows[20]["rel_path"] and "vector" not in got[0]

    ids, vecs, labels = store.fetch_all(index, "m")
    kept = sorted(rows[10:], key=lambda r: r["id"])
    assert ids.dtype == np.int64 and vecs.dtype == np.float32 and labels.dtype == np.int64
    assert ids.tolist() == [r["id"] for r in kept]
    np.testing.assert_array_equal(vecs, np.stack([r["vector"] for r in kept]))
    assert labels.tolist() == [r["label_id"] for r in kept]


def test_existing_pages_through_more_than_one_batch(store: Store, index: str) -> None:
    store.ensure_collection(index, "m", manifest(dim=4))
    rows = make_rows(index, n=2300, dim=4, seed=5)
    store.upsert(index, "m", rows)
    assert store.existing(index, "m") == {r["id"]: r["content_hash"] for r in rows}
    ids, vecs, _ = store.fetch_all(index, "m")
    assert len(ids) == 2300 and len(set(ids.tolist())) == 2300 and vecs.shape == (2300, 4)


def test_list_rows_pages_in_id_order_across_segments(store: Store, index: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of ``list_rows`` cover every row once in id order, over several flushed segments, with a
    label filter, and past the query window (shrunk to 64 rows here; Milvus' own is 16,384)."""
    import embedsvc.store.milvus as store_mod

    store.ensure_collection(index, "m", manifest(dim=4))
    rows = make_rows(index, n=700, dim=4, seed=9)
    for start in range(0, len(rows), 250):  # one sealed segment per batch
        store.upsert(index, "m", rows[start : start + 250])
        store.flush(index, "m")
    ids = sorted(r["id"] for r in rows)
    label2 = sorted(r["id"] for r in rows if r["label_id"] == 2)

    def pages(limit: int, label_id: int | None = None) -> list[int]:
        out: list[int] = []
        offset = 0
        while True:
            page, total = store.list_rows(index, "m", offset=offset, limit=limit, label_id=label_id)
            assert total == (len(ids) if label_id is None else len(label2))
            if not page:
                return out
            out += [r["id"] for r in page]
            offset += limit

    assert pages(250) == ids and pages(33, label_id=2) == label2
    first, _ = store.list_rows(index, "m", offset=0, limit=1)
    assert set(first[0]) >= {"id", "rel_path", "label_id", "label_name", "width", "height"}
    drawn, total = store.sample_rows(index, "m", 20, seed=4)
    assert total == len(ids) and len({r["id"] for r in drawn}) == 20 and {r["id"] for r in drawn} <= set(ids)
    monkeypatch.setattr(store_mod, "_QUERY_WINDOW", 64)
    assert pages(50) == ids and pages(7, label_id=2) == label2
    assert store.list_rows(index, "m", offset=650, limit=60)[0] == store.list_rows(index, "m", offset=650, limit=50)[0]
    assert store.sample_rows(index, "m", 20, seed=4) == (drawn, total)  # same draw through the seek path
    assert store.list_rows(index, "m", offset=len(ids), limit=5) == ([], len(ids))


def test_list_indexes_models_update_and_drop(store: Store, index: str) -> None:
    store.ensure_collection(index, "m", manifest())
    store.ensure_collection(index, "other", manifest(dim=8, model_name="other.v1"))
    store.upsert(index, "m", make_rows(index, n=12))
    store.update_manifest(index, "m", row_count=12, note="first run")
    listing = store.list_indexes()
    assert set(listing[index]) == {"m", "other"}
    m = listing[index]["m"]
    assert (m["live_row_count"], m["row_count"], m["note"], m["dim"]) == (12, 12, "first run", DIM)
    assert m["index"] == index and m["model_key"] == "m" and m["collection"] == store.collection_name(index, "m")
    assert listing[index]["other"]["live_row_count"] == 0
    assert store.models_of(index) == ["m", "other"]
    with pytest.raises(ValueError, match="dim"):
        store.update_manifest(index, "m", dim=64)

    store.drop_index(index)
    assert index not in store.list_indexes() and store.models_of(index) == []
    with pytest.raises(IndexNotFoundError, match=index):
        store.search(index, "m", np.zeros(DIM, np.float32), k=1)
    with pytest.raises(IndexNotFoundError):
        store.drop_index(index)


def test_collection_names_are_valid_and_distinct(store: Store) -> None:
    a = store.collection_name("my photos", "convnext_tiny.fb_in1k")
    b = store.collection_name("my_photos", "convnext_tiny.fb_in1k")
    assert a != b
    for name in (a, b):
        assert name[0].isalpha() and all(ch.isalnum() or ch == "_" for ch in name) and len(name) <= 255
    assert store.collection_name("x", "y") == store.collection_name("x", "y")


def test_ping(store: Store) -> None:
    store.ping()


# -- engine-independent ---------------------------------------------------------------------------
def test_row_id_is_stable_positive_int64() -> None:
    a = row_id("photos", "birds/robin.jpg")
    assert a == row_id("photos", "birds/robin.jpg") and 0 < a < 2**63
    assert a != row_id("photos2", "birds/robin.jpg") and a != row_id("photos", "birds/robin2.jpg")


def test_unreachable_server_fails_fast() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    uri = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=uri):
        Store(uri, connect_timeout=1)
    assert time.monotonic() - t0 < 10


def test_timeouts_come_from_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Store.from_settings and the service's default store take EMBEDSVC_MILVUS_(CONNECT_)TIMEOUT_S."""
    from pydantic import ValidationError

    from embedsvc.core.config import Settings
    from embedsvc.main import default_store_factory
    from tests.support import make_settings

    assert (
        Settings.model_fields["milvus_timeout_s"].default,
        Settings.model_fields["milvus_connect_timeout_s"].default,
    ) == (30, 5)
    monkeypatch.setenv("EMBEDSVC_MILVUS_TIMEOUT_S", "12.5")
    monkeypatch.setenv("EMBEDSVC_MILVUS_CONNECT_TIMEOUT_S", "0.5")
    assert (Settings().milvus_timeout_s, Settings().milvus_connect_timeout_s) == (12.5, 0.5)
    with pytest.raises(ValidationError):
        Settings(milvus_timeout_s=0)
    settings = make_settings(tmp_path, milvus_timeout_s=7.5, milvus_connect_timeout_s=2.5)
    with Store.from_settings(settings, owner="pytest timeouts") as store:
        assert (store.timeout, store.connect_timeout) == (8, 2.5)  # calls take whole seconds (pymilvus)
    with default_store_factory(settings)() as store:
        assert (store.timeout, store.connect_timeout, store.owner) == (8, 2.5, "embedsvc serve")


def test_lite_file_name_is_checked(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="36 characters"):
        Store(str(tmp_path / ("x" * 40 + ".db")))


# -- Milvus Lite shared by two processes ----------------------------------------------------------
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
