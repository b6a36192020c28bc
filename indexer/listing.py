"""What a folder holds, under one entry policy shared by the listing and the reader (CLI and API jobs alike).

The policy, checked with ``lstat``/``stat`` before anything is opened:

* a regular file is a candidate;
* a symlink is followed only when its target resolves inside the root (``realpath``); one resolving
  outside is ``outside_root`` and never read, whatever its target; a dangling one is
  ``dangling_symlink`` and a loop ``symlink_loop``;
* a FIFO, socket or device is ``special_file`` and never opened;
* a sub-folder that cannot be listed is ``unreadable_folder``; a symlink to a folder inside the root is
  not descended (the folder's files are listed at their real path), one to a folder outside is
  ``outside_root``;
* a name that is not UTF-8 is listed like any other (see ``embedsvc.paths``), except when its stored form
  is the literal name of another entry (``ambiguous_name``).

Hidden files and folders (``.git``, ``.cache``...) are skipped, as before. Every refusal is an
``EntryFailure`` that the runner lists in the failures report and counts as failed (``--strict``).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from embedsvc.paths import is_ambiguous, stored_rel_path


@dataclass(frozen=True)
class EntryFailure:
    """An entry of the folder that is listed but not read: its name as on disk, a reason code, a sentence."""

    rel_path: str
    reason: str
    detail: str


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def check_entry(root: Path, path: Path) -> tuple[str, str] | None:
    """``(reason, detail)`` when the policy above refuses ``path`` (under resolved ``root``); None for a file."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return "unreadable", f"cannot stat file ({exc.strerror or exc})"
    if stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "symlink_loop", "symbolic link loop: not followed"
            target = os.path.realpath(path)
            if not _inside(target, str(root)):
                return "outside_root", "symbolic link to a path outside the indexed folder: not read"
            return "dangling_symlink", f"symbolic link to a missing file ({exc.strerror or exc})"
    if not _inside(os.path.realpath(path), str(root)):  # a link, or a folder on the way swapped for one
        return "outside_root", "symbolic link to a file outside the indexed folder: not read"
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISDIR(st.st_mode):
        return "special_file", "a folder where a file was expected: not read"
    kind = (
        "named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode)
        else "socket" if stat.S_ISSOCK(st.st_mode)
        else "device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
        else "special file"
    )
    return "special_file", f"{kind}, not a regular file: never opened"


def read_regular_file(root: Path, rel_path: str) -> bytes:
    """The bytes of ``root / rel_path`` after the entry policy allows it; ``EntryRefused`` otherwise.

    The check runs again here because the folder may change between listing and reading; the file is
    opened non-blocking and checked with ``fstat``, so even a FIFO swapped in meanwhile cannot hang a worker.
    """
    path = Path(root) / rel_path
    refused = check_entry(Path(root), path)
    if refused is not None:
        raise EntryRefused(*refused)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise EntryRefused("special_file", "not a regular file any more: not read")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


class EntryRefused(OSError):
    """The entry policy refused a file at read time (``reason``, ``detail``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def list_files(root: Path, top: Path | None = None) -> tuple[list[str], list[EntryFailure]]:
    """(rel paths of the regular files, refused entries) under ``top`` (default ``root``), each sorted.

    ``root`` must be resolved; rel paths are POSIX, relative to ``root``, names as on disk.
    """
    root = Path(root)
    top = Path(top) if top is not None else root
    files: list[str] = []
    failures: list[EntryFailure] = []

    def rel(path: str | Path) -> str:
        return Path(path).relative_to(root).as_posix()

    def folder_error(exc: OSError) -> None:
        where = rel(exc.filename) if exc.filename is not None else "."
        failures.append(EntryFailure(where, "unreadable_folder", f"cannot list folder ({exc.strerror or exc})"))

    for dirpath, dirnames, filenames in os.walk(top, onerror=folder_error, followlinks=False):
        kept = []
        for name in sorted(dirnames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if os.path.islink(path):
                if not _inside(os.path.realpath(path), str(root)):
                    failures.append(
                        EntryFailure(rel(path), "outside_root", "symbolic link to a folder outside the indexed folder")
                    )
                continue  # inside the root: its files are listed at their real path
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            refused = check_entry(root, path)
            if refused is None and is_ambiguous(root, rel(path)):
                refused = ("ambiguous_name", f"its readable form {stored_rel_path(name)!r} is another file's name")
            if refused is not None:
                failures.append(EntryFailure(rel(path), *refused))
            else:
                files.append(rel(path))
    return sorted(files), sorted(failures, key=lambda f: f.rel_path)
