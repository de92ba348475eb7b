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


class EncodeError(TurboQueueError, TypeError, ValueError):
    """An event cannot be encoded with the queue's serializer; nothing of it was written.

    A TypeError and a ValueError both, so that handlers written for either keep working.
    ``index`` is its position in the ``add_many`` call (None for ``add``), ``value_type`` its type;
    the serializer's own exception is the ``__cause__``.
    """

    def __init__(self, message: str, *, index: int | None = None,
                 value_type: type | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.value_type = value_type


class DecodeError(TurboQueueError, ValueError):
    """An event read from a batch could not be decoded with the queue's serializer.

    It was set aside, not lost: ``set_aside`` is the ``invalid_...`` batch file that now holds it
    (same format, one event), ``batch`` the batch it came from and ``index`` its position there.
    The events before it were handed out first; the rest of the batch follows.
    """

    def __init__(self, message: str, *, batch: str | None = None, index: int | None = None,
                 set_aside: str | None = None) -> None:
        super().__init__(message)
        self.batch = batch
        self.index = index
        self.set_aside = set_aside
