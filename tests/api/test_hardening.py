"""The service's hardening items: request ids, no server internals in bodies, body limits on every
route, client paths that break the OS, the API token, and paths shown relative to where they came from.

Everything runs against the package's real index (Milvus Lite, real photos, three models); the
database-in-use case holds a real Lite file in a child process that does not share it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from embedsvc.client import ApiError, EmbedsvcClient
from embedsvc.core.config import get_settings
from embedsvc.main import create_app
from tests.api.conftest import INDEX, ApiEnv, wait_for_job
from tests.support import make_settings, write_images

JPEG_REL = "bird/erase_gosling.jpg"


# -- request ids ------------------------------------------------------------------------------------
def test_request_id_is_honoured_echoed_and_in_error_bodies(client: TestClient) -> None:
    resp = client.get("/indexes/nope", headers={"X-Request-ID": "trace-42.a:b"})
    assert resp.status_code == 404
    assert resp.headers["x-request-id"] == "trace-42.a:b"
    assert resp.json() == {"detail": resp.json()["detail"], "error": "unknown_index", "request_id": "trace-42.a:b"}
    ok = client.get("/health")
    generated = ok.headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0  # a fresh uuid4 hex per request
    assert client.get("/health").headers["x-request-id"] != generated
    # A header that could forge log lines (spaces, newlines, kilobytes) is replaced, not echoed.
    for bad in ("has space", "x" * 200, "new\\nline", ""):
        resp = client.get("/indexes/nope", headers={"X-Request-ID": bad})
        rid = resp.headers["x-request-id"]
        assert rid != bad and len(rid) == 32 and resp.json()["request_id"] == rid


def test_error_details_are_logged_under_the_request_id(
    client: TestClient, api_env: ApiEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="embedsvc.api.errors")
    long_name = "n" * 300
    resp = client.post(
        "/indexes/x-long/jobs", json={"root": f"{api_env.allowed}/{long_name}"}, headers={"X-Request-ID": "rid-long"}
    )
    assert resp.status_code == 400 and resp.json()["error"] == "bad_root"
    assert "File name too long" in resp.json()["detail"]
    logged = [r.getMessage() for r in caplog.records if "rid-long" in r.getMessage()]
    assert logged and "ENAMETOOLONG" in logged[0]


# -- 503s: no database path, pid or command line -----------------------------------------------------
_HOLDER = textwrap.dedent(
    """
    import sys
    from embedsvc.store import Store
    s = Store(sys.argv[1], owner="exclusive holder (test)", share_lite=False)
    print("ready", flush=True)
    sys.stdin.read()
    s.close()
    """
)


@pytest.fixture
def held_database(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen]]:
    """A Milvus Lite file held by another process that does not share it."""
    data_dir = tmp_path / "held-data"
    data_dir.mkdir()
    db = data_dir / "milvus.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield data_dir, proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)


def test_503_bodies_show_no_database_path_pid_or_command(
    api_env: ApiEnv, held_database: tuple[Path, subprocess.Popen], caplog: pytest.LogCaptureFixture
) -> None:
    data_dir, holder = held_database
    settings = api_env.settings.model_copy(update={"data_dir": data_dir, "milvus_uri": ""})
    app = create_app(settings, embedders=api_env.embedders)
    caplog.set_level(logging.INFO)
    secrets_ = (str(data_dir), "milvus.db", f"pid {holder.pid}", str(holder.pid), sys.executable, "exclusive holder")
    with TestClient(app) as c:
        responses = {
            "ready": c.get("/ready", headers={"X-Request-ID": "rid-ready"}),
            "indexes": c.get("/indexes", headers={"X-Request-ID": "rid-indexes"}),
            "search": c.post(
                "/search",
                params={"index": INDEX},
                files={"image": ("q.jpg", (api_env.dataset / JPEG_REL).read_bytes())},
                headers={"X-Request-ID": "rid-search"},
            ),
        }
    for what, resp in responses.items():
        assert resp.status_code == 503, (what, resp.text)
        assert resp.headers["retry-after"]
        for secret in secrets_:
            assert secret not in resp.text, (what, secret, resp.text)
    for what in ("indexes", "search"):  # the real reason, as a code: another process holds the file
        assert responses[what].json()["error"] == "database_in_use", responses[what].text
    assert responses["indexes"].json()["request_id"] == "rid-indexes"
    assert "Milvus unreachable" in responses["ready"].json()["reason"]
    # ...while the operator finds who holds the file in the log, under the client's request id.
    log_text = "\n".join(r.getMessage() for r in caplog.records)
    assert any("rid-indexes" in line and str(holder.pid) in line for line in log_text.splitlines()), log_text[-2000:]


# -- body limits ---------------------------------------------------------------------------------------
def _chunks(total: int, size: int = 1 << 20) -> Iterator[bytes]:
    yield b'{"root": "'
    sent = 0
    while sent < total:
        yield b"a" * size
        sent += size
    yield b'"}'


@pytest.mark.parametrize("route", ["/indexes/x/jobs", f"/search?index={INDEX}"])
def test_30mb_chunked_json_body_is_413(client: TestClient, route: str) -> None:
    resp = client.post(
        route,
        content=_chunks(30 * 1024 * 1024),
        headers={"content-type": "application/json", "X-Request-ID": "rid-big"},
    )
    assert resp.status_code == 413, resp.text[:300]
    assert resp.json()["error"] == "too_large" and "exceeds the limit" in resp.json()["detail"]
    assert resp.headers["x-request-id"] == "rid-big" and resp.json()["request_id"] == "rid-big"


def _too_large_count(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('embedsvc_errors_total{code="too_large"}'):
            return float(line.split()[-1])
    return 0.0


def test_declared_oversized_body_is_413_before_reading(client: TestClient) -> None:
    before = _too_large_count(client)
    resp = client.post(
        "/indexes/x/jobs", content=b"{}", headers={"content-type": "application/json", "content-length": "99999999"}
    )
    assert resp.status_code == 413 and "99,999,999" in resp.json()["detail"]
    assert _too_large_count(client) == before + 1  # counted like every other error


# -- client paths the OS refuses --------------------------------------------------------------------
def test_client_roots_that_break_the_os_are_4xx(client: TestClient, api_env: ApiEnv) -> None:
    loop = api_env.allowed / "loop"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    cases = {
        f"{api_env.allowed}/{'c' * 256}": "File name too long",
        f"{api_env.allowed}/{'/'.join(['d' * 250] * 16)}": "",  # 4,000 characters, each part legal
        f"{api_env.allowed}/loop": "",
        f"{api_env.allowed}/loop/inner": "",
    }
    for root, words in cases.items():
        resp = client.post("/indexes/x-os/jobs", json={"root": root})
        assert resp.status_code == 400, (root[:80], resp.text[:300])
        assert resp.json()["error"] == "bad_root" and words in resp.json()["detail"]
        assert len(resp.json()["detail"]) < 400  # the client's root is cut short, not echoed whole


# -- API token -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def token_app(api_env: ApiEnv) -> Iterator[TestClient]:
    settings = api_env.settings.model_copy(update={"api_token": SecretStr("s3cret-token")})
    with TestClient(create_app(settings, embedders=api_env.embedders)) as c:
        yield c


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer s3cret-token-but-longer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic czNjcmV0LXRva2Vu"},
        {"Authorization": "s3cret-token"},
        {"Authorization": "Bearer s3cret-tokeñ".encode()},
    ],
    ids=["none", "wrong", "longer", "empty", "basic", "no_scheme", "non_ascii"],
)
def test_jobs_need_the_token(token_app: TestClient, api_env: ApiEnv, headers: dict) -> None:
    for resp in (
        token_app.post("/indexes/tok/jobs", json={"root": str(api_env.allowed)}, headers=headers),
        token_app.get("/indexes/tok/jobs", headers=headers),
        token_app.get("/indexes/tok/jobs/0123456789abcdef", headers=headers),
    ):
        assert resp.status_code == 401, resp.text
        assert resp.headers["www-authenticate"] == "Bearer"
        assert resp.json()["error"] == "unauthorized" and "s3cret" not in resp.text


def test_with_the_token_jobs_run_and_search_stays_open(token_app: TestClient, api_env: ApiEnv) -> None:
    good = {"Authorization": "Bearer s3cret-token"}
    resp = token_app.post("/indexes/tok/jobs", json={"root": str(api_env.allowed / "missing")}, headers=good)
    assert resp.status_code == 400 and resp.json()["error"] == "bad_root"  # past the token check
    assert token_app.get("/indexes/tok/jobs", headers=good).status_code == 200
    search = token_app.post("/search", params={"index": INDEX, "k": 2}, json={"id": 1})
    assert search.status_code == 404 and search.json()["error"] == "unknown_id"  # open: no 401
    assert token_app.get("/indexes").status_code == 200 and token_app.get("/ready").status_code == 200


def test_token_for_search_when_the_operator_asks(api_env: ApiEnv) -> None:
    settings = api_env.settings.model_copy(
        update={"api_token": SecretStr("s3cret-token"), "api_token_for_search": True}
    )
    with TestClient(create_app(settings, embedders=api_env.embedders)) as c:
        for resp in (c.post("/search", params={"index": INDEX}, json={"id": 1}), c.get("/indexes"), c.get("/models")):
            assert resp.status_code == 401 and resp.json()["error"] == "unauthorized"
        assert c.get("/indexes", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200  # probes stay open
        assert c.get("/metrics").status_code == 200


def test_client_sends_the_configured_token(
    token_app: TestClient, api_env: ApiEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The web UI's client reads EMBEDSVC_API_TOKEN from the settings, so its job form works."""
    monkeypatch.setenv("EMBEDSVC_API_TOKEN", "s3cret-token")
    get_settings.cache_clear()
    try:
        with pytest.raises(ApiError) as err:
            EmbedsvcClient(http=token_app).start_job("tok", str(api_env.allowed / "missing"))
        assert err.value.code == "bad_root"  # got past the token
    finally:
        get_settings.cache_clear()
    with pytest.raises(ApiError) as err:
        EmbedsvcClient(http=token_app, token="wrong").start_job("tok", str(api_env.allowed / "missing"))
    assert err.value.status == 401 and err.value.code == "unauthorized"


def test_compose_sets_a_token_for_the_api_and_the_ui() -> None:
    text = (Path(__file__).resolve().parents[2] / "docker" / "compose.yml").read_text()
    assert text.count("EMBEDSVC_API_TOKEN: ${EMBEDSVC_API_TOKEN") == 2


# -- paths relative to where they came from ------------------------------------------------------------
def test_job_and_index_paths_are_relative(client: TestClient, api_env: ApiEnv) -> None:
    root = api_env.allowed / "relative-set"
    write_images(root, 3, start_seed=70)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a failure, so a report is written
    job = client.post("/indexes/rel-paths/jobs", json={"root": str(root), "models": ["efficientnet_lite0"]}).json()
    done = wait_for_job(client, "rel-paths", job["id"])
    assert done["state"] == "succeeded", done
    report = done["summary"]["failures_report"]
    assert report and not report.startswith("/") and report.startswith("reports/rel-paths/")
    assert (api_env.settings.data_dir / report).is_file()
    info = client.get("/indexes/rel-paths")
    assert info.json()["models"][0]["manifest"]["dataset_root"] == "relative-set"
    for text in (str(done["summary"]), info.text):
        assert str(api_env.settings.data_dir) not in text and str(api_env.allowed) not in text


def test_settings_allow_a_token_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMBEDSVC_API_TOKEN", "from-env")
    monkeypatch.setenv("EMBEDSVC_API_TOKEN_FOR_SEARCH", "true")
    settings = make_settings(tmp_path)
    assert settings.api_token.get_secret_value() == "from-env" and settings.api_token_for_search is True
    assert "from-env" not in repr(settings)  # never in a log line that prints the settings
    monkeypatch.delenv("EMBEDSVC_API_TOKEN")
    assert os.environ.get("EMBEDSVC_API_TOKEN") is None and not make_settings(tmp_path).api_token.get_secret_value()


# -- job history (cachetools LRU) ------------------------------------------------------------------------
def test_job_history_keeps_the_last_jobs_and_every_running_one(client: TestClient, api_env: ApiEnv) -> None:
    from embedsvc.jobs import JobManager, JobNotFoundError

    svc = client.app.state.svc
    manager = JobManager(store=svc.store, embedders=svc.embedders, settings=api_env.settings, max_history=2)
    lite0 = svc.embedders["efficientnet_lite0"]
    jobs = []
    for i in range(3):
        root = api_env.allowed / f"history-{i}"
        write_images(root, 1, start_seed=90 + i)
        jobs.append(manager.start(f"history-{i}", str(root), models=["efficientnet_lite0"]))
        assert jobs[-1].thread is not None
        jobs[-1].thread.join(120)
        assert jobs[-1].state == "succeeded", jobs[-1].error
    with pytest.raises(JobNotFoundError):
        manager.get("history-0", jobs[0].id)  # the oldest finished job is forgotten
    assert [j.id for j in manager.list()] == [jobs[1].id, jobs[2].id]
    # A running job stays readable however many jobs the history holds.
    root = api_env.allowed / "history-running"
    write_images(root, 1, start_seed=99)
    with lite0.gate.lock_for(lite0):  # hold the forward turn: the job stays running
        running = manager.start("history-running", str(root), models=["efficientnet_lite0"])
        manager._history.clear()
        assert manager.get("history-running", running.id) is running and running in manager.list()
    assert running.thread is not None
    running.thread.join(120)
    assert running.state == "succeeded"
    assert manager.get("history-running", running.id).summary["per_model"]["efficientnet_lite0"]["indexed"] == 1


def test_client_errors_are_product_errors_with_the_request_id(client: TestClient) -> None:
    """The HTTP client's errors share the product's root type, and carry the id to quote in a report."""
    from embedsvc.core.errors import EmbedsvcError

    with pytest.raises(ApiError) as err:
        EmbedsvcClient(http=client, token="").index("nope")
    assert isinstance(err.value, EmbedsvcError)
    assert (err.value.http_status, err.value.code) == (404, "unknown_index")
    assert err.value.request_id and len(err.value.request_id) == 32


def test_open_jobs_are_announced_at_start(api_env: ApiEnv, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="embedsvc.main")
    with TestClient(create_app(api_env.settings, embedders=api_env.embedders)):
        pass
    assert any("set EMBEDSVC_API_TOKEN" in r.getMessage() for r in caplog.records)
    caplog.clear()
    settings = api_env.settings.model_copy(update={"api_token": SecretStr("t")})
    with TestClient(create_app(settings, embedders=api_env.embedders)):
        pass
    assert not any("EMBEDSVC_API_TOKEN" in r.getMessage() for r in caplog.records)


# -- one root error type --------------------------------------------------------------------------------
def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def test_every_product_error_names_its_code_and_status() -> None:
    """No product error falls back to the root's placeholder code: the one handler can map them all."""
    import importlib
    import pkgutil

    import embedsvc
    import embedsvc.indexer
    from embedsvc.core.errors import EmbedsvcError

    for package in (embedsvc, embedsvc.indexer):  # every module, so that every error class is defined
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)
    from embedsvc.images import ImageDecodeError

    classes = [c for c in _subclasses(EmbedsvcError) if c.__module__ != "embedsvc.client"]  # client side
    assert len(classes) >= 30, [c.__name__ for c in classes]
    for cls in classes:
        assert cls.code != "error", cls
        assert 400 <= cls.http_status < 600, cls
        if cls.http_status >= 500:  # server-side: what a client may read is set for the class
            assert cls.public_message, cls
    for reason, (status, code) in ImageDecodeError.BY_REASON.items():
        err = ImageDecodeError("q.jpg", reason, "detail")
        assert (err.http_status, err.code, err.client_message()) == (status, code, "q.jpg: detail")
    assert (ImageDecodeError("q", "new-reason", "d").http_status, ImageDecodeError("q", "x", "d").code) == (
        400,
        "bad_image",
    )
    import embedsvc.api.errors as api_errors

    for gone in ("STATUS_BY_CLASS", "CODE_BY_CLASS", "IMAGE_ERRORS", "ApiError", "classify"):
        assert not hasattr(api_errors, gone), gone


def test_a_failed_job_reports_a_code_and_no_server_paths(client: TestClient, api_env: ApiEnv, store) -> None:
    """The index exists with other weights: the job fails in the background and says why, path-free."""
    import numpy as np

    from embedsvc.store import row_id

    root = api_env.allowed / "other-weights-job"
    write_images(root, 2, start_seed=120)
    manifest = client.app.state.svc.embedders["efficientnet_lite0"].manifest()
    manifest["weights"] = {"source": "file:/srv/secret/w.pth", "sha256": "ee" * 32, "trained": True, "label": "x"}
    manifest |= {"dataset_root": str(root.resolve()), "index_kind": "folder"}
    store.ensure_collection("failing-job", "efficientnet_lite0", manifest)
    vec = np.ones(manifest["dim"], np.float32)
    store.upsert(
        "failing-job",
        "efficientnet_lite0",
        [{"id": row_id("failing-job", "x.png"), "vector": vec, "rel_path": "x.png", "content_hash": "h"}],
    )
    resp = client.post("/indexes/failing-job/jobs", json={"root": str(root), "models": ["efficientnet_lite0"]})
    assert resp.status_code == 202, resp.text
    done = wait_for_job(client, "failing-job", resp.json()["id"])
    assert done["state"] == "failed", done
    assert done["error"].startswith("manifest_mismatch: "), done["error"]  # code first, then the message
    assert str(api_env.settings.data_dir) not in done["error"] and "Traceback" not in done["error"]


def test_public_path_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embedsvc.api.deps import public_path

    allowed = tmp_path / "srv" / "photos"
    allowed.mkdir(parents=True)
    (tmp_path / "link").symlink_to(allowed)
    monkeypatch.chdir(tmp_path)
    settings = make_settings(tmp_path, data_dir=Path("data"), allowed_roots=[tmp_path / "link"])
    cases = {
        str(allowed / "set1"): "set1",  # under the allowed root (given as a symlink, stored resolved)
        str(allowed): ".",
        str(tmp_path / "data" / "reports" / "x" / "failures.csv"): "reports/x/failures.csv",
        "data/reports/y.csv": "reports/y.csv",  # a relative data dir, as the default "data" is
        "/somewhere/else/dataset": "dataset",  # outside both: the folder's name only
        "": None,
        None: None,
    }
    for path, want in cases.items():
        assert public_path(path, settings) == want, path
