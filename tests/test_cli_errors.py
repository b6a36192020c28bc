"""The CLI's bad-input table: every failure a user can cause or meet is one ``error:`` line and a non-zero exit.

Most cases run in-process through typer's CliRunner (fast); a few run the real console script, where
the interpreter's own traceback printing would show if anything escaped the wrapper.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embedsvc.core.config import get_settings
from tests.support import REPO, write_images

FAST = ["--workers", "0", "-m", "deit3_small", "--allow-random-weights", "--device", "cpu"]


@dataclass
class Case:
    """One odd invocation; ``expect`` is a fragment the error line must contain (case-insensitive)."""

    name: str
    args: list[str]
    expect: str
    env: dict[str, str] = field(default_factory=dict)
    code: int | None = None  # exact exit code when it matters


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Offline, 64 px, a private data dir, no inherited Milvus URI: for CliRunner and subprocesses alike."""
    for var in ("MILVUS_URI", "EMBEDSVC_MILVUS_URI", "EMBEDSVC_MODELS", "EMBEDSVC_DEBUG", "EMBEDSVC_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("EMBEDSVC_OFFLINE", "1")
    monkeypatch.setenv("EMBEDSVC_INPUT_SIZE", "64")
    monkeypatch.setenv("EMBEDSVC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EMBEDSVC_MILVUS_CONNECT_TIMEOUT_S", "1")
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    yield dict(os.environ)
    get_settings.cache_clear()


def make_inputs(tmp_path: Path) -> dict[str, Path]:
    photos = tmp_path / "photos"
    write_images(photos, 2)
    (tmp_path / "empty").mkdir()
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("not a folder")
    latin1 = tmp_path / "labels-latin1.csv"
    latin1.write_bytes("path,label\nimg_000.png,caf\xe9\n".encode("latin-1"))
    empty_csv = tmp_path / "labels-empty.csv"
    empty_csv.write_bytes(b"")
    binary_csv = tmp_path / "labels-binary.csv"
    binary_csv.write_bytes(bytes(range(256)) * 4)
    no_label_csv = tmp_path / "labels-one-column.csv"
    no_label_csv.write_text("path\nimg_000.png\n")
    weights_garbage = tmp_path / "garbage.pth"
    weights_garbage.write_bytes(b"this is not a checkpoint")
    return {
        "photos": photos,
        "empty": tmp_path / "empty",
        "file": a_file,
        "missing": tmp_path / "does-not-exist",
        "latin1": latin1,
        "empty_csv": empty_csv,
        "binary_csv": binary_csv,
        "no_label_csv": no_label_csv,
        "garbage_weights": weights_garbage,
    }


def cases(p: dict[str, Path], held_port: int) -> list[Case]:
    photos, f = str(p["photos"]), ["index", "folder", str(p["photos"]), "--name", "t"]
    out: list[Case] = [
        # -- the command line itself -------------------------------------------------------------
        Case("unknown global option", ["--bogus"], "no such option", code=2),
        Case("unknown command", ["nosuch"], "no such command", code=2),
        Case("unknown index subcommand", ["index", "nosuch"], "no such command", code=2),
        Case("folder without root", ["index", "folder"], "missing argument", code=2),
        Case("folder without --name", ["index", "folder", photos], "missing option", code=2),
        Case("--name without value", ["index", "folder", photos, "--name"], "requires an argument", code=2),
        Case("unknown folder option", [*f, "--frobnicate"], "no such option", code=2),
        Case("extra argument", [*f, "extra"], "unexpected extra argument", code=2),
        # -- what to index -----------------------------------------------------------------------
        Case("missing folder", ["index", "folder", str(p["missing"]), "--name", "t", *FAST], "not a folder"),
        Case("file instead of folder", ["index", "folder", str(p["file"]), "--name", "t", *FAST], "not a folder"),
        Case("empty folder", ["index", "folder", str(p["empty"]), "--name", "t", *FAST], "no images found"),
        # -- index names (validated by embedsvc.store.naming) ------------------------------------
        Case("empty --name", ["index", "folder", photos, "--name", "", *FAST], "name"),
        Case("--name escaping the data dir", ["index", "folder", photos, "--name", "../../escaped", *FAST], "name"),
        Case("--name with a space", ["index", "folder", photos, "--name", "a b", *FAST], "name"),
        Case("--name too long", ["index", "folder", photos, "--name", "x" * 300, *FAST], "name"),
        Case("--name with a slash", ["index", "folder", photos, "--name", "a/b", *FAST], "name"),
        # -- --shard, --limit, --batch-size, --workers -----------------------------------------------
        Case("--shard without n", [*f, "--shard", "5", *FAST], "--shard"),
        Case("--shard i == n", [*f, "--shard", "3/3", *FAST], "--shard"),
        Case("--shard n = 0", [*f, "--shard", "0/0", *FAST], "--shard"),
        Case("--shard negative", [*f, "--shard", "-1/2", *FAST], "--shard"),
        Case("--shard letters", [*f, "--shard", "a/b", *FAST], "--shard"),
        Case("--shard three parts", [*f, "--shard", "1/2/3", *FAST], "--shard"),
        Case("--shard empty i", [*f, "--shard", "/2", *FAST], "--shard"),
        Case("--limit negative", [*f, "--limit", "-1"], "--limit", code=2),
        Case("--limit not a number", [*f, "--limit", "ten"], "--limit", code=2),
        Case("--batch-size 0", [*f, "--batch-size", "0"], "--batch-size", code=2),
        Case("--batch-size float", [*f, "--batch-size", "1.5"], "--batch-size", code=2),
        Case("--workers negative", [*f, "--workers", "-2"], "--workers", code=2),
        # -- models and weights ------------------------------------------------------------------------
        Case("unknown --model", [*f, "-m", "nosuch"], "unknown model 'nosuch'", code=2),
        Case("empty --model", [*f, "-m", ""], "unknown model", code=2),
        Case("--weights without =", [*f, "--weights", "foo", *FAST], "KEY=PATH_OR_URL"),
        Case("--weights without key", [*f, "--weights", "=x", *FAST], "KEY=PATH_OR_URL"),
        Case("--weights without value", [*f, "--weights", "deit3_small=", *FAST], "KEY=PATH_OR_URL"),
        Case(
            "--weights missing file",
            [*f, "--weights", f"deit3_small={p['missing']}.pth", "-m", "deit3_small", "--device", "cpu"],
            "deit3_small",
        ),
        Case(
            "--weights not a checkpoint",
            [*f, "--weights", f"deit3_small={p['garbage_weights']}", "-m", "deit3_small", "--device", "cpu"],
            "garbage.pth",
        ),
        Case("no weights, no --allow-random-weights", [*f, "-m", "deit3_small", "--device", "cpu"], "no weights"),
        Case("--device tpu", [*f, "--device", "tpu", "-m", "deit3_small"], "device"),
        Case("EMBEDSVC_DEVICE=tpu", [*f, "-m", "deit3_small"], "device", env={"EMBEDSVC_DEVICE": "tpu"}),
        Case("EMBEDSVC_MODELS not JSON", [*f], "models", env={"EMBEDSVC_MODELS": "gresnet50"}),
        Case("EMBEDSVC_WEIGHTS not JSON", [*f, *FAST], "weights", env={"EMBEDSVC_WEIGHTS": "{oops"}),
        Case("EMBEDSVC_BATCH_SIZE not a number", [*f, *FAST], "batch_size", env={"EMBEDSVC_BATCH_SIZE": "many"}),
        # -- Milvus URIs -------------------------------------------------------------------------------
        Case("--milvus-uri host:port", [*f, "--milvus-uri", "localhost:19530", *FAST], "MILVUS_URI"),
        Case("--milvus-uri ftp://", [*f, "--milvus-uri", "ftp://x/y", *FAST], "not supported"),
        Case("--milvus-uri not .db", [*f, "--milvus-uri", "milvus.sqlite", *FAST], ".db"),
        Case("--milvus-uri name Lite refuses", [*f, "--milvus-uri", "bad name!.db", *FAST], "must match"),
        Case("MILVUS_URI host:port", [*f, *FAST], "MILVUS_URI", env={"MILVUS_URI": "localhost:19530"}),
        Case("MILVUS_URI unreachable server", [*f, *FAST], "milvus", env={"MILVUS_URI": "http://127.0.0.1:9"}),
        Case("--data-dir is a file", [*f, "--data-dir", str(p["file"]), *FAST], "a_file.txt"),
        # -- labels ------------------------------------------------------------------------------------
        Case("--labels-csv missing", [*f, "--labels-csv", str(p["missing"]), *FAST], "does-not-exist"),
        Case("--labels-csv not UTF-8", [*f, "--labels-csv", str(p["latin1"]), *FAST], "labels-latin1.csv is not utf-8"),
        Case("--labels-csv binary", [*f, "--labels-csv", str(p["binary_csv"]), *FAST], "labels-binary.csv"),
        Case("--labels-csv empty", [*f, "--labels-csv", str(p["empty_csv"]), *FAST], "empty"),
        Case("--labels-csv one column", [*f, "--labels-csv", str(p["no_label_csv"]), *FAST], "label"),
        Case("--labels-csv is a folder", [*f, "--labels-csv", photos, *FAST], "photos"),
        # -- imagenet-val ------------------------------------------------------------------------------
        Case("imagenet-val without root", ["index", "imagenet-val"], "missing argument", code=2),
        Case("imagenet-val missing root", ["index", "imagenet-val", str(p["missing"]), *FAST], "does-not-exist"),
        Case("imagenet-val on a file", ["index", "imagenet-val", str(p["file"]), *FAST], "a_file.txt"),
        Case("imagenet-val no val images", ["index", "imagenet-val", photos, *FAST], "no imagenet val images"),
        Case(
            "imagenet-val missing --labels",
            ["index", "imagenet-val", photos, "--labels", str(p["missing"]), *FAST],
            "does-not-exist",
        ),
        Case(
            "imagenet-val missing --devkit",
            ["index", "imagenet-val", photos, "--devkit", str(p["missing"]), *FAST],
            "does-not-exist",
        ),
        # -- eval --------------------------------------------------------------------------------------
        Case("eval without index", ["eval"], "missing argument", code=2),
        Case("eval --k-list letters", ["eval", "x", "--k-list", "a,b"], "--k-list", code=2),
        Case("eval --k-list zero", ["eval", "x", "--k-list", "0"], "--k-list", code=2),
        Case("eval --k-list empty", ["eval", "x", "--k-list", ","], "--k-list", code=2),
        Case("eval --sample 0", ["eval", "x", "--sample", "0"], "--sample", code=2),
        Case("eval --seed letters", ["eval", "x", "--seed", "x"], "--seed", code=2),
        Case("eval unknown index", ["eval", "nosuch"], "nosuch"),
        Case("eval bad name", ["eval", "../up"], "up"),
        Case("eval bad --milvus-uri", ["eval", "x", "--milvus-uri", "nope"], "MILVUS_URI"),
        # -- models, serve, ui -----------------------------------------------------------------------------
        Case("models unknown -m", ["models", "-m", "nosuch"], "unknown model", code=2),
        Case("models --load, no weights", ["models", "--load", "-m", "deit3_small", "--device", "cpu"], "no weights"),
        Case("serve --port letters", ["serve", "--port", "http"], "--port", code=2),
        Case("serve --port too large", ["serve", "--port", "99999"], "--port", code=2),
        Case("serve --port 0", ["serve", "--port", "0"], "--port", code=2),
        Case("serve --input-size 0", ["serve", "--input-size", "0"], "--input-size", code=2),
        Case("serve --torch-threads letters", ["serve", "--torch-threads", "many"], "--torch-threads", code=2),
        Case("serve --log-level bogus", ["serve", "--log-level", "chatty"], "--log-level", code=2),
        Case("serve --allowed-root missing", ["serve", "--allowed-root", str(p["missing"])], "does-not-exist"),
        Case("serve on a port in use", ["serve", "--port", str(held_port)], f"port {held_port} is already in use by"),
        Case("ui on a port in use", ["ui", "--port", str(held_port)], f"port {held_port} is already in use by pid"),
        Case("ui --port letters", ["ui", "--port", "abc"], "--port", code=2),
        Case("ui --port negative", ["ui", "--port", "-5"], "--port", code=2),
        Case("ui --api-url not a URL", ["ui", "--api-url", "localhost"], "--api-url", code=2),
    ]
    return out


def check(name: str, code: int, stdout: str, stderr: str, case: Case | None = None) -> list[str]:
    """What is wrong with one run (empty when it is exactly one error line and a non-zero exit)."""
    problems = []
    error_lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    if code == 0:
        problems.append("exit code 0")
    if case is not None and case.code is not None and code != case.code:
        problems.append(f"exit code {code}, expected {case.code}")
    if len(error_lines) != 1:
        problems.append(f"{len(error_lines)} error lines")
    if "Traceback" in stdout + stderr:
        problems.append("traceback shown")
    if case is not None and error_lines and case.expect.lower() not in error_lines[0].lower():
        problems.append(f"{case.expect!r} not in the error line")
    return [f"{name}: {p} | stderr: {stderr.strip()[-400:]!r}" for p in problems]


def test_bad_input_table(tmp_path: Path, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from embedsvc.cli import app

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    table = cases(make_inputs(tmp_path), holder.getsockname()[1])
    problems: list[str] = []
    for case in table:
        with monkeypatch.context() as m:
            for key, value in case.env.items():
                m.setenv(key, value)
            get_settings.cache_clear()
            result = CliRunner().invoke(app, case.args)
        get_settings.cache_clear()
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            problems.append(f"{case.name}: raised {type(result.exception).__name__}: {result.exception}")
        problems += check(case.name, result.exit_code, result.stdout, result.stderr, case)
    failed = {p.split(":")[0] for p in problems}
    shown = sum("traceback shown" in p for p in problems)
    print(f"\nCLI bad-input table: {len(table)} cases, {len(table) - len(failed)} one-line errors, {shown} tracebacks")  # noqa: T201
    holder.close()
    assert not problems, "\n".join(problems)
    assert len(table) >= 60


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "embedsvc.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_real_processes_print_one_line_and_debug_shows_the_traceback(tmp_path: Path, cli_env: dict[str, str]) -> None:
    inputs = make_inputs(tmp_path)
    runs: list[tuple[str, list[str], dict[str, str]]] = [
        ("missing folder", ["index", "folder", str(inputs["missing"]), "--name", "t", *FAST], {}),
        ("labels not UTF-8", ["index", "folder", str(inputs["photos"]), "--name", "t", "--labels-csv",
                              str(inputs["latin1"]), *FAST], {}),
        ("bad MILVUS_URI", ["eval", "x"], {"MILVUS_URI": "localhost:19530"}),
        ("usage error", ["index", "folder", "--limit", "x"], {}),
    ]
    problems: list[str] = []
    for name, args, env in runs:
        proc = run_cli(args, cli_env | env, tmp_path)
        problems += check(name, proc.returncode, proc.stdout, proc.stderr)
    assert not problems, "\n".join(problems)

    debug = run_cli(["--debug", "index", "folder", str(inputs["photos"]), "--name", "t", "--labels-csv",
                     str(inputs["latin1"]), *FAST], cli_env, tmp_path)
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("error: ")
    via_env = run_cli(["index", "folder", str(inputs["missing"]), "--name", "t", *FAST],
                      cli_env | {"EMBEDSVC_DEBUG": "1"}, tmp_path)
    assert via_env.returncode == 1 and via_env.stderr.strip().splitlines()[-1].startswith("error: ")


def test_bare_groups_show_their_help_not_an_error(cli_env: dict[str, str]) -> None:
    from embedsvc.cli import app

    for args in ([], ["index"]):
        result = CliRunner().invoke(app, args, prog_name="embedsvc")
        assert result.exit_code == 2 and "Usage: embedsvc" in result.stderr and "Commands:" in result.stderr
        assert "error:" not in result.output and "Traceback" not in result.output


def test_unexpected_errors_name_their_type_and_point_at_debug() -> None:
    from embedsvc.cli_common import error_line

    line, code = error_line(ZeroDivisionError("division by zero"))
    assert code == 1
    assert line == "internal error: ZeroDivisionError: division by zero (run with --debug for the traceback)"


def test_milvus_uri_relative_lite_file(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """``MILVUS_URI=./x.db``, the form Milvus documents for Lite, selects a Lite file relative to the cwd."""
    write_images(tmp_path / "photos", 3)
    proc = run_cli(["index", "folder", "photos", "--name", "rel", *FAST], cli_env | {"MILVUS_URI": "./x.db"}, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "x.db").exists() and not (tmp_path / "data" / "milvus.db").exists()
    from embedsvc.store import Store

    with Store(str(tmp_path / "x.db")) as store:
        assert store.count("rel", "deit3_small") == 3


def test_help_fits_80_columns(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``<bool>`` metavars, and at 80 columns no option's description takes more than two lines."""
    from embedsvc.cli import app

    monkeypatch.setenv("COLUMNS", "80")
    commands = [[], ["index"], ["index", "folder"], ["index", "imagenet-val"], ["serve"], ["ui"], ["eval"], ["models"]]
    for command in commands:
        result = CliRunner().invoke(app, [*command, "--help"], terminal_width=80)
        assert result.exit_code == 0, result.output
        text = result.stdout
        assert "<bool>" not in text, command
        lines = text.splitlines()
        assert max(len(line) for line in lines) <= 80, command
        options = [i for i, line in enumerate(lines) if line.lstrip().startswith("-")]
        assert options, command
        for i, start in enumerate(options):
            end = options[i + 1] if i + 1 < len(options) else len(lines)
            block = [line for line in lines[start:end] if line.strip()]
            block = [line for line in block if line.startswith(" " * 6) or line is block[0]]  # this option's lines
            assert len(block) <= 2, (command, block)


def test_check(cli_env: dict[str, str]) -> None:
    """The table's own checker refuses what it must refuse (a traceback, two lines, exit 0)."""
    assert check("x", 1, "", "error: one\n") == []
    assert check("x", 0, "", "error: one\n")
    assert check("x", 1, "", "error: one\nerror: two\n")
    assert check("x", 1, "", "Traceback (most recent call last):\nerror: x\n")



def test_milvus_lite_dying_mid_run_is_one_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """SIGKILL the Lite server under a running `embedsvc index folder`: one error line, no traceback, exit 1."""
    import signal
    import threading

    import psutil

    write_images(tmp_path / "photos", 60)
    env = cli_env | {"EMBEDSVC_MILVUS_TIMEOUT_S": "5"}
    args = ["index", "folder", str(tmp_path / "photos"), "--name", "dying", "--batch-size", "4", *FAST]
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "indexer" / "slow_cli.py"), "0.5", *args],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    wrote = threading.Event()

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err.append(line)
            if "[index]" in line:  # the collection exists and batches are being embedded
                wrote.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    try:
        assert wrote.wait(240), "".join(err)
        lite = [p for p in psutil.Process(proc.pid).children(recursive=True) if "milvus" in p.name()]
        assert lite, "".join(err)
        for p in lite:
            p.send_signal(signal.SIGKILL)
        # communicate() reads the rest of stderr too (racing the reader thread): keep both parts.
        out, rest = proc.communicate(timeout=240)
    finally:
        proc.kill()
        proc.wait(30)
    reader.join(10)
    stderr = "".join(err) + (rest or "")
    problems = check(f"Lite killed mid-run (exit {proc.returncode})", proc.returncode, out, stderr)
    assert not problems, "\n".join(problems)
    assert "milvus" in next(line for line in stderr.splitlines() if line.startswith("error: ")).lower()
