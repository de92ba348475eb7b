"""Exceptions raised by turbo_queue.

File-system failures are raised as the built-in ``OSError`` family (``PermissionError``,
``FileNotFoundError``, ``OSError`` with ``errno.ENOSPC`` ...) with the file's path in
``filename`` and in the message, so existing ``except OSError`` handlers keep working.
"""

from __future__ import annotations


class TurboQueueError(Exception):
    """Base class of the errors turbo_queue raises that are not file-system errors."""


class SQLiteError(TurboQueueError):
    """SQLite reported an error that is neither a file-system error nor corruption.

    ``code`` is SQLite's extended result code, ``path`` the batch file concerned.
    """

    def __init__(self, message: str, code: int = 0, path: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.path = path


class CorruptBatchError(SQLiteError):
    """A batch file is not a readable SQLite database (corrupt, truncated, or not SQLite)."""


class EventTooLargeError(TurboQueueError, ValueError):
    """One event is larger than SQLite can store in one value; nothing was written."""


class DecodeError(TurboQueueError, ValueError):
    """An event read from a batch could not be decoded with the queue's serializer."""
