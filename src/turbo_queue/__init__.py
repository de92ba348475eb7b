"""turbo-queue: a fast, crash-safe, multi-process queue of events in SQLite batch files.

Drop-in for the pure-Python ``turbo-queue`` package: same classes, properties and files on disk.
"""

from turbo_queue._core import (
    DURABILITY,
    SERIALIZERS,
    SQLITE_VERSION,
    Dequeue,
    Enqueue,
    Startup,
    recover_folder,
)
from turbo_queue._mpqueue import Queue
from turbo_queue.errors import (
    CorruptBatchError,
    DecodeError,
    EventTooLargeError,
    SQLiteError,
    TurboQueueError,
)

# The pure-Python package's spellings (0.5) name the same classes as its 0.8 spellings.
enqueue = Enqueue
dequeue = Dequeue
startup = Startup

__version__ = "1.0.0.dev0"

__all__ = [
    "DURABILITY",
    "SERIALIZERS",
    "SQLITE_VERSION",
    "CorruptBatchError",
    "DecodeError",
    "Dequeue",
    "Enqueue",
    "EventTooLargeError",
    "Queue",
    "SQLiteError",
    "Startup",
    "TurboQueueError",
    "dequeue",
    "enqueue",
    "recover_folder",
    "startup",
]
