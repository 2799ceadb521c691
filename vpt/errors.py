"""User-facing errors.

Anything the user can fix (a bad file, a wrong column, a missing option) raises :class:`VptError` with one line that
says what is wrong and what to do. The command line prints it on stderr as ``vpt: error: ...`` and exits with code 2;
no traceback unless ``--debug``.
"""

from __future__ import annotations


class VptError(Exception):
    """An error the user can fix; ``str(error)`` is the one-line message."""

    exit_code = 2


class SchemaError(VptError):
    """A table does not match its declared schema."""


class VideoReadError(VptError):
    """A video file is missing, empty, truncated or not a video."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
