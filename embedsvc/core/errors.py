"""The root of the product's own errors: a message for people, a stable code for programs, an HTTP status.

Every error embedsvc raises on purpose derives from ``EmbedsvcError`` and says its ``code`` and
``http_status`` as class attributes; the API's one handler and the CLI's one ``error:`` line read them
from here, so no table elsewhere maps classes to statuses. ``message`` is what users see (no server
paths, pids or command lines when it can reach an HTTP client); ``log_detail`` is for the server log only.
Server-side failures whose message is written for the operator (the store's, naming its file and the
process holding it) set a class-level ``public_message``: HTTP clients get that, the log gets the rest.
"""

from __future__ import annotations

import errno
from typing import ClassVar

#: The errnos that mean "no room left" (disk or quota); the store and the CLI both classify by them.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class EmbedsvcError(Exception):
    """An error the product raises on purpose (anything else reaching a user is a bug)."""

    code: ClassVar[str] = "error"
    http_status: ClassVar[int] = 400
    public_message: ClassVar[str | None] = None

    def __init__(self, message: str, *, log_detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.log_detail = log_detail

    def client_message(self) -> str:
        """What an HTTP client may read: ``public_message`` where the class has one, else the message."""
        return self.public_message or self.message

