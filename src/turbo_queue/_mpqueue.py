"""`turbo_queue.Queue`: the interface of `multiprocessing.Queue` over turbo-queue's batch files."""

from __future__ import annotations

import fcntl
import logging
import os
import queue as _queue
import shutil
import tempfile
import threading
import time
import weakref
from multiprocessing import util as _mp_util
from typing import Any, Iterable, Iterator, Literal, cast

from turbo_queue._core import Dequeue, Enqueue
from turbo_queue._folder import events_ready

logger = logging.getLogger("turbo_queue")
_EMPTY = object()
# Puts per second from which a batch keeps filling past `latency` (see Queue): below it a batch's
# fixed cost is a small share (docs/design.md has the arithmetic and the measurement).
FAST_PUTS = 100_000
_live: "weakref.WeakSet[Queue]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for q in list(_live):
        q._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_PRIVATE_PREFIX = "turbo-queue-"
# Held (a shared flock) while they live by the process that made a private folder and by every
# process that uses it (forked children inherit it, others take it when they unpickle the queue).
_CREATOR_LOCK = ".creator.lock"
# The descriptors of those locks by folder, kept open for the process's life.
_creator_locks: dict[str, int] = {}


def _hold_private_folder(path: str, create: bool) -> None:
    if path in _creator_locks:
        return
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL if create else os.O_RDONLY | os.O_NOFOLLOW
    try:
        fd = os.open(os.path.join(path, _CREATOR_LOCK), flags, 0o600)
    except FileNotFoundError:
        return  # made by a version without the lock
    fcntl.flock(fd, fcntl.LOCK_SH)
    _creator_locks[path] = fd


def _private_folder() -> str:
    # A private queue lives no longer than the process that made it, so it needs no disk: on Linux
    # it goes to /dev/shm (memory, like multiprocessing's own shared memory) when that is writable.
    shm = "/dev/shm"
    where = shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else tempfile.gettempdir()
    _remove_abandoned_private_folders(where)
    path = tempfile.mkdtemp(prefix=_PRIVATE_PREFIX, dir=where)
    _hold_private_folder(path, True)
    return path


def _remove_abandoned_private_folders(where: str) -> None:
    """Private folders whose creator was killed (SIGKILL, SIGTERM: no exit handler ran) are removed
    by the next private Queue made there: this user's, once no process that used them lives."""
    try:
        names = os.listdir(where)
    except OSError:
        return
    for name in names:
        if not name.startswith(_PRIVATE_PREFIX):
            continue
        path = os.path.join(where, name)
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue
            fd = os.open(os.path.join(path, _CREATOR_LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # another user's, or made by a version without the lock: left alone
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a process that uses it still lives
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        logger.info("turbo_queue: removed the private queue folder %s of a process that was killed", path)


def _remove_private_folder(path: str, pid: int, handles: list[Any]) -> None:
    if os.getpid() == pid:
        for handle in handles:  # this process's own producer and consumer, first
            try:
                handle.close()
            except Exception:
                pass
        shutil.rmtree(path, ignore_errors=True)


class Queue:
    """A process-shared FIFO queue with the methods of ``multiprocessing.Queue``.

    ``path=None`` makes a private temporary folder, removed by the creating process when it exits
    (after multiprocessing has joined its children). A given ``path`` (a folder; its parent is the
    ``root_path`` and its name the ``queue_name`` of the enqueue/dequeue API) keeps events on disk
    across restarts.

    Each process opens its own producer and consumer on first use, so the object can be handed to a
    ``Process``, a ``Pool`` initializer or a ``ProcessPoolExecutor`` under fork, spawn or forkserver.

    Any picklable object can be put. With the default ``serializer="auto"``, plain data (dicts with
    str keys, lists, str, int, float, bool, None) travels as JSON, about three times cheaper than
    pickle both ways, and comes back exactly as pickle would give it back; anything else is pickled.

    Batching adapts to load: a partial batch is published ``latency`` seconds after its first event,
    so a lone ``put`` reaches a waiting ``get`` within milliseconds. While this process puts
    ``FAST_PUTS`` (100,000) events/s or more, or while published batches wait unclaimed (consumers
    are behind), batches keep filling (to ``max_events_per_file``, or for at most ``max_linger``
    seconds) and travel whole: a batch's fixed cost then stays a small share of the CPU.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, maxsize: int = 0,
                 serializer: Any = "auto", max_events_per_file: int = 10_000,
                 latency: float = 0.001, max_linger: float = 0.02,
                 durability: Literal["process", "os"] = "process", mode: int | None = None,
                 max_attempts: int = 3) -> None:
        if type(maxsize) is not int or maxsize < 0:
            raise ValueError(f"turbo_queue: maxsize must be an integer >= 0, not {maxsize!r}")
        if type(latency) not in (int, float) or not 0 < latency < float("inf"):
            raise ValueError(f"turbo_queue: latency must be a number of seconds > 0, not {latency!r}")
        self._owner_pid = os.getpid()
        self._private = path is None
        folder = _private_folder() if path is None else os.fspath(path)
        self._folder = os.path.abspath(folder)
        self._maxsize = maxsize
        self._settings = dict(serializer=serializer, max_events_per_file=max_events_per_file,
                              latency=latency, max_linger=max_linger, durability=durability,
                              mode=mode, max_attempts=max_attempts)
        self._latency = latency
        # Validate every setting now, in the creating process, not on first use somewhere else.
        Enqueue(root_path=os.path.dirname(self._folder), queue_name=os.path.basename(self._folder),
                serializer=serializer, max_events_per_file=max_events_per_file,
                max_batch_age=latency, durability=durability, max_linger=max_linger, mode=mode)
        Dequeue(max_attempts=max_attempts)
        self._reset()
        if self._private:
            # At exit (exitpriority < 0: after multiprocessing joined this process's children), or
            # when the queue is garbage-collected in the process that made it.
            _mp_util.Finalize(self, _remove_private_folder,
                              args=(self._folder, self._owner_pid, self._handles), exitpriority=-10)

    def _reset(self) -> None:
        # Called in a new process (unpickled, or forked: see _after_fork_in_child): it opens its own
        # producer and consumer on first use.
        self._pid = os.getpid()
        _live.add(self)
        self._producer: Enqueue | None = None
        self._consumer: Dequeue | None = None
        self._events: Iterator[Any] | None = None
        self._handles: list[Any] = []
        # Like multiprocessing.Queue, usable from several threads: one consumer, one at a time.
        self._get_lock = threading.Lock()
        self._closed = False
        self._room = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self._folder, "maxsize": self._maxsize, "settings": self._settings,
                "owner_pid": self._owner_pid, "private": self._private}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._folder = state["folder"]
        self._maxsize = state["maxsize"]
        self._settings = state["settings"]
        self._latency = self._settings["latency"]
        self._owner_pid = state["owner_pid"]
        self._private = state["private"]
        if self._private:
            _hold_private_folder(self._folder, False)
        self._reset()

    def __repr__(self) -> str:
        return f"<turbo_queue.Queue {self._folder!r} maxsize={self._maxsize}>"

    # -- lazily opened per process -------------------------------------------------------------

    def _closed_error(self) -> ValueError:
        return ValueError(f"Queue {self!r} is closed")

    def _open_producer(self) -> Enqueue:
        s = self._settings
        producer = Enqueue(root_path=os.path.dirname(self._folder),
                           queue_name=os.path.basename(self._folder), serializer=s["serializer"],
                           max_events_per_file=s["max_events_per_file"],
                           max_batch_age=s["latency"], max_ready_files=10**9,
                           durability=s["durability"], max_linger=s["max_linger"],
                           linger_rate=FAST_PUTS, mode=s.get("mode"))
        self._producer = producer
        self._handles.append(producer)
        return producer

    def _open_consumer(self) -> Dequeue:
        self._consumer = Dequeue(root_path=os.path.dirname(self._folder),
                                 queue_name=os.path.basename(self._folder),
                                 serializer=self._settings["serializer"], wait_timeout=0,
                                 keep_delivered=True, mode=self._settings.get("mode"),
                                 max_attempts=self._settings.get("max_attempts", 3))
        self._handles.append(self._consumer)
        self._events = self._consumer.get(_EMPTY)
        return self._consumer

    # -- put -----------------------------------------------------------------------------------

    def _wait_for_room(self, n: int, block: bool, timeout: float | None) -> None:
        if not self._maxsize:
            return
        self._room -= n
        if self._room >= 0:
            return
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        pause = 0.001
        while True:
            self._room = self._maxsize - self.qsize() - n
            if self._room >= 0:
                return
            if not block or (deadline is not None and time.monotonic() >= deadline):
                self._room = 0
                raise _queue.Full
            time.sleep(pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.02)

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put obj into the queue; with maxsize, block (or raise queue.Full) while it is full."""
        if self._closed:
            raise self._closed_error()
        if self._maxsize:
            self._wait_for_room(1, block, timeout)
        producer = self._producer or self._open_producer()
        producer.add(obj)

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, False)

    def put_many(self, objs: Iterable[Any]) -> int:
        """Put every object of an iterable (blocking while full); returns how many."""
        if self._closed:
            raise self._closed_error()
        items = list(objs)
        self._wait_for_room(len(items), True, None)
        return (self._producer or self._open_producer()).add_many(items)

    # -- get -----------------------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return an item; block until one is available (or raise queue.Empty)."""
        if block and timeout is None:
            # The common call, inlined: an event of the claimed batch is right there.
            with self._get_lock:
                events = self._events
                if events is None:
                    return self._get(True, None)
                item = next(events)
                return item if item is not _EMPTY else self._wait_for_item(events, True, None)
        if not self._get_lock.acquire(block, -1 if timeout is None or not block else max(0.0, timeout)):
            raise _queue.Empty
        try:
            return self._get(block, timeout)
        finally:
            self._get_lock.release()

    def _get(self, block: bool, timeout: float | None) -> Any:
        events = self._events
        if events is None:
            if self._closed:
                raise self._closed_error()
            self._open_consumer()
            events = cast(Iterator[Any], self._events)
        item = next(events)
        return item if item is not _EMPTY else self._wait_for_item(events, block, timeout)

    def _wait_for_item(self, events: Iterator[Any], block: bool, timeout: float | None) -> Any:
        # Nothing was ready at the first look: wait (on the folder's inotify watch) for a batch.
        if not block:
            raise _queue.Empty
        consumer = cast(Dequeue, self._consumer)
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise _queue.Empty
            got = consumer.get_many(1, min(left, 1.0))
            if got:
                return got[0]

    def get_nowait(self) -> Any:
        return self.get(False)

    def get_many(self, max_items: int, timeout: float | None = None) -> list[Any]:
        """Up to max_items items (at least one, unless queue.Empty is raised after `timeout`);
        max_items=0 returns [] at once."""
        if type(max_items) is not int or max_items < 0:
            raise ValueError(f"turbo_queue: max_items must be an integer >= 0, not {max_items!r}")
        if max_items == 0:
            return []
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
            raise ValueError(f"turbo_queue: timeout must be a number of seconds >= 0 or None, not {timeout!r}")
        if not self._get_lock.acquire(True, -1 if timeout is None else max(0.0, timeout)):
            raise _queue.Empty
        try:
            out = [self._get(True, timeout)]
            if max_items > 1:
                out += cast(Dequeue, self._consumer).get_many(max_items - 1, 0)
            return out
        finally:
            self._get_lock.release()

    # -- size ----------------------------------------------------------------------------------

    def qsize(self) -> int:
        """Approximate number of items waiting: events in published batches and this process's
        unpublished ones. Events of a batch another process has claimed but not yet handed out are
        not counted. Like multiprocessing.Queue.qsize(), it may be stale as soon as it returns."""
        total = self._producer.pending() if self._producer is not None else 0
        try:
            return total + events_ready(self._folder)
        except FileNotFoundError:
            return total

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return bool(self._maxsize) and self.qsize() >= self._maxsize

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """This process will put and get no more: publish what it put, give back what it claimed
        but did not hand out. Other processes keep using the queue."""
        if self._closed:
            return
        with self._get_lock:
            self._close()

    def _close(self) -> None:
        self._closed = True
        if self._producer is not None:
            self._producer.close()
        if self._consumer is not None:
            self._consumer.close()
        self._events = None

    def join_thread(self) -> None:
        """Wait until what this process put is published (close() first, as with multiprocessing)."""
        if not self._closed:
            raise AssertionError("Queue.join_thread() needs the queue to be closed first")

    def cancel_join_thread(self) -> None:
        """Accepted for compatibility: events are published synchronously, so nothing is waited for
        at exit and nothing is dropped."""
