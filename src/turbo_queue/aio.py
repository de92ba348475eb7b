"""asyncio front ends of the queue: AsyncDequeue and AsyncEnqueue, which wait on the running loop.

A coroutine that waits for a batch waits on a watch of the queue's folder registered with the loop
(``add_reader``): no thread per wait and no polling. What the core does in one call is short and
runs inline (claiming a batch is a lock and a rename, reading is a chunk of at most 1,024 rows,
deleting is an unlink); decoding a long batch goes in parts with the loop let in between, and
whatever may write a whole batch (publishing, ``flush``, ``close``) runs in the loop's executor.
Delivery is the blocking classes' own: the batch is deleted only when the event after its last is
asked for, so a task cancelled or a process killed mid-batch leaves it to be delivered again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import weakref
from types import TracebackType
from typing import Any, AsyncIterator, Callable, Iterable, Literal

from turbo_queue._core import Dequeue, Enqueue, FolderWatch
from turbo_queue.errors import DecodeError, EncodeError

logger = logging.getLogger("turbo_queue")

PART = 1024  # events decoded in one call into the core before the loop gets a turn
TURN_S = 0.005  # while events flow, get() lets the loop run at least this often
HELD_RECHECK_S = 0.005  # a batch locked by a slow give-back lands no name: look again this soon
POLL_MAX_S = 0.01  # no inotify here (or none left): the longest wait between looks

_EMPTY: Any = object()
_monotonic = time.monotonic


def _deadline(timeout: float | None, default: float) -> float:
    wait = default if timeout is None else timeout
    if type(wait) not in (int, float) or not wait >= 0:  # (NaN too)
        raise ValueError(f"turbo_queue: timeout must be a number of seconds >= 0 or None, not {timeout!r}")
    return _monotonic() + wait


class _Wakeup:
    """The waiters on one watch of a folder in this process, woken together when it moves."""

    def __init__(self, watch: FolderWatch | None, folder: str) -> None:
        self._watch = watch
        self._folder = folder
        self._waiters: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = os.getpid()

    def _watch_anew(self) -> None:
        """In a forked child: the inherited watch is the parent's as well; watch on our own."""
        inherited, self._watch = self._watch, None
        self._pid, self._loop, self._waiters = os.getpid(), None, set()
        if inherited is not None:
            self._watch = _watch_or_poll(lambda: FolderWatch(self._folder, inherited.departures),
                                         self._folder)
            inherited.close()  # (this process's copy of the descriptor only)

    async def wait(self, timeout: float) -> None:
        """Return once the watch saw a ready_ batch move (a look at the folder may find it), or
        after `timeout` seconds."""
        if self._pid != os.getpid():
            self._watch_anew()
            return  # (what landed before the new watch began: look first)
        watch = self._watch
        if watch is None or watch.fileno() < 0:
            await asyncio.sleep(min(timeout, POLL_MAX_S))
            return
        if watch.moved():  # (since the caller's last look, or before: look again first)
            return
        loop = asyncio.get_running_loop()
        if self._loop is None:
            loop.add_reader(watch.fileno(), self._readable)
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(f"turbo_queue: the queue folder {self._folder} is waited on from two "
                               "event loops at once; give each loop (thread) its own process")
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.add(fut)
        timer = loop.call_later(timeout, _resolve, fut)
        try:
            await fut
        finally:
            timer.cancel()
            self._waiters.discard(fut)
            if not self._waiters and self._loop is not None:
                self._loop.remove_reader(watch.fileno())
                self._loop = None

    def _readable(self) -> None:
        try:
            moved = self._watch is None or self._watch.moved()
        except BaseException as e:  # (the watch broke: every waiter looks again and polls from now on)
            logger.warning("turbo_queue: the watch of %s failed (%s); polling it instead", self._folder, e)
            self.wake_all()
            self._drop_watch()
            return
        if moved:
            self.wake_all()

    def wake_all(self) -> None:
        for fut in self._waiters:
            _resolve(fut)

    def _drop_watch(self) -> None:
        if self._loop is not None and self._watch is not None:
            self._loop.remove_reader(self._watch.fileno())
        self._loop = None
        if self._watch is not None:
            self._watch.close()
        self._watch = None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# One watch per folder and direction in a process, shared by its consumers (an inotify instance is
# a scarce per-user resource: 128 by default). A forked child makes its own: a watch inherited
# through fork() is the parent's too, and whichever process read it first would take the other's
# wake-ups.
_wakeups: weakref.WeakValueDictionary[tuple[bytes, bool], _Wakeup] = weakref.WeakValueDictionary()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_wakeups.clear)


def _wakeup_for(queue: Dequeue | Enqueue, departures: bool) -> _Wakeup:
    folder = os.path.join(queue.root_path, queue.queue_name)
    key = (os.fsencode(os.path.abspath(folder)), departures)
    wakeup = _wakeups.get(key)
    if wakeup is None:
        watch = _watch_or_poll(lambda: queue.folder_watch(departures), folder)
        wakeup = _wakeups[key] = _Wakeup(watch, folder)
    return wakeup


def _watch_or_poll(make: Callable[[], FolderWatch], folder: str) -> FolderWatch | None:
    """make(), or None (its waiters poll) where no watch can be made, saying so once."""
    try:
        return make()
    except OSError as e:
        logger.warning("turbo_queue: cannot watch the queue folder %s (%s); its async consumers and "
                       "producers look at it every %g s at most instead", folder, e, POLL_MAX_S)
        return None


class AsyncDequeue:
    """Reads events like Dequeue (same settings, same files, same semantics) for a coroutine.

    ``await get()`` gives the next event, or `empty` (None) when none came within `timeout`
    (default ``wait_timeout``); ``async for`` gives events as they come. A batch is deleted when the
    event after its last one is asked for; an ``async with`` block left by an exception (a cancel
    included) gives the held batch back, so its events are delivered again. One consumer holds one
    batch: to work on several batches at once, use several consumers (one per worker task).
    """

    def __init__(self, proc_num: Any = None, *, root_path: str | os.PathLike[str] | None = None,
                 queue_name: str | None = None, serializer: Any = None,
                 auto_cleanup: bool | None = None, wait_timeout: float | None = None,
                 reclaim_interval: float | None = None, keep_delivered: bool | None = None,
                 mode: int | None = None, refuse_foreign_pickle: bool | None = None,
                 max_attempts: int | None = None) -> None:
        self._q = Dequeue(proc_num, root_path=root_path, queue_name=queue_name,
                          serializer=serializer, auto_cleanup=auto_cleanup,
                          wait_timeout=wait_timeout, reclaim_interval=reclaim_interval,
                          keep_delivered=keep_delivered, mode=mode,
                          refuse_foreign_pickle=refuse_foreign_pickle, max_attempts=max_attempts)
        #: Seconds get(), get_many() and get_batch() wait by default (the core never waits: the
        #: loop does).
        self.wait_timeout: float = self._q.wait_timeout
        self._q.wait_timeout = 0
        self._next = self._q.get(_EMPTY).__next__
        # Watched before the first look, so that a batch landing after that look wakes the wait.
        self._wakeup = _wakeup_for(self._q, False)
        self._parts = asyncio.Lock()  # held while a call takes a batch in parts, letting the loop in
        self._turn_at = 0.0
        self._raise_next: BaseException | None = None
        self._closed = False

    # -- taking events

    async def get(self, timeout: float | None = None, empty: Any = None) -> Any:
        """The next event; `empty` if none came within `timeout` seconds (default wait_timeout)."""
        if _monotonic() >= self._turn_at:
            await asyncio.sleep(0)  # (before taking: a cancel here has taken nothing)
            self._turn_at = _monotonic() + TURN_S
        if not self._parts.locked() and self._raise_next is None:
            event = self._next()
            if event is not _EMPTY:
                return event
        return await self._get_waiting(_deadline(timeout, self.wait_timeout), empty)

    async def _get_waiting(self, deadline: float, empty: Any) -> Any:
        while True:
            if self._parts.locked():
                async with self._parts:  # (another task is taking a batch in parts: after it)
                    pass
                continue
            self._raise_pending()
            event = self._next()
            if event is not _EMPTY:
                return event
            if not await self._wait(deadline):
                return empty

    async def get_many(self, n: int, timeout: float | None = None) -> list[Any]:
        """Up to n events of one batch, as Dequeue.get_many; [] if none came within `timeout`."""
        return await self._get_parts(n, False, _deadline(timeout, self.wait_timeout))

    async def get_batch(self, timeout: float | None = None) -> list[Any]:
        """Every remaining event of the held (or next) batch, as Dequeue.get_batch; [] if none came
        within `timeout`. The batch is deleted on the next call."""
        return await self._get_parts(2 ** 62, True, _deadline(timeout, self.wait_timeout))

    async def _get_parts(self, n: int, whole: bool, deadline: float) -> list[Any]:
        if n <= 0:
            return []
        while True:
            async with self._parts:
                self._raise_pending()
                out = self._q.get_part(min(n, PART), whole, False)
                if out:
                    return await self._rest_of_parts(out, n, whole)
            if not await self._wait(deadline):
                return []

    async def _rest_of_parts(self, out: list[Any], n: int, whole: bool) -> list[Any]:
        """The parts after the first, from the same batch, with the loop let in between. A part
        shorter than asked for ends it: the batch is used up, or (careful, see max_attempts) one
        event per call, or an event that cannot be decoded comes next."""
        want = min(n, PART)
        last = len(out)
        while last == want and len(out) < n:
            try:
                await asyncio.sleep(0)
            except BaseException:
                # Cancelled with events taken from the batch that never reach the caller: give it
                # back whole, so that they are delivered again (not lost, even with keep_delivered).
                self._q.roll_back()
                raise
            want = min(n - len(out), PART)
            try:
                part = self._q.get_part(want, whole, True)
            except DecodeError as e:  # (it is set aside: hand out what came before, raise next)
                self._raise_next = e
                break
            out += part
            last = len(part)
        return out

    def _raise_pending(self) -> None:
        error, self._raise_next = self._raise_next, None
        if error is not None:
            raise error

    async def _wait(self, deadline: float) -> bool:
        """Wait for a batch to land, at most until `deadline`; False once it passed."""
        left = deadline - _monotonic()
        if left <= 0 or self._closed:
            return False
        # Look at the folder now and then however long the wait: recovery of the batches of dead
        # consumers runs on a look (every reclaim_interval).
        step = min(left, self._q.reclaim_interval)
        if self._q.saw_held_batch:
            step = min(step, HELD_RECHECK_S)
        await self._wakeup.wait(step)
        return not self._closed

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        """The next event, however long it takes to come; the iteration ends when the consumer is
        closed."""
        while not self._closed:
            event = await self.get(math.inf, _EMPTY)
            if event is not _EMPTY:
                return event
        raise StopAsyncIteration

    # -- the held batch, and the end

    async def roll_back(self, failed: bool = False) -> bool:
        """Give the held batch back whole, as Dequeue.roll_back; False if none was held."""
        async with self._parts:
            return self._q.roll_back(failed)

    async def close(self) -> None:
        """Release the held batch (as Dequeue.close: deleted if every event of it was handed out,
        else given back) and this consumer's files. Idempotent; a waiting get() returns `empty`."""
        if self._closed:
            return
        self._closed = True
        self._wakeup.wake_all()
        async with self._parts:
            # (with keep_delivered, closing may write the events not handed out as a new batch)
            await asyncio.get_running_loop().run_in_executor(None, self._q.close)

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> AsyncDequeue:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if exc_type is not None:
            # As Dequeue's with block: a failed handler counts an attempt; a cancel or an exit
            # gives the batch back as it was.
            await self.roll_back(failed=issubclass(exc_type, Exception))
        await self.close()

    # -- what the blocking consumer tells

    @property
    def proc_num(self) -> Any:
        return self._q.proc_num

    @property
    def batch_path(self) -> str | None:
        """Path of the batch this consumer holds, or None."""
        return self._q.batch_path

    def counters(self) -> dict[str, float]:
        """As Dequeue.counters()."""
        return self._q.counters()

    def total_gets(self) -> int:
        return self._q.total_gets()

    def get_ready_length(self) -> int:
        return self._q.get_ready_length()


class AsyncEnqueue:
    """Writes events like Enqueue (same settings, same files) for a coroutine.

    ``await add(event)`` runs inline unless the event completes a batch, whose publishing runs in
    the loop's executor; ``await wait_active()`` returns when backpressure lifts.
    """

    def __init__(self, *, root_path: str | os.PathLike[str] | None = None,
                 queue_name: str | None = None, max_events_per_file: int | None = None,
                 max_ready_files: int | None = None, max_batch_age: float | None = None,
                 serializer: Any = None, durability: Literal["process", "os"] | None = None,
                 max_linger: float | None = None, linger_rate: float | None = None,
                 mode: int | None = None) -> None:
        self._q = Enqueue(root_path=root_path, queue_name=queue_name,
                          max_events_per_file=max_events_per_file, max_ready_files=max_ready_files,
                          max_batch_age=max_batch_age, serializer=serializer, durability=durability,
                          max_linger=max_linger, linger_rate=linger_rate, mode=mode)
        self._q.start()
        self._turn = asyncio.Lock()  # held while a publish runs in the executor
        self._wakeup: _Wakeup | None = None
        self._turn_at = 0.0

    async def add(self, event: Any) -> None:
        """Add one event (EncodeError, with nothing written, if it cannot be serialized)."""
        q = self._q
        if _monotonic() >= self._turn_at:
            await asyncio.sleep(0)
            self._turn_at = _monotonic() + TURN_S
        if self._turn.locked() or q.pending() + 1 >= q.max_events_per_file:
            await self._in_executor(q.add, event)  # (it publishes the batch)
        else:
            q.add(event)

    async def add_many(self, events: Iterable[Any]) -> int:
        """Add every event of an iterable, in parts with the loop let in between; returns how many.
        As Enqueue.add_many, the events before one that cannot be encoded are added first."""
        q = self._q
        n = 0
        part: list[Any] = []
        for event in events:
            part.append(event)
            if len(part) == PART:
                n = await self._add_part(part, n)
                part = []
        if part:
            n = await self._add_part(part, n)
        return n

    async def _add_part(self, part: list[Any], before: int) -> int:
        q = self._q
        try:
            if self._turn.locked() or q.pending() + len(part) >= q.max_events_per_file:
                await self._in_executor(q.add_many, part)
            else:
                q.add_many(part)
                await asyncio.sleep(0)
        except EncodeError as e:
            index = before + (e.index or 0)
            raise EncodeError(f"turbo_queue: event #{index} of add_many: {e.__cause__ or e} (the "
                              f"{index} events before it were added)", index=index,
                              value_type=e.value_type) from (e.__cause__ or e)
        return before + len(part)

    async def flush(self) -> int:
        """Publish the open batch now (in the executor); returns how many events it held."""
        result: int = await self._in_executor(self._q.flush)
        return result

    async def close(self) -> None:
        """Publish the open batch and release this producer's files. Idempotent."""
        if self._q.closed:
            return
        await self._in_executor(self._q.close)
        self._wakeup = None

    async def wait_active(self, timeout: float | None = None) -> bool:
        """Return True once the queue holds fewer than max_ready_files ready batches (backpressure
        lifted; enqueue_active is True again), or False after `timeout` seconds (None: no limit).
        Woken by the watch of the folder when a ready_ batch leaves it, not by polling."""
        q = self._q
        deadline = _deadline(timeout, math.inf)
        q.update_enqueue_active_state()
        if q.enqueue_active:
            return True
        if self._wakeup is None:
            self._wakeup = _wakeup_for(q, True)  # (watched before the count below)
        while True:
            if q.get_ready_length() < q.max_ready_files:
                q.enqueue_active = True
                return True
            left = deadline - _monotonic()
            if left <= 0:
                return False
            await self._wakeup.wait(min(left, 1.0))

    async def _in_executor(self, func: Any, *args: Any) -> Any:
        async with self._turn:
            return await asyncio.get_running_loop().run_in_executor(None, func, *args)

    @property
    def enqueue_active(self) -> bool:
        """As Enqueue.enqueue_active (see wait_active)."""
        return self._q.enqueue_active

    @property
    def closed(self) -> bool:
        return self._q.closed

    def pending(self) -> int:
        return self._q.pending()

    def counters(self) -> dict[str, int]:
        return self._q.counters()

    async def __aenter__(self) -> AsyncEnqueue:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
