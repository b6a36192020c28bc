"""The base of the service's own errors: a message for people and a stable code for programs."""

from __future__ import annotations


class CodedError(ValueError):
    """An error a client caused; ``code`` is a stable machine-readable tag (the API maps it to a status)."""

    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
