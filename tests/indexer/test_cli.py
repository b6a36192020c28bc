"""`embedsvc index ...` end to end: SIGKILL mid-run then resume, database in use, one-line errors."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedsvc.core.config import get_settings
from embedsvc.indexer.folder import folder_source
from embedsvc.indexer.runner import run_index
from embedsvc.store import Store
from tests.support import REPO, write_images

MODEL_FLAGS = ["-m", "convnext_tiny", "-m", "deit3_small", "--allow-random-weights", "--device", "cpu"]


def invoke(args: list[str]):
    from embedsvc.cli import app

    get_settings.cache_clear()
    return CliRunner().invoke(app, args)


def error_line(stderr: str) -> str:
    """The one ``error:`` line of a failed command (INFO log lines of the run may come before it)."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def rows_by_path(store: Store, index: str, key: str) -> dict[str, np.ndarray]:
    ids = list(store.existing_rows(index, key))
    rows = store.get_rows(index, key, ids, with_vectors=True)
    paths = [r["rel_path"] for r in rows]
    assert len(paths) == len(set(paths)) == store.count(index, key), "exactly one row per file"
    return {r["rel_path"]: r["vector"] for r in rows}


def test_sigkill_mid_run_then_rerun_completes_exactly(tmp_path: Path, cli_env, two_embedders, settings) -> None:
    root = tmp_path / "photos"
    write_images(root, 40)
    data = tmp_path / "cli-data"
    args = ["index", "folder", str(root), "--name", "r", "--batch-size", "4", "--workers", "1", "--data-dir",
            str(data), *MODEL_FLAGS]
    slow = subprocess.Popen(
        # 1 s per forward: 20 batches of forwards, so the kill after the first write (~2 s in) is mid-run
        # with a wide margin even on a loaded machine.
        [sys.executable, str(REPO / "tests" / "indexer" / "slow_cli.py"), "1.0", *args],
        cwd=REPO, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seen: list[str] = []
    first_write = threading.Event()

    def watch() -> None:
        assert slow.stdout is not None
        for line in slow.stdout:
            seen.append(line)
            if "wrote " in line and " rows to r/" in line:
                first_write.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        assert first_write.wait(240), "no rows written:\n" + "".join(seen)
        assert slow.poll() is None, "finished before it could be killed:\n" + "".join(seen)
        slow.send_signal(signal.SIGKILL)
    finally:
        slow.kill()
        slow.wait(30)

    assert any("[prepare]" in line or "[index]" in line for line in seen), "plain progress lines off a TTY"

    rerun = invoke(args)  # the same command again (in-process: saves a second interpreter start)
    assert rerun.exit_code == 0, rerun.output
    counts = {}
    for line in rerun.stdout.splitlines():
        cells = [c.strip() for c in line.split("│") if c.strip()]
        if cells and cells[0].split(" ")[0] in ("convnext_tiny", "deit3_small"):
            counts[cells[0].split(" ")[0]] = (int(cells[1]), int(cells[2]))  # indexed, unchanged
    assert set(counts) == {"convnext_tiny", "deit3_small"}, rerun.stdout
    assert all(indexed + unchanged == 40 for indexed, unchanged in counts.values()), counts
    assert any(unchanged > 0 for _, unchanged in counts.values()), "the killed run had written rows"
    assert any(indexed > 0 for indexed, _ in counts.values()), "the kill landed mid-run:\n" + "".join(seen)

    with Store(str(settings.data_dir / "reference.db")) as ref:
        run_index(folder_source(root), index_name="r", embedders=two_embedders, store=ref, settings=settings,
                  batch_size=4, workers=0)
        expected = {key: rows_by_path(ref, "r", key) for key in two_embedders}
    with Store(str(data / "milvus.db")) as store:
        for key in two_embedders:
            got = rows_by_path(store, "r", key)
            assert set(got) == set(expected[key]) and len(got) == 40
            for rel, vector in got.items():
                np.testing.assert_allclose(vector, expected[key][rel], atol=1e-6, rtol=0)


HOLDER = """
import sys
from embedsvc.store import Store
store = Store(sys.argv[1], owner="pytest holder", share_lite=sys.argv[2] == "share")
print("ready", flush=True)
sys.stdin.read()
store.close()
"""


@pytest.mark.parametrize("share", ["private", "share"])
def test_database_in_use(tmp_path: Path, cli_env, share: str) -> None:
    """A private holder: one clear error line. A sharing holder (the search service): indexing works."""
    root = tmp_path / "photos"
    write_images(root, 3)
    data = tmp_path / "data"
    data.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(data / "milvus.db"), share], cwd=REPO, env=cli_env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        result = invoke(["index", "folder", str(root), "--name", "u", "--data-dir", str(data), "--workers", "0",
                         "-m", "deit3_small", "--allow-random-weights", "--device", "cpu"])
        if share == "private":
            assert result.exit_code == 1
            assert error_line(result.stderr).startswith("error: ") and "in use by pytest holder" in result.stderr
            assert "Traceback" not in result.output
        else:
            assert result.exit_code == 0, result.output
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(60)
    if share == "share":
        with Store(str(data / "milvus.db")) as store:
            assert store.count("u", "deit3_small") == 3


def test_cli_errors_are_one_line(tmp_path: Path, cli_env, monkeypatch: pytest.MonkeyPatch) -> None:
    data = ["--data-dir", str(tmp_path / "data"), "--workers", "0", "-m", "deit3_small", "--allow-random-weights",
            "--device", "cpu"]
    (tmp_path / "empty").mkdir()
    result = invoke(["index", "folder", str(tmp_path / "empty"), "--name", "e", *data])
    assert result.exit_code == 1 and result.stderr.strip() == f"error: no images found under {tmp_path / 'empty'}"

    root = tmp_path / "photos"
    write_images(root, 2)
    (root / "broken.jpg").write_bytes(b"")
    result = invoke(["index", "folder", str(root), "--name", "e", "--strict", *data])
    assert result.exit_code == 3 and "error: 1 file(s) failed and --strict is set" in result.stderr

    result = invoke(["index", "folder", str(root), "--name", "e", *data])
    assert result.exit_code == 0, result.output
    assert "1 file(s) skipped; report:" in result.stderr
    monkeypatch.setenv("EMBEDSVC_NORMALIZE", "false")
    result = invoke(["index", "folder", str(root), "--name", "e", *data])
    assert result.exit_code == 1 and "holds vectors made differently" in result.stderr and "normalize" in result.stderr
    monkeypatch.delenv("EMBEDSVC_NORMALIZE")

    result = invoke(["index", "folder", str(root), "--name", "e", "--data-dir", str(tmp_path / "d2"), "-m",
                     "deit3_small", "--device", "cpu"])
    assert result.exit_code == 1 and error_line(result.stderr).startswith("error: no weights for deit3_small")

    result = invoke(["index", "folder", str(root), "--name", "e", "--shard", "3/3", *data])
    assert result.exit_code == 1 and "error: --shard" in result.stderr

    result = invoke(["index", "imagenet-val", str(root), *data])
    assert result.exit_code == 1 and "error: no ImageNet val images" in result.stderr


def test_default_workers_decode_inline_on_small_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU models on 1-2 usable cores decode inline (a worker beside the forwards slows them); more cores: 2."""
    from embedsvc.core.config import Settings
    from embedsvc.indexer.cli import default_workers

    cpu = Settings(data_dir=tmp_path, device="cpu")
    for cores, expected in [(1, 0), (2, 0), (3, 2), (16, 2)]:
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert default_workers(cpu) == expected, cores
