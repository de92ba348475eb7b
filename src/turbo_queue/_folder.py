"""Read-only views of queue folders, for the command line and monitoring: nothing here writes."""

from __future__ import annotations

import fcntl
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import quote

from turbo_queue._core import events_in_name

_OWNER_SUFFIX = re.compile(r"_([0-9a-f]{12})$")
_EPOCH = re.compile(r"^(?:ready|chosen|loading|load|unload)_(\d+)_")
STATES = ("loading", "ready", "chosen", "invalid")


@dataclass
class QueueStats:
    """A snapshot of one queue folder."""

    name: str
    path: str
    files: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    events_waiting: int = 0
    oldest_ready_age_s: float | None = None
    held_by: dict[str, int] = field(default_factory=dict)
    dead_holders: list[str] = field(default_factory=list)
    ready_names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"queue": self.name, "path": self.path, "files": dict(self.files),
                "events_waiting": self.events_waiting, "oldest_ready_age_s": self.oldest_ready_age_s,
                "batches_held_per_consumer": dict(self.held_by), "dead_holders": list(self.dead_holders)}


def count_rows(path: str) -> int:
    """Rows of a batch, read-only (for names that do not carry their count)."""
    import sqlite3  # only here: importing turbo_queue must not load the system's SQLite

    try:
        con = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True)
        try:
            return int(con.execute("SELECT count(*) FROM logs").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def events_in_batch(folder: str, name: str) -> int:
    """Events in a ready_ batch: from its name when it carries the count (ours do), else counted."""
    n = events_in_name(name)
    return n if n is not None else count_rows(os.path.join(folder, name))


def owner_alive(folder: str, token: str) -> bool | None:
    """True/False when the owner lock says so, None when there is no lock file. Read-only: a shared
    lock taken and dropped at once, never created."""
    path = os.path.join(folder, f".owner_{token}.lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
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
        if name.endswith(("-journal", "-wal", "-shm")) or name.startswith("."):
            continue
        state = name.split("_", 1)[0]
        state = {"load": "loading", "unload": "chosen"}.get(state, state)
        if state not in STATES:
            continue
        if state == "ready" and name.endswith("_temp_hold"):
            state = "chosen"  # the pure-Python version's claim in progress
        stats.files[state] += 1
        if state == "ready":
            stats.ready_names.append(name)
            stats.events_waiting += events_in_batch(folder, name)
            m = _EPOCH.match(name)
            if m and (oldest is None or int(m.group(1)) < oldest):
                oldest = int(m.group(1))
        elif state == "chosen":
            m = _OWNER_SUFFIX.search(name)
            holder = m.group(1) if m else "(pure-Python consumer)"
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
    import sqlite3

    left = limit
    for name in queue_stats(folder).ready_names:
        if left <= 0:
            return
        try:
            con = sqlite3.connect(f"file:{quote(os.path.join(folder, name))}?mode=ro", uri=True)
        except sqlite3.Error:
            continue
        try:
            for (value,) in con.execute("SELECT log_data FROM logs LIMIT ?", (left,)):
                left -= 1
                if isinstance(value, str):
                    value = value.encode()
                elif not isinstance(value, bytes):
                    value = repr(value).encode()  # numbers stored by the pure-Python version
                yield value
        except sqlite3.Error:
            continue  # claimed and deleted meanwhile, or unreadable: a consumer will quarantine it
        finally:
            con.close()
