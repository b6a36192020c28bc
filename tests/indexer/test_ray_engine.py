"""`--engine ray` keeps the local engine's guarantees, on a real Ray (2 CPUs), real Milvus Lite, real images.

One Ray per module (started here, with a hook that can slow the workers' forwards down); the driver-kill
test runs the real CLI in a subprocess, which starts and owns a Ray of its own. Reference vectors come from
the local engine on the same folder with the same seeded random weights at 64 px.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import ray

from embedsvc.indexer.folder import folder_source
from embedsvc.indexer.ray_engine import RayEngineError, RayOptions, parse_actors, run_index_ray
from embedsvc.indexer.report import ProgressUpdate, StrictModeError
from embedsvc.indexer.runner import run_index
from embedsvc.store import Store
from tests.indexer.ray_slow import DELAY_FILE_ENV, runtime_env
from tests.indexer.test_cli import MODEL_FLAGS, invoke
from tests.indexer.test_runner import write_bad_files
from tests.support import REPO, make_settings, write_images

GOOD = 14  # good images, in two label folders, plus one with a non-UTF-8 name
NON_UTF8 = os.fsdecode(b"caf\xe9.png")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A 2-CPU Ray for the module; yields the file whose number of seconds every worker forward sleeps first."""
    delay = tmp_path_factory.mktemp("ray") / "forward-delay-s"
    delay.write_text("0")
    sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, runtime_env=runtime_env(delay))
    signal.signal(signal.SIGTERM, sigterm)  # ray.init's exits at once; the rest of the suite keeps its own
    yield delay
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """14 random PNGs in two label folders, one more under a non-UTF-8 name, and four bad files (file -> reason)."""
    root = tmp_path_factory.mktemp("ray-photos") / "photos"
    write_images(root, GOOD - 1, subdirs=["cats", "dogs"])
    spare = write_images(root.parent / "spare", 1, start_seed=100)[0]
    spare.rename(root / "cats" / NON_UTF8)
    bad = {f"dogs/{name}": reason for name, reason in write_bad_files(root / "dogs").items()}
    return root, bad


def stored_rows(store: Store, index: str, key: str) -> dict[str, dict]:
    """rel_path -> row (with its vector); asserts exactly one row per file."""
    rows = store.get_rows(index, key, list(store.existing_rows(index, key)), with_vectors=True)
    paths = [r["rel_path"] for r in rows]
    assert len(paths) == len(set(paths)) == store.count(index, key), "exactly one row per file"
    return {r["rel_path"]: r for r in rows}


@pytest.fixture(scope="module")
def reference(photos, two_embedders, tmp_path_factory: pytest.TempPathFactory):
    """The local engine's run on the photos: (summary, model -> rel_path -> row)."""
    root, _ = photos
    tmp = tmp_path_factory.mktemp("ray-reference")
    with Store(str(tmp / "reference.db")) as store:
        summary = run_index(folder_source(root, labels_from_dirs=True), index_name="r", embedders=two_embedders,
                            store=store, settings=make_settings(tmp), batch_size=4, workers=0)
        return summary, {key: stored_rows(store, "r", key) for key in two_embedders}


def assert_same_as_reference(store: Store, index: str, reference_rows: dict[str, dict[str, dict]]) -> None:
    """Same files, same metadata, vectors with cosine >= 0.9999 to the local engine's."""
    for key, expected in reference_rows.items():
        got = stored_rows(store, index, key)
        assert set(got) == set(expected) and len(got) == GOOD
        for rel, row in got.items():
            ref = expected[rel]
            for column in ("content_hash", "label_id", "label_name", "width", "height"):
                assert row[column] == ref[column], (key, rel, column)
            a, b = np.asarray(row["vector"]), np.asarray(ref["vector"])
            cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            assert cosine >= 0.9999, (key, rel, cosine)


def actor_pids() -> list[int]:
    """Processes of this machine's model actors (Ray titles them after the callable class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::") and b"EmbedActor" in cmdline:
                pids.append(int(entry.name))
    return pids


def test_same_as_the_local_engine_with_an_actor_killed_mid_run_then_strict(
    ray_cluster, photos, reference, two_embedders, settings, lite_uri
) -> None:
    """Rows, counts, failures and report equal the local engine's although a model actor was SIGKILLed mid-run
    (Ray restarts it and retries its batches); the rerun embeds nothing and --strict fails on the bad files."""
    root, bad = photos
    local_summary, reference_rows = reference
    updates: list[ProgressUpdate] = []
    killed: list[tuple[int, int]] = []  # (pid, files done when it was killed)

    def progress(update: ProgressUpdate) -> None:
        updates.append(update)
        if update.phase == "index" and not killed and 0 < update.done < update.total:
            pids = actor_pids()
            assert pids, "no model actor process found"
            os.kill(pids[0], signal.SIGKILL)
            killed.append((pids[0], update.done))

    kw = dict(index_name="r", embedders=two_embedders, settings=settings, batch_size=2)
    ray_cluster.write_text("0.3")  # each forward 0.3 s longer: batches of 2 leave most of the run after the kill
    try:
        with Store(lite_uri) as store:
            summary = run_index_ray(folder_source(root, labels_from_dirs=True), store=store, progress=progress, **kw)
            ray_cluster.write_text("0")
            assert killed and killed[0][1] < GOOD + len(bad), "the actor was killed mid-run"
            assert summary.extra["engine"] == "ray"
            assert {k: (c.indexed, c.unchanged, c.failed, c.skipped) for k, c in summary.per_model.items()} == {
                k: (c.indexed, c.unchanged, c.failed, c.skipped) for k, c in local_summary.per_model.items()
            } == {k: (GOOD, 0, len(bad), 0) for k in two_embedders}
            assert dict(summary.failures) == dict(local_summary.failures) == bad
            with open(summary.failures_report, newline="") as fh:  # type: ignore[arg-type]
                assert {r["file"]: r["reason"] for r in csv.DictReader(fh)} == bad
            assert updates[0].phase == "prepare" and updates[-1].phase == "done"
            assert updates[-1].done == GOOD + len(bad)
            rates = summary.extra["stage_rates"]
            assert {"read", "write", *two_embedders} <= set(rates) and rates["read"]["rows"] >= GOOD + len(bad)
            assert_same_as_reference(store, "r", reference_rows)
            assert "cats/caf\\xe9.png" in stored_rows(store, "r", "convnext_tiny")  # stored escaped (embedsvc.paths)

            # the rerun: nothing left to embed, the bad files fail again, --strict turns that into the error
            with pytest.raises(StrictModeError, match="--strict") as raised:
                run_index_ray(folder_source(root, labels_from_dirs=True), store=store, strict=True, **kw)
            assert "report:" in str(raised.value)
            assert_same_as_reference(store, "r", reference_rows)
    finally:
        ray_cluster.write_text("0")


def test_driver_sigkill_mid_run_then_rerun_resumes_by_content_hash(
    ray_cluster, photos, reference, cli_env, tmp_path: Path
) -> None:
    root, bad = photos
    data = tmp_path / "cli-data"
    delay = tmp_path / "subprocess-delay-s"
    delay.write_text("1.0 3")  # 1 s per forward, one file per batch, then held: killed before it can finish
    args = ["index", "folder", str(root), "--name", "r", "--labels-from-dirs", "--batch-size", "1",
            "--data-dir", str(data), "--engine", "ray", *MODEL_FLAGS]
    slow = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "indexer" / "ray_slow.py"), *args, "--ray-cpus", "2"],
        cwd=REPO, env=cli_env | {DELAY_FILE_ENV: str(delay)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,  # its own process group: the Ray it starts goes with it
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
        with contextlib.suppress(ProcessLookupError):
            os.killpg(slow.pid, signal.SIGKILL)  # what of its Ray is still alive (its agents outlive it ~1 min)
    assert any("[prepare]" in line or "[index]" in line for line in seen), "plain progress lines off a TTY"

    rerun = invoke(args)  # the same command, in-process: it runs on this module's Ray
    assert rerun.exit_code == 0, rerun.output
    counts = {}
    for line in rerun.stdout.splitlines():
        cells = [c.strip() for c in line.split("│") if c.strip()]
        if cells and cells[0].split(" ")[0] in ("convnext_tiny", "deit3_small"):
            counts[cells[0].split(" ")[0]] = (int(cells[1]), int(cells[2]))  # indexed, unchanged
    assert set(counts) == {"convnext_tiny", "deit3_small"}, rerun.stdout
    assert all(indexed + unchanged == GOOD for indexed, unchanged in counts.values()), rerun.output
    assert any(unchanged > 0 for _, unchanged in counts.values()), "the killed run had written rows"
    assert any(indexed > 0 for indexed, _ in counts.values()), "the kill landed mid-run:\n" + "".join(seen)
    with Store(str(data / "milvus.db")) as store:
        assert_same_as_reference(store, "r", reference[1])


def test_ray_flags_are_checked_before_anything_starts(tmp_path: Path, cli_env) -> None:
    root = tmp_path / "photos"
    write_images(root, 1)
    base = ["index", "folder", str(root), "--name", "x", "--data-dir", str(tmp_path / "d"), *MODEL_FLAGS]
    cases = {
        ("--ray-actors", "2"): "error: --ray-actors needs --engine ray",
        ("--engine", "ray", "--ray-actors", "4-2"): "error: --ray-actors 4-2: need 1 <= MIN <= MAX",
        ("--engine", "ray", "--ray-address", "127.0.0.1:1"): "error: cannot reach Ray at 127.0.0.1:1: ",
        ("--engine", "ray", "--ray-address", "ray://h:x"): "error: --ray-address expects auto, ray://HOST:PORT",
    }
    for flags, expected in cases.items():
        result = invoke([*base, *flags])
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith(expected), (flags, result.output)
        assert "Traceback" not in result.output
    assert parse_actors("3") == (3, 3) and parse_actors("1-4") == (1, 4)
    with pytest.raises(RayEngineError):
        parse_actors("0")
    assert RayOptions().address is None

