"""Bulk-index jobs: run to completion, one per index at a time, only under allowed roots."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from embedsvc.store import row_id
from tests.api.conftest import INDEX, MODELS, ApiEnv, wait_for_job
from tests.support import png_bytes, write_images


@pytest.fixture(scope="module")
def folder(api_env: ApiEnv) -> Path:
    root = api_env.allowed / "set1"
    write_images(root, 4, subdirs=["cats", "dogs"])
    return root


def test_job_runs_to_completion_and_rows_appear(client: TestClient, api_env: ApiEnv, folder: Path) -> None:
    embedder = api_env.embedders["efficientnet_lite0"]
    lock = embedder.gate.lock_for(embedder)  # hold the model's forward turn: the job must wait mid-run
    with lock:
        resp = client.post("/indexes/jobbed/jobs", json={"root": str(folder), "labels_from_dirs": True})
        assert resp.status_code == 202, resp.text
        job = resp.json()
        assert job["state"] in ("queued", "running") and job["models"] == MODELS
        assert job["root"] == str(folder.resolve())
        # A second job for the same index while the first runs: 409; another index is fine to refuse later.
        again = client.post("/indexes/jobbed/jobs", json={"root": str(folder)})
        assert again.status_code == 409 and again.json()["error"] == "job_running"
        assert job["id"] in again.json()["detail"]
    done = wait_for_job(client, "jobbed", job["id"])
    assert done["state"] == "succeeded", done
    assert done["progress"]["done"] == done["progress"]["total"] == 4
    assert done["progress"]["phase"] == "done"
    assert {k: v["indexed"] for k, v in done["summary"]["per_model"].items()} == dict.fromkeys(MODELS, 4)
    info = client.get("/indexes/jobbed").json()
    assert info["row_count"] == 4
    assert info["models"][0]["manifest"]["label_names"] == ["cats", "dogs"]
    rid = row_id("jobbed", "cats/img_000.png")
    body = client.post("/search", params={"index": "jobbed", "k": 3}, json={"id": rid}).json()
    assert all(len(m["neighbours"]) == 3 for m in body["models"])
    assert client.get(f"/images/jobbed/{rid}").content == (folder / "cats/img_000.png").read_bytes()
    assert [j["id"] for j in client.get("/indexes/jobbed/jobs").json()] == [job["id"]]
    # Re-running is allowed once the first finished; nothing changed, so nothing is re-embedded.
    rerun = client.post(
        "/indexes/jobbed/jobs", json={"root": str(folder), "labels_from_dirs": True, "models": ["efficientnet_lite0"]}
    )
    assert rerun.status_code == 202
    second = wait_for_job(client, "jobbed", rerun.json()["id"])
    assert second["state"] == "succeeded"
    assert second["summary"]["per_model"] == {
        "efficientnet_lite0": second["summary"]["per_model"]["efficientnet_lite0"]
    }
    assert second["summary"]["per_model"]["efficientnet_lite0"]["unchanged"] == 4


@pytest.mark.parametrize(
    ("root", "status", "code"),
    [
        ("OUTSIDE", 403, "root_not_allowed"),
        ("DATASET", 403, "root_not_allowed"),
        ("/", 403, "root_not_allowed"),
        ("/etc", 403, "root_not_allowed"),
        ("ALLOWED/../../outside", 403, "root_not_allowed"),
        ("ALLOWED/symlink-out", 403, "root_not_allowed"),
        ("relative/path", 400, "bad_root"),
        ("ALLOWED/missing", 400, "bad_root"),
        ("ALLOWED/set1/cats/img_000.png", 400, "bad_root"),
    ],
)
def test_job_root_checks(client: TestClient, api_env: ApiEnv, folder: Path, root: str, status: int, code: str) -> None:
    link = api_env.allowed / "symlink-out"
    if not link.is_symlink():
        link.symlink_to(api_env.outside, target_is_directory=True)
    root = (
        root.replace("OUTSIDE", str(api_env.outside))
        .replace("DATASET", str(api_env.dataset))
        .replace("ALLOWED", str(api_env.allowed))
    )
    resp = client.post("/indexes/elsewhere/jobs", json={"root": root})
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == code


def test_job_refuses_another_folder_for_an_existing_index(client: TestClient, folder: Path) -> None:
    resp = client.post(f"/indexes/{INDEX}/jobs", json={"root": str(folder)})
    assert resp.status_code == 409 and resp.json()["error"] == "index_root_mismatch"


def test_job_bad_requests(client: TestClient, folder: Path) -> None:
    unknown = client.post("/indexes/x/jobs", json={"root": str(folder), "models": ["bogus"]})
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_model"
    extra = client.post("/indexes/x/jobs", json={"root": str(folder), "command": "rm -rf /"})
    assert extra.status_code == 422
    missing = client.get("/indexes/x/jobs/0123456789abcdef")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_job"


def test_jobs_disabled_without_allowed_roots(api_env: ApiEnv, folder: Path) -> None:
    from embedsvc.main import create_app

    settings = api_env.settings.model_copy(update={"allowed_roots": [], "data_dir": api_env.allowed / "d2"})
    app = create_app(settings, embedders=api_env.embedders, store_factory=lambda: _unavailable())
    with TestClient(app) as c:
        resp = c.post("/indexes/x/jobs", json={"root": str(folder)})
        assert resp.status_code == 403 and "no allowed roots" in resp.json()["detail"]


def _unavailable():
    from embedsvc.store import StoreUnavailableError

    raise StoreUnavailableError("no Milvus in this test")


def test_job_forwards_share_the_search_cpu_gate(
    client: TestClient, api_env: ApiEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CPU a job's batch forwards take turns with searches' forwards: recorded forward intervals of
    the job thread and of concurrent search threads never overlap (a slow job start proves nothing)."""
    intervals: list[tuple[float, float, str]] = []
    record = threading.Lock()
    for embedder in api_env.embedders.values():
        original = embedder.model.forward_features

        def recording(x: torch.Tensor, original=original) -> torch.Tensor:
            start = time.perf_counter()
            try:
                return original(x)
            finally:
                with record:
                    intervals.append((start, time.perf_counter(), threading.current_thread().name))

        monkeypatch.setattr(embedder.model, "forward_features", recording)
    root = api_env.allowed / "gated"
    write_images(root, 24, start_seed=50)
    engine = client.app.state.svc.engine
    query = png_bytes(7)
    stop = threading.Event()

    def searcher() -> None:
        while not stop.is_set():
            engine.search_image(INDEX, query, k=3)

    searchers = [threading.Thread(target=searcher, name=f"searcher-{i}") for i in range(3)]
    for thread in searchers:
        thread.start()
    try:
        job = client.post("/indexes/gated/jobs", json={"root": str(root)}).json()
        assert wait_for_job(client, "gated", job["id"])["state"] == "succeeded"
    finally:
        stop.set()
        for thread in searchers:
            thread.join()
    by_job = [iv for iv in intervals if iv[2].startswith("index-job")]
    by_search = [iv for iv in intervals if iv[2].startswith("searcher")]
    assert len(by_job) >= len(MODELS) and len(by_search) >= len(MODELS)  # both ran, across every model
    ordered = sorted(intervals)
    overlaps = [(a, b) for a, b in itertools.pairwise(ordered) if b[0] < a[1]]
    assert overlaps == [], overlaps[:3]
