"""Errors a person can act on: each names the file or field at fault."""

from __future__ import annotations


class RecordingError(Exception):
    """A recording directory is incomplete or inconsistent; the message says what and where."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
