"""Milvus Lite ownership: one process starts a ``.db`` file's embedded server, others share it.

Why the Lite owner file: Milvus Lite runs a private server process per ``.db`` and lets only one
process start it (a second one fails with pymilvus' bare "Open local milvus failed"). That server
speaks ordinary gRPC on a unix socket, so other processes can share it. The process that starts it
(the *owner*) writes ``<db>.owner.json`` (pid, owner, command, since, socket URI) and removes it on
close/exit. Another process (a *guest*, e.g. the indexer CLI while the search service runs) finds
the live owner and connects to the owner's socket instead of opening the file. If the owner does
not share (``share_lite=False``), lives on another host, or is not an embedsvc process, the guest
gets ``DatabaseInUseError`` naming the holder. Owner files of dead processes are ignored. When the
owner goes away, a guest notices (dead pid / missing socket, or a failed call) and takes the file
over itself, so "indexer first, service second, indexer exits" keeps the service working.

``Store`` uses ``check_lite_path``, ``open_lite``, ``release_lite``, ``owner_gone`` and ``describe_owner``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from embedsvc.store.errors import DatabaseInUseError, StoreError
from embedsvc.store.naming import now_iso

log = logging.getLogger(__name__)

_LITE_NAME = re.compile(r"^[A-Za-z0-9.\-_]+$")  # milvus_lite's own rule for the file name (max 36)


def check_lite_path(uri: str) -> Path:
    """The absolute ``.db`` path of a Lite URI, its folder created; StoreError for a name Lite refuses."""
    db = Path(uri).expanduser().absolute().resolve()
    if db.suffix != ".db":
        raise StoreError(f"Milvus Lite URI must end in .db, got {uri!r} (or use http://host:19530)")
    if not _LITE_NAME.match(db.name) or len(db.name) > 36:
        raise StoreError(f"Milvus Lite file name {db.name!r} must match [A-Za-z0-9._-]+ and be at most 36 characters")
    db.parent.mkdir(parents=True, exist_ok=True)
    return db


def _proc_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, to tell a live owner from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces/parens: split after the last ')'. starttime is field 22.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _proc_command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)[:300] or "?"


def _pid_alive(pid: int, start_ticks: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if start_ticks is not None:
        current = _proc_start_ticks(pid)
        if current is not None and current != start_ticks:
            return False  # the pid was reused by another process
    return True


def _owner_file(db: Path) -> Path:
    return db.with_name(db.name + ".owner.json")


def _lock_file(db: Path) -> Path:
    return db.with_name(f".{db.name}.lock")  # where milvus_lite's Server takes its lock


def _read_owner(db: Path) -> dict[str, Any] | None:
    """The live owner recorded next to ``db``, or None (missing, unreadable or stale file)."""
    path = _owner_file(db)
    try:
        info = json.loads(path.read_text())
        pid = int(info["pid"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("Ignoring unreadable Milvus Lite owner file %s", path)
        return None
    if info.get("host") not in (None, socket.gethostname()):
        return info  # cannot check a pid on another host: assume it is alive
    if not _pid_alive(pid, info.get("pid_start")):
        log.info("Ignoring stale Milvus Lite owner file %s (pid %d is gone)", path, pid)
        return None
    return info


def _lock_holders(db: Path) -> list[int]:
    """Pids holding milvus_lite's lock on ``db`` per /proc/locks (for processes without an owner file)."""
    try:
        st = os.stat(_lock_file(db))
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids: list[int] = []
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a waiter, not a holder
            continue
        if len(parts) >= 6 and parts[5] == key and parts[4].isdigit():
            pids.append(int(parts[4]))
    return sorted(set(pids))


def describe_owner(info: dict[str, Any]) -> str:
    return (
        f"{info.get('owner', '?')} (pid {info.get('pid', '?')} on {info.get('host', '?')}, "
        f"command {info.get('command', '?')!r}, since {info.get('started_at', '?')})"
    )


@dataclass
class _LiteHandle:
    """A Lite server this process started, shared by every Store of this process on that file."""

    db: Path
    uri: str
    refs: int
    pid: int
    server: Any  # milvus_lite.server.Server


_lite_lock = threading.Lock()
_owned: dict[Path, _LiteHandle] = {}


def _write_owner(db: Path, uri: str, owner: str, share: bool) -> None:
    pid = os.getpid()
    info = {
        "pid": pid,
        "pid_start": _proc_start_ticks(pid),
        "host": socket.gethostname(),
        "owner": owner,
        "command": _proc_command(pid),
        "started_at": now_iso(),
        "uri": uri,
        "shared": share,
        "db": str(db),
    }
    path = _owner_file(db)
    tmp = path.with_name(f".{path.name}.{pid}.tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, path)  # atomic: readers never see half a file


def _remove_owner_file(db: Path) -> None:
    path = _owner_file(db)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if int(json.loads(path.read_text())["pid"]) == os.getpid():
            path.unlink()


def release_lite(db: Path) -> None:
    """Drop one reference; the last one removes the owner file and stops the Lite server."""
    with _lite_lock:
        handle = _owned.get(db)
        if handle is None or handle.pid != os.getpid():
            return
        handle.refs -= 1
        if handle.refs > 0:
            return
        del _owned[db]
        _remove_owner_file(db)
        _defuse(handle.server)
        handle.server.stop()  # unlocks the file; the Lite server process then exits by itself
        log.info("Stopped Milvus Lite server for %s", db)


@atexit.register
def _release_all_lite() -> None:
    for db, handle in list(_owned.items()):
        if handle.pid == os.getpid():
            handle.refs = 1
            with contextlib.suppress(Exception):
                release_lite(db)


def _defuse(server: Any) -> None:
    """Stop milvus_lite's ``Server.stop()`` from deleting the lock file.

    milvus-lite 2.5.1 unlinks ``.<db>.lock`` in ``stop()``, which also runs (via ``__del__``) after a
    *failed* start, i.e. while another process holds that lock. The next opener then creates a fresh
    lock file, locks it and starts a second server on the same .db (measured). Pointing the attribute
    at a path that never exists keeps the lock file; a leftover lock file is harmless.
    """
    server._lock_path = str(Path(server._lock_path).with_name(".embedsvc-never-exists"))


def _start_lite_server(db: Path) -> Any:
    """Start milvus_lite's server for ``db``; None when the file is locked by another process."""
    with warnings.catch_warnings():  # milvus_lite 2.5.1 imports the deprecated pkg_resources
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        from milvus_lite.server import Server

    server = Server(str(db))
    if not server.init():
        _defuse(server)
        raise StoreError(f"Milvus Lite binary not found; cannot open {db}")
    try:
        started = server.start()  # locks .<db>.lock and hands its path to the Lite binary
    finally:
        _defuse(server)  # stop(), now or from __del__, must never unlink the lock file
    if not started:
        server.stop()
        return None
    return server


def open_lite(
    db: Path, owner: str, share: bool, wait: float
) -> tuple[str, Literal["owner", "guest"], dict[str, Any] | None]:
    """Return (gRPC URI, role, owner info if guest) for ``db``: start its Lite server, or join the live owner's one.

    Retries for ``wait`` seconds while the file is locked by a process that has not (yet) written an
    owner file, e.g. an owner that is starting or a previous owner whose server is still stopping.
    """
    deadline = time.monotonic() + wait
    while True:
        with _lite_lock:
            handle = _owned.get(db)
            if handle is not None and handle.pid == os.getpid():
                handle.refs += 1
                return handle.uri, "owner", None
        info = _read_owner(db)
        if info is not None and info.get("pid") != os.getpid():
            return _join_owner(db, info), "guest", info
        with _lite_lock:
            server = _start_lite_server(db)
            if server is not None:
                uri = server.uds_path
                _owned[db] = _LiteHandle(db=db, uri=uri, refs=1, pid=os.getpid(), server=server)
                _write_owner(db, uri, owner, share)
                log.info("Started Milvus Lite server for %s at %s (owner %s)", db, uri, owner)
                return uri, "owner", None
        if time.monotonic() >= deadline:
            holders = _lock_holders(db)
            who = ", ".join(f"pid {p} ({_proc_command(p)!r})" for p in holders) or "another process"
            raise DatabaseInUseError(
                f"Milvus Lite database {db} is in use by {who}, which did not publish a shareable "
                f"server ({_owner_file(db).name} missing). Stop that process, or point MILVUS_URI at a "
                "Milvus server so several processes can use it.",
                {"pids": holders, "commands": [_proc_command(p) for p in holders]},
            )
        time.sleep(0.3)


def _join_owner(db: Path, info: dict[str, Any]) -> str:
    who = describe_owner(info)
    if not info.get("shared", False):
        raise DatabaseInUseError(
            f"Milvus Lite database {db} is in use by {who}, which does not share it. Stop it, or use a "
            "Milvus server (MILVUS_URI) for concurrent access.",
            info,
        )
    if info.get("host") != socket.gethostname():
        raise DatabaseInUseError(
            f"Milvus Lite database {db} is in use by {who} on another host; its server is not reachable from here.",
            info,
        )
    uri = str(info.get("uri", ""))
    sock = uri.removeprefix("unix:")
    if not uri.startswith("unix:") or not Path(sock).exists():
        raise DatabaseInUseError(
            f"Milvus Lite database {db} is in use by {who}; its socket {sock or '?'} is not visible from "
            "this process (different /tmp?).",
            info,
        )
    log.info("Milvus Lite database %s is owned by %s; sharing its server at %s", db, who, uri)
    return uri


def owner_gone(info: dict[str, Any]) -> bool:
    """Whether the owner a guest joined (``info`` from its owner file) went away: socket gone or pid dead."""
    sock = str(info.get("uri", "")).removeprefix("unix:")
    return not Path(sock).exists() or not _pid_alive(int(info["pid"]), info.get("pid_start"))
