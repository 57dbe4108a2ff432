"""The one error shape Tongke uses where a client must be told what went wrong."""

from __future__ import annotations


class CodedError(Exception):
    """A machine-readable code (protocol error codes) and a message for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
