r"""File names as rows store them: any name on disk, also one whose bytes are not UTF-8, in a reversible text form.

On Linux a file name is bytes. Python hands bytes that are not UTF-8 over as lone surrogates
(``surrogateescape``), which neither Milvus, JSON nor a UTF-8 CSV can carry, so a row's ``rel_path``
uses this *stored form* (also what reports, the CLI and the API show):

* a name that is valid UTF-8 is stored as it is, so the rows and ids of existing indexes do not change;
* any other name is its bytes with every ``\`` written ``\x5c`` and every byte that is not part of a
  UTF-8 character written ``\xNN`` (``backslashreplace``): the Latin-1 ``café.jpg`` is ``caf\xe9.jpg``.

``fs_rel_path`` reads the stored form back: text whose ``\xNN`` escapes spell bytes that are not UTF-8
can only come from the second rule. The one ambiguous case is a UTF-8 name that literally reads like an
escaped one (a file really called ``caf\xe9.jpg``, backslash and all) beside the Latin-1 file: the
folder listing refuses the latter (``ambiguous_name``) and ``resolve_rel_path`` prefers the literal file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")


def name_bytes(rel_path: str) -> bytes:
    """The raw bytes of a name as the OS gave it (``os.fsencode`` on a UTF-8 system, on any system)."""
    return rel_path.encode("utf-8", "surrogateescape")


def stored_rel_path(rel_path: str) -> str:
    """The stored (and shown) form of a name as on disk; the name itself when it is valid UTF-8."""
    try:
        raw = name_bytes(rel_path)
    except UnicodeEncodeError:  # a surrogate no file system produced: show it escaped, it names no file
        return rel_path.encode("utf-8", "backslashreplace").decode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.replace(b"\\", b"\\x5c").decode("utf-8", "backslashreplace")


def fs_rel_path(stored: str) -> str:
    """The name on disk (``surrogateescape`` str, as ``os.fsdecode`` gives it) of a stored ``rel_path``."""
    if "\\x" not in stored:
        return stored
    parts: list[bytes] = []
    pos = 0
    try:
        for match in _ESCAPE.finditer(stored):
            parts.append(stored[pos : match.start()].encode("utf-8"))
            parts.append(bytes([int(match.group(1), 16)]))
            pos = match.end()
        parts.append(stored[pos:].encode("utf-8"))
    except UnicodeEncodeError:
        return stored
    raw = b"".join(parts)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")
    return stored  # the escapes spell UTF-8: the rule above never writes that, so the text is literal


def is_ambiguous(root: Path, rel_path: str) -> bool:
    """True for a non-UTF-8 name whose stored form is also the literal name of another entry under root."""
    stored = stored_rel_path(rel_path)
    return stored != rel_path and os.path.lexists(Path(root) / stored)


def resolve_rel_path(root: Path, stored: str) -> Path:
    """``root`` joined with the file a stored ``rel_path`` names (not resolved: callers check containment)."""
    root = Path(root)
    on_disk = fs_rel_path(stored)
    if on_disk != stored and os.path.lexists(root / stored):
        return root / stored
    return root / on_disk
