"""Read-only views of queue folders, for the command line and monitoring: nothing here writes.

Names are read with the protocol's parse_name() and batches through the core's own SQLite
(read_batch, count_batch_rows), so that what the tools show is what producers and consumers see.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from turbo_queue._core import STATES, BatchName, count_batch_rows, owner_lock_name, parse_name, read_batch
from turbo_queue.errors import SQLiteError


@dataclass
class QueueStats:
    """A snapshot of one queue folder."""

    name: str
    path: str
    files: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    events_waiting: int = 0
    dead_events: int = 0
    oldest_ready_age_s: float | None = None
    held_by: dict[str, int] = field(default_factory=dict)
    dead_holders: list[str] = field(default_factory=list)
    ready_names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"queue": self.name, "path": self.path, "files": dict(self.files),
                "events_waiting": self.events_waiting, "dead_events": self.dead_events,
                "oldest_ready_age_s": self.oldest_ready_age_s,
                "batches_held_per_consumer": dict(self.held_by), "dead_holders": list(self.dead_holders)}


def events_in_batch(folder: str, b: BatchName) -> int:
    """Events in a ready_ or dead_ batch: from its name when it carries the count (ours do), else counted
    (0 when it cannot be read: a consumer will quarantine it)."""
    if b.events is not None:
        return int(b.events)
    try:
        return int(count_batch_rows(os.path.join(folder, b.name)))
    except (SQLiteError, OSError):
        return 0


def ready_batches(folder: str) -> list[BatchName]:
    """The ready_ batches of a folder, oldest first."""
    found = (parse_name(name) for name in os.listdir(folder))
    return sorted((b for b in found if b is not None and b.state == "ready"), key=lambda b: b.name)


def events_ready(folder: str) -> int:
    """Events in the ready_ batches of a folder."""
    return sum(events_in_batch(folder, b) for b in ready_batches(folder))


def owner_alive(folder: str, token: str) -> bool | None:
    """True/False when the owner lock says so, None when there is no lock file. Read-only: a shared
    lock taken and dropped at once, never created."""
    return lock_held(os.path.join(folder, owner_lock_name(token)))


def lock_held(path: str) -> bool | None:
    """Whether a process holds the flock of `path` (an owner lock, the watch lock...); None when
    there is no such file to look at (missing, or a symlink planted under its name: never followed;
    a FIFO is opened without waiting for a writer). Read-only: a shared lock taken and dropped at once, never created."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def queue_stats(folder: str, now: float | None = None) -> QueueStats:
    now = time.time() if now is None else now
    stats = QueueStats(name=os.path.basename(os.path.normpath(folder)), path=folder)
    oldest = None
    for name in sorted(os.listdir(folder)):
        b = parse_name(name)
        if b is None:
            continue
        stats.files[b.state] += 1
        if b.state == "ready":
            stats.ready_names.append(name)
            stats.events_waiting += events_in_batch(folder, b)
            if b.epoch is not None and (oldest is None or b.epoch < oldest):
                oldest = b.epoch
        elif b.state == "dead":
            stats.dead_events += events_in_batch(folder, b)
        elif b.state == "chosen":
            holder = b.owner if b.owner is not None else "(pure-Python consumer)"
            stats.held_by[holder] = stats.held_by.get(holder, 0) + 1
    for holder in stats.held_by:
        if not holder.startswith("(") and owner_alive(folder, holder) is not True:
            stats.dead_holders.append(holder)
    stats.oldest_ready_age_s = None if oldest is None else max(0.0, now - oldest)
    return stats


def queue_folders(root: str, queue: str | None = None) -> list[str]:
    """The queue folders under root (or the one named); raises FileNotFoundError naming what is
    missing."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no such folder: {root}")
    if queue is not None:
        path = os.path.join(root, queue)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no queue {queue!r} in {root} (no folder {path})")
        return [path]
    return sorted(os.path.join(root, d) for d in os.listdir(root)
                  if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def peek_rows(folder: str, limit: int) -> Iterator[bytes]:
    """The stored values of the oldest ready batches, without claiming or changing anything."""
    left = limit
    for b in ready_batches(folder):
        if left <= 0:
            return
        try:
            values = read_batch(os.path.join(folder, b.name), left)
        except (SQLiteError, OSError):
            continue  # claimed and deleted meanwhile, or unreadable: a consumer will quarantine it
        left -= len(values)
        yield from values
