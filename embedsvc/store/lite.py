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
import fcntl
import json
import logging
import os
import re
import socket
import struct
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from embedsvc.store.errors import (
    DatabaseInUseError,
    DiskFullError,
    StoreError,
    disk_full_as_error,
    free_bytes,
    is_disk_full,
)
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


def _proc_start_time(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), to tell a live owner from a reused pid."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _proc_command(pid: int) -> str:
    try:
        parts = psutil.Process(pid).cmdline()
    except (psutil.Error, OSError):
        return "?"
    return " ".join(parts)[:300] or "?"


def _pid_alive(pid: int, started: float | None) -> bool:
    if not psutil.pid_exists(pid):
        return False
    if started is not None:
        current = _proc_start_time(pid)
        if current is not None and abs(current - started) > 0.05:
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
    if not _pid_alive(pid, info.get("pid_started")):
        log.info("Ignoring stale Milvus Lite owner file %s (pid %d is gone)", path, pid)
        return None
    return info


def _lock_holders(db: Path) -> list[int]:
    """The pid holding milvus_lite's ``lockf`` lock on ``db`` (for processes without an owner file).

    Asked of the kernel with ``F_GETLK`` (POSIX record locks, what ``fcntl.lockf`` takes): no parsing.
    """
    try:
        fd = os.open(_lock_file(db), os.O_RDWR)
    except OSError:
        return []
    try:
        query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)  # struct flock, Linux x86-64/arm64
        l_type, _, _, _, pid = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, query))
    except OSError:
        return []
    finally:
        os.close(fd)
    return [pid] if l_type != fcntl.F_UNLCK and pid > 0 else []


#: Room a write needs beyond its payload (SQLite pages, its journal, the owner file).
WRITE_MARGIN_BYTES = 1 << 20


def ensure_free_space(db: Path, payload_bytes: int, what: str) -> None:
    """Raise ``DiskFullError`` unless ``db``'s directory has room for a write of ``payload_bytes``.

    Why check rather than wait for an error: Milvus Lite 2.5.1 acknowledges an insert that its SQLite
    file could not store ("database or disk is full" appears in its own log only); the rows stay
    searchable until the server restarts, then they are gone (measured on a 3 MB tmpfs). The store
    calls this before each write (payload twice over plus a margin) and after it (the margin only:
    less means the write itself may not have reached the disk).
    """
    free = free_bytes(db.parent)
    if free is not None and free < payload_bytes + WRITE_MARGIN_BYTES:
        raise DiskFullError(db.parent, what, log_detail=f"{free} bytes free, {payload_bytes} needed for {db.name}")


def failed_for_lack_of_space(db: Path, exc: BaseException) -> bool:
    """Whether a failed call on ``db`` is explained by a full disk: the error says so, or the directory is
    (nearly) out of room (Lite's own errors then read "internal error" or "unavailable")."""
    free = free_bytes(db.parent)
    return is_disk_full(exc) or (free is not None and free < WRITE_MARGIN_BYTES)


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
        "pid_started": _proc_start_time(pid),
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
    try:
        with disk_full_as_error(db.parent, "opening the Milvus Lite database"):
            tmp.write_text(json.dumps(info, indent=1))
            os.replace(tmp, path)  # atomic: readers never see half a file
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
                try:
                    _write_owner(db, uri, owner, share)
                except DiskFullError as exc:  # reading must still work on a full disk: serve, unshared
                    log.warning("%s; other processes cannot share %s until its owner file fits", exc.message, db)
                except BaseException:
                    server.stop()
                    raise
                _owned[db] = _LiteHandle(db=db, uri=uri, refs=1, pid=os.getpid(), server=server)
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
    return not Path(sock).exists() or not _pid_alive(int(info["pid"]), info.get("pid_started"))
