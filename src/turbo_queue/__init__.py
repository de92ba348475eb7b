"""turbo-queue: a fast, crash-safe, multi-process queue of events in SQLite batch files.

Drop-in for the pure-Python ``turbo-queue`` package: same classes, properties and files on disk.
"""

from typing import TYPE_CHECKING

from turbo_queue._core import (
    DURABILITY,
    SERIALIZERS,
    SQLITE_VERSION,
    Dequeue,
    Enqueue,
    Startup,
    recover_folder,
)
from turbo_queue.errors import (
    CorruptBatchError,
    DecodeError,
    EncodeError,
    EventTooLargeError,
    SQLiteError,
    TurboQueueError,
)

if TYPE_CHECKING:
    from turbo_queue.aio import AsyncDequeue, AsyncEnqueue
    from turbo_queue._deadletters import DeadLetter, dead_letters, requeue
    from turbo_queue._mpqueue import Queue

# The pure-Python package's spellings (0.5) name the same classes as its 0.8 spellings.
enqueue = Enqueue
dequeue = Dequeue
startup = Startup

__version__ = "1.0.0.dev0"


def __getattr__(name: str) -> object:
    # Queue needs multiprocessing (and through it socket and subprocess): loaded on first use, so
    # that a process that only produces and consumes never imports them.
    if name == "Queue":
        from turbo_queue._mpqueue import Queue

        globals()["Queue"] = Queue
        return Queue
    if name in ("AsyncDequeue", "AsyncEnqueue"):  # (asyncio: loaded on first use too)
        from turbo_queue import aio

        globals()[name] = value = getattr(aio, name)
        return value
    if name in ("DeadLetter", "dead_letters", "requeue"):  # (tools: loaded on first use too)
        from turbo_queue import _deadletters

        globals()[name] = value = getattr(_deadletters, name)
        return value
    raise AttributeError(f"module 'turbo_queue' has no attribute {name!r}")

__all__ = [
    "AsyncDequeue",
    "AsyncEnqueue",
    "DURABILITY",
    "SERIALIZERS",
    "SQLITE_VERSION",
    "CorruptBatchError",
    "DeadLetter",
    "DecodeError",
    "EncodeError",
    "Dequeue",
    "Enqueue",
    "EventTooLargeError",
    "Queue",
    "SQLiteError",
    "Startup",
    "TurboQueueError",
    "dead_letters",
    "dequeue",
    "enqueue",
    "recover_folder",
    "requeue",
    "startup",
]
