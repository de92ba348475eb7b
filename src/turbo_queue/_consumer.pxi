# The consumer: Dequeue claims the oldest ready batch, hands its events out one at a time or in lists,
# waits on the folder when none is ready, reclaims batches of dead processes, and deletes a batch only
# once every event of it was handed out and the next one asked for.

cdef object _gc_isenabled = gc.isenabled
cdef object _gc_disable = gc.disable
cdef object _gc_enable = gc.enable

cdef double _check_timeout(object timeout) except -1:
    if type(timeout) not in (int, float) or not timeout >= 0:  # (NaN is not >= 0)
        raise ValueError(f"turbo_queue: timeout must be a number of seconds >= 0 or None, not {timeout!r}")
    return timeout


class _Undecodable(Exception):
    """An event of a batch that its serializer cannot decode (inside the consumer only)."""

    def __init__(self, cause):
        self.cause = cause


cdef long _uid = os.getuid() if hasattr(os, "getuid") else -1


cdef list _runs(list indexes):
    """Sorted indexes as (first, last) runs of consecutive ones."""
    cdef list out = []
    for i in indexes:
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


cdef bint _is_pickled(int kind, bytes b):
    return kind == S_PICKLE or (kind == S_AUTO and PyBytes_GET_SIZE(b) > 0
                                and <unsigned char>PyBytes_AS_STRING(b)[0] == 0x80)


# How often a claim looks again at ready_ batches it found locked, 0.2 ms apart.
cdef enum:
    MAX_HELD_RETRIES = 50

# Consumers that may die holding a batch before the events they had in hand are set aside.
cdef int DEFAULT_MAX_ATTEMPTS = 3

# What _ensure_rows found.
cdef enum Rows:
    NOTHING_READY = 0     # no batch ready after waiting
    ROWS_AVAILABLE = 1    # rows of the claimed batch at _pos
    BATCH_EXHAUSTED = 2   # every row was handed out and auto_cleanup is off

# How far the held batch was read.
cdef enum Reading:
    READING = 0        # rows may remain
    READ_TO_END = 1    # every row was read into the chunk
    READ_FAILED = 2    # reading stopped at an error (_read_error says which): quarantined at the end

cdef class _Getter:
    """The endless iterator returned by Dequeue.get()."""
    cdef Dequeue _q
    cdef object _empty

    def __iter__(self):
        return self

    def __next__(self):
        return self._q._next(self._empty)

    def send(self, value):
        return self._q._next(self._empty)

    def close(self):
        pass


cdef class Dequeue(_QueueBase):
    """Reads events from the queue ``root_path/queue_name``, one claimed batch at a time, oldest
    batch first.

    ``get()`` returns an endless iterator: each ``next()`` gives the next event, or ``None`` when no
    batch is ready (after waiting up to ``wait_timeout`` seconds, woken within milliseconds when one
    is published). A batch file is deleted when the event after its last one is asked for, so a
    consumer that dies mid-batch leaves it to be delivered again.
    """
    cdef readonly object proc_num
    cdef bint _auto_cleanup
    cdef double _wait_timeout
    cdef double _reclaim_interval
    cdef double _next_reclaim
    cdef _Owner _owner
    cdef _Waiter _waiter
    cdef list _candidates
    cdef Py_ssize_t _next_candidate
    cdef sqlite3 *_db
    cdef sqlite3_stmt *_sel
    # The held batch's file, locked from before its claim until it is deleted or given back, or -1.
    cdef int _lock_fd
    # Its owner's uid, and how many of its rows came before the chunk in hand.
    cdef long _writer_uid
    cdef Py_ssize_t _chunk_start
    cdef bytes _path
    cdef str _name
    cdef bytes _rest
    cdef bytes _batch_folder
    cdef Reading _reading
    cdef str _read_error
    cdef _Chunk _chunk
    cdef Py_ssize_t _pos
    cdef long long _total_gets
    cdef long long _total_batch
    cdef bint _keep_delivered
    cdef bint _busy
    cdef bint _closed
    cdef bint _refuse_pickle
    # Rows before this one are handed out without a word; a careful consumer (holding a batch that
    # a consumer died with) keeps it at 0, so every event goes through _hold first.
    cdef Py_ssize_t _free_end
    cdef bint _careful
    # The (first, last) events a careful consumer said it hands out (see _hold), or None.
    cdef object _holding
    cdef int _max_attempts
    # What counters() reports besides the event and batch counts (none is on the per-event path).
    cdef double _waited_s
    cdef long long _reclaimed, _quarantined, _set_aside, _dead_lettered, _reclaim_passes
    cdef long long _waits, _empty_scans, _left_to_busy
    cdef long _seen_holding, _seen_loading  # what the last listing saw busy (see cpu_free)

    def __cinit__(self, *args, **kwargs):
        self._owner = _Owner()
        self._waiter = _Waiter()
        self._lock_fd = -1
        self._candidates = []
        self._auto_cleanup = True
        self._wait_timeout = 0.1
        self._reclaim_interval = 5.0
        self._max_attempts = DEFAULT_MAX_ATTEMPTS
        self._chunk.rows = <_Row *>malloc(CHUNK_ROWS * sizeof(_Row))
        if self._chunk.rows == NULL:
            raise MemoryError()

    def __init__(self, proc_num=None, *, root_path=None, queue_name=None, serializer=None,
                 auto_cleanup=None, wait_timeout=None, reclaim_interval=None, keep_delivered=None,
                 mode=None, refuse_foreign_pickle=None, max_attempts=None):
        self.proc_num = proc_num
        self._configure(dict(root_path=root_path, queue_name=queue_name, serializer=serializer,
                             auto_cleanup=auto_cleanup, wait_timeout=wait_timeout,
                             reclaim_interval=reclaim_interval, keep_delivered=keep_delivered,
                             mode=mode, refuse_foreign_pickle=refuse_foreign_pickle,
                             max_attempts=max_attempts))
        _live.add(self)

    def __dealloc__(self):
        free(self._chunk.rows)
        free(self._chunk.buf)
        if self._sel != NULL:
            sqlite3_finalize(self._sel)
        if self._db != NULL:
            sqlite3_close_v2(self._db)
        if self._lock_fd >= 0:
            close(self._lock_fd)

    def __del__(self):
        try:
            self.close()
        except Exception:
            logger.exception("turbo_queue: releasing the batch of a discarded dequeue failed")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            # The handler raised: an attempt that failed (an interrupt or exit is no fault of the
            # events: the batch goes back as it was).
            self.roll_back(failed=issubclass(exc_type, Exception))
        self.close()

    @property
    def auto_cleanup(self):
        """True (default): a batch is deleted when the event after its last one is asked for.
        False: the consumer stays on an exhausted batch (yielding None) until clean_up()."""
        return self._auto_cleanup

    @auto_cleanup.setter
    def auto_cleanup(self, value):
        _check_bool("auto_cleanup", value)
        self._auto_cleanup = value

    @property
    def refuse_foreign_pickle(self):
        """True: a pickled event ("pickle", or "auto"'s pickled ones) in a batch file owned by another
        user is not unpickled (unpickling runs code of the writer's choosing) but set aside like an
        undecodable event, with a DecodeError. False (default): trust whoever can write the folder."""
        return self._refuse_pickle

    @refuse_foreign_pickle.setter
    def refuse_foreign_pickle(self, value):
        _check_bool("refuse_foreign_pickle", value)
        self._refuse_pickle = value

    @property
    def closed(self):
        return self._closed

    @property
    def max_attempts(self):
        """How many consumers may die holding a batch (or give it back with roll_back(failed=True))
        before the events they had in hand are set aside as dead letters (dead_... files, see
        turbo_queue.dead_letters) and the batch's other events are delivered. Default 3; 0: never.
        A batch's first attempt costs nothing extra; once one failed, its consumer records which
        event it hands out before it does (a rename), one event per call."""
        return self._max_attempts

    @max_attempts.setter
    def max_attempts(self, value):
        if type(value) is not int or value < 0:
            raise ValueError(f"turbo_queue: max_attempts must be an int >= 0 (0: never set events "
                             f"aside), not {value!r}")
        self._max_attempts = value

    @property
    def keep_delivered(self):
        """What close() does with a batch of which some events were handed out. False (default): it
        goes back whole, and all its events are delivered again (at least once). True: the events
        not yet handed out are written to a new batch that keeps its place in line and the old one
        is deleted, so what was handed out is not delivered again (multiprocessing.Queue's
        semantics); a crash in between duplicates them, never loses them."""
        return self._keep_delivered

    @keep_delivered.setter
    def keep_delivered(self, value):
        _check_bool("keep_delivered", value)
        self._keep_delivered = value

    @property
    def wait_timeout(self):
        """Seconds get() waits for a batch before yielding None (0 = do not wait)."""
        return self._wait_timeout

    @wait_timeout.setter
    def wait_timeout(self, value):
        if type(value) not in (int, float) or not value >= 0:
            raise ValueError(f"turbo_queue: wait_timeout must be a number of seconds >= 0, not {value!r}")
        self._wait_timeout = value

    @property
    def reclaim_interval(self):
        """Seconds between checks for batches held by dead consumers or producers."""
        return self._reclaim_interval

    @reclaim_interval.setter
    def reclaim_interval(self, value):
        if type(value) not in (int, float) or not value > 0:
            raise ValueError(f"turbo_queue: reclaim_interval must be a number of seconds > 0, not {value!r}")
        self._reclaim_interval = value

    @property
    def batch_path(self):
        """Path of the batch this consumer holds, or None."""
        return os.fsdecode(self._path) if self._db != NULL else None

    def get(self, empty=None):
        """An endless iterator over events: next() returns the next event in order, or `empty`
        (default None) when no batch is ready right now; the next next() looks again. Pass another
        `empty` (any sentinel object) when None is itself a valid event."""
        cdef _Getter g = _Getter.__new__(_Getter)
        g._q = self
        g._empty = empty
        return g

    def get_many(self, Py_ssize_t n, timeout=None):
        """Up to n events of the current batch (never spanning two batches, so that a batch is
        deleted only after every event of it was handed out and the next call is made). Returns []
        when no batch is ready after waiting `timeout` seconds (default wait_timeout). Of a batch that
        a consumer died holding, one event per call (see max_attempts)."""
        return self._get_many(n, timeout, False)

    def get_batch(self, timeout=None):
        """Every remaining event of the current (or next ready) batch, as a list; [] if none is
        ready after waiting `timeout` seconds. The batch is deleted on the next call."""
        return self._get_many(2 ** 62, timeout, True)

    def get_part(self, Py_ssize_t n, bint whole, bint continued):
        """get_many(n, timeout=0), or with `whole` get_batch(timeout=0), in parts of at most n
        events, for a caller that must not decode a whole batch in one call (an event loop). A
        `continued` part comes from the held batch only ([] once it is used up, where the next call
        would delete it and claim the next); with `whole`, the events in hand (see max_attempts) are
        those of every part since the first."""
        if continued and not self._more_in_batch():
            return []
        return self._get_many(n, 0.0, whole, continued)

    @property
    def saw_held_batch(self):
        """The last look found a ready batch locked for longer than a moment (a slow give-back):
        its unlocking lands no name in the folder, so a watcher of the folder looks again soon."""
        return self._waiter.saw_held

    cdef bint _more_in_batch(self) except -1:
        self._enter()
        try:
            if self._closed or self._db == NULL:
                return False
            if self._pos >= self._chunk.nrows and self._reading == READING:
                self._fill()
            return self._pos < self._chunk.nrows
        finally:
            self._busy = False

    cdef list _get_many(self, Py_ssize_t n, object timeout, bint whole, bint continued=False):
        cdef double wait = self._wait_timeout if timeout is None else _check_timeout(timeout)
        cdef list out = []
        cdef Py_ssize_t first
        if n <= 0:
            return out
        if self._ensure_rows(wait) != ROWS_AVAILABLE:
            return out
        first = self._chunk_start + self._pos
        if continued and whole and self._holding is not None:
            first = self._holding[0]  # (the span in hand began with the first part)
        if self._careful and not whole:
            # One event per call, recorded before it is handed out, so that a poison event is told
            # apart from the others (get_batch() promises the whole rest: recorded as a span).
            self._hold((first, first))
            n = 1
        # Building a long list of new containers would run the cyclic GC over and over (it
        # triggers on allocations, and every dict in the list stays alive): pause it meanwhile.
        # Nothing here can make a reference cycle that needs it.
        paused = n > 64 and _gc_isenabled()
        if paused:
            _gc_disable()
        try:
            self._take(out, n)
        finally:
            if paused:
                _gc_enable()
        if self._careful and whole and out:
            try:
                self._hold((first, self._chunk_start + self._pos - 1))
            except BaseException:
                self._give_back()  # not handed out: the batch goes back whole
                raise
        return out

    cdef int _take(self, list out, Py_ssize_t n) except -1:
        cdef Py_ssize_t end
        try:
            while len(out) < n:
                end = min(self._chunk.nrows, self._pos + (n - len(out)))
                while self._pos < end:
                    self._pos += 1
                    self._total_gets += 1
                    out.append(self._decode_row(&self._chunk.rows[self._pos - 1], False))
                if len(out) >= n or self._reading != READING:
                    break
                self._fill()
                if self._chunk.nrows == 0:
                    break
        except _Undecodable as bad:
            if out:
                # Hand out the events before it now; the next call sets it aside and says so.
                self._pos -= 1
                self._total_gets -= 1
                return 0
            raise self._set_aside_bad(&self._chunk.rows[self._pos - 1], bad.cause) from bad.cause
        return 0

    cdef object _next(self, object empty):
        if self._pos < self._free_end:
            self._pos += 1
            self._total_gets += 1
            return self._decode_row(&self._chunk.rows[self._pos - 1], True)
        if self._ensure_rows(self._wait_timeout) != ROWS_AVAILABLE:
            return empty
        if self._careful:
            self._hold((self._chunk_start + self._pos, self._chunk_start + self._pos))
        self._pos += 1
        self._total_gets += 1
        return self._decode_row(&self._chunk.rows[self._pos - 1], True)

    cdef object _decode_row(self, _Row *r, bint set_aside):
        """The event of row `r`. One that cannot be decoded raises DecodeError once it was set aside
        (or, without `set_aside`, _Undecodable, for the caller to decide)."""
        cdef int kind = r.kind
        cdef bytes b
        _crash_point("read")
        if kind == SQLITE_BLOB or kind == SQLITE_TEXT:
            b = PyBytes_FromStringAndSize(self._chunk.buf + r.offset, r.size)
            try:
                if self._ser == S_JSON:
                    return _json_decode(b)
                if self._refuse_pickle and self._writer_uid != _uid and _is_pickled(self._ser, b):
                    raise ValueError(f"a pickled event written by uid {self._writer_uid}, another user "
                                     f"(refused: refuse_foreign_pickle=True)")
                return _decode(self._ser, b, self._custom)
            except Exception as e:
                if not set_aside:
                    raise _Undecodable(e)
                raise self._set_aside_bad(r, e) from e
        # Values the pure-Python package stored through the json column's NUMERIC affinity.
        if kind == SQLITE_INTEGER:
            value = r.ival
        elif kind == SQLITE_FLOAT:
            value = r.dval
        else:
            return None
        if self._ser == S_JSON:
            return value
        try:
            return _decode(self._ser, repr(value).encode(), self._custom)
        except Exception as e:
            if not set_aside:
                raise _Undecodable(e)
            raise self._set_aside_bad(r, e) from e

    cdef object _set_aside_bad(self, _Row *r, object cause):
        """Set the event of row `r` (the last one handed out) aside in a batch of its own, invalid_
        ..., and return the DecodeError that says where. If that fails, the event stays in the held
        batch, not handed out, and the failure is raised."""
        cdef Py_ssize_t index = self._chunk_start + self._pos - 1
        cdef Enqueue writer
        cdef bytes target = _set_aside_path(self._batch_folder, self._rest, index)
        folder = os.fsdecode(self._batch_folder[:-1])
        try:
            writer = Enqueue(root_path=os.path.dirname(folder), queue_name=os.path.basename(folder),
                             serializer="raw", max_events_per_file=2, max_batch_age=math.inf,
                             mode=self.mode)
            try:
                writer.set_aside([_stored_bytes(r, self._chunk.buf)], target)
            finally:
                writer.close()
        except BaseException:
            self._pos -= 1
            self._total_gets -= 1
            raise
        self._total_gets -= 1  # set aside, not handed out
        self._set_aside += 1
        logger.error("turbo_queue: event %d of batch %s cannot be decoded with serializer %r (%s: %s); "
                     "set aside in %s", index, self.batch_path, self._serializer,
                     type(cause).__name__, cause, os.fsdecode(target))
        return DecodeError(
            f"turbo_queue: event {index} of batch {self.batch_path} cannot be decoded with serializer "
            f"{self._serializer!r}: {type(cause).__name__}: {cause}. It was set aside in "
            f"{os.fsdecode(target)} (same format, one event); the rest of the batch follows.",
            batch=self.batch_path, index=index, set_aside=os.fsdecode(target))

    cdef int _enter(self) except -1:
        # A consumer is not shared between threads: its SQLite handle is used without a mutex and
        # with the GIL released. Refuse a second thread cleanly instead of corrupting memory.
        if self._busy:
            raise RuntimeError("turbo_queue: this dequeue is in use by another thread; give each "
                               "thread its own dequeue, or lock around it")
        self._busy = True
        return 0

    cdef Rows _ensure_rows(self, double timeout) except *:
        """Make rows of a claimed batch available, claiming the next batch (waiting up to `timeout`
        for one) when the held one is used up."""
        self._enter()
        try:
            return self._ensure_rows_entered(timeout)
        finally:
            self._busy = False

    cdef Rows _ensure_rows_entered(self, double timeout) except *:
        cdef double deadline = -1.0, left
        if self._closed:
            raise ValueError("turbo_queue: this dequeue is closed")
        while True:
            if self._pos < self._chunk.nrows:
                return ROWS_AVAILABLE
            if self._db != NULL:
                if self._reading == READING:
                    self._fill()
                    continue
                if not self._auto_cleanup:
                    return BATCH_EXHAUSTED
                self._finish_batch()
            # (the look at the end of the wait claims what is ready: `empty` means none was)
            if self._claim(timeout <= 0 or (deadline >= 0 and tq_now() >= deadline)):
                continue
            # Nothing ready: sleep until a file lands in the folder (any file: look again, and
            # sleep on for what is left of the timeout if it was not a ready batch).
            if deadline < 0:
                deadline = tq_now() + timeout
            left = deadline - tq_now()
            if left <= 0:
                return NOTHING_READY
            if self._wait(left) == WAITED_QUIET:
                return NOTHING_READY

    cdef bint _all_handed_out(self):
        return self._reading != READING and self._pos >= self._chunk.nrows

    cdef int _fill(self) except -1:
        cdef int rc
        self._chunk_start += self._chunk.nrows
        with nogil:
            rc = _read_chunk(self._sel, &self._chunk)
        self._pos = 0
        self._free_end = 0 if self._careful else self._chunk.nrows
        if rc == SQLITE_ROW:
            return 0
        if rc == -1:
            self._reading = READ_FAILED
            self._read_error = f"out of memory after {self._total_gets} events"
            raise MemoryError(f"turbo_queue: out of memory reading {self.batch_path}")
        if rc == SQLITE_DONE:
            self._reading = READ_TO_END
            return 0
        self._reading = READ_FAILED
        self._read_error = (sqlite3_errmsg(self._db).decode("utf-8", "replace")
                            + f" (SQLite code {rc}) after {self._total_gets} events")
        return 0

    cdef bint _claim(self, bint last_look=True) except -1:
        """Claim the oldest ready batch: lock its file, then rename it. True if one was claimed.
        Before the `last_look` of a wait it may leave the ready batches to consumers busy with
        theirs (see leaves_to_busy), and wait on: the last look claims what is ready."""
        cdef bytes folder = self._folder()
        cdef bytes name, rest, chosen
        cdef int err = 0, fd
        cdef Moved moved
        cdef bint rescanned = False
        cdef int held_retries = 0
        cdef list held = []
        cdef struct_stat st
        cdef bint owned = False
        cdef long holding = self._seen_holding, loading = self._seen_loading
        if self._owner.fd < 0 or self._owner.folder != folder:
            self._owner.acquire(folder, self._file_mode, self._exact_mode)
            owned = True
        if not self._waiter.attached_to(folder):
            self._waiter.attach(folder, self._file_mode, self._exact_mode)
        self._maybe_reclaim(folder)
        if (not last_look and self._next_candidate < len(self._candidates)
                and self._waiter.leaves_kept_list()):
            self._left_to_busy += 1  # (the names of an earlier listing: its next claim lists again)
            self._candidates, self._next_candidate = [], 0
            return False
        while True:
            if self._next_candidate >= len(self._candidates):
                if not rescanned:
                    if self._waiter.nothing_to_look_at():
                        self._empty_scans += 1
                        return False
                    self._waiter.before_look()  # (before the scan: a ring after it is not missed)
                    if not last_look and self._waiter.leaves_unlisted():
                        self._left_to_busy += 1
                        self._empty_scans += 1
                        return False
                    self._candidates = scan_ready(folder, &holding, &loading)
                    self._seen_holding, self._seen_loading = holding, loading
                    rescanned = True
                    if not last_look and self._candidates and self._waiter.leaves_to_busy(holding, loading):
                        self._left_to_busy += 1  # (no report: a consumer that leaves keeps none fresh)
                        self._empty_scans += 1
                        self._candidates = []
                        return False
                elif held and held_retries < MAX_HELD_RETRIES:
                    # A ready_ batch is locked only for a moment: by its producer between the rename
                    # that publishes it and the close that follows, or by whoever gives it back.
                    held_retries += 1
                    with nogil:
                        tq_sleep(0.0002)
                    self._candidates, held = held, []
                else:
                    self._waiter.saw_held = bool(held)  # (its unlocking lands no name: look again soon)
                    self._empty_scans += 1
                    if rescanned:
                        self._waiter.after_listing(holding, loading, False)
                    return False
                self._next_candidate = 0
                continue
            name = <bytes>self._candidates[self._next_candidate]
            self._next_candidate += 1
            if not owned:  # (checked before a claim, not on every look at an empty folder)
                self._owner.acquire(folder, self._file_mode, self._exact_mode)
                owned = True
            fd = lock_batch(folder, name, &st)
            if fd == BATCH_HELD:
                held.append(name)
                continue
            if fd < 0:  # gone, or not a batch (quarantined)
                self._quarantined += fd == BATCH_QUARANTINED
                continue
            rest = _rest_of_ready(name)
            chosen = _chosen_path(folder, rest, self._owner.token.encode())
            moved = claim_batch(folder + name, chosen, &err)
            if moved != MOVED:
                close(fd)
                if moved == GONE:  # another consumer (one that locks nothing) was first
                    continue
                raise os_error(err, "claim batch", folder + name)
            self._lock_fd = fd
            self._writer_uid = st.st_uid
            self._batch_folder = folder
            _ensure_exit_hook()
            self._waiter.claimed_at = tq_now()
            self._waiter.after_listing(holding, loading, True)  # (what the listing it came from saw)
            _crash_point("claim")
            if self._open_batch(chosen, rest):
                self._total_batch += 1
                if self._next_candidate < len(self._candidates):
                    # More are ready: wake another consumer for them, where a CPU can run it.
                    self._waiter.ring(folder, False, holding + 1, loading)
                if b"+a" not in rest or not self._judge_attempts():
                    return True
                # Its poison events were set aside and the rest put back as a new batch: look again.
                self._candidates, self._next_candidate, rescanned = [], 0, False

    cdef bint _judge_attempts(self) except -1:
        """The claimed batch killed consumers before: True when this many deaths set the events
        they had in hand aside (the batch is gone); else this consumer is careful with it."""
        cdef int attempts
        cdef tuple in_hand
        attempts, in_hand = _attempts_of(os.fsdecode(self._rest))
        if attempts == 0 or self._max_attempts == 0:
            return False
        if attempts >= self._max_attempts and in_hand:
            self._dead_letter(attempts, in_hand)
            return True
        self._careful = True
        return False

    cdef int _dead_letter(self, int attempts, tuple in_hand) except -1:
        """Set aside, each in a dead_ batch of its own, the events that consumers had in hand when
        they died holding this batch; put the events after the last of them back as a new batch that
        keeps its place (those before it were handed out by the last attempt), then delete it. A
        crash anywhere repeats what is left: a dead letter already written is not written again."""
        cdef list rows = []
        cdef Py_ssize_t i
        cdef Enqueue writer
        cdef str rest = os.fsdecode(self._rest)
        while True:
            for i in range(self._pos, self._chunk.nrows):
                rows.append(_stored_bytes(&self._chunk.rows[i], self._chunk.buf))
            self._pos = self._chunk.nrows
            if self._reading != READING:
                break
            self._fill()
        if self._reading == READ_FAILED:
            self._finish_batch()  # quarantined whole, with every event in it
            return 0
        # (A name can be tampered with: spans past the batch's end are cut to it.)
        valid = [(a, min(b, len(rows) - 1)) for a, b in in_hand if 0 <= a <= b and a < len(rows)]
        suspects = sorted({i for a, b in valid for i in range(a, b + 1)})
        last = valid[-1][1] if valid else -1
        written = {os.fsdecode(n) for n in os.listdir(self._batch_folder) if n.startswith(b"dead_")}
        folder = os.fsdecode(self._batch_folder[:-1])
        writer = Enqueue(root_path=os.path.dirname(folder), queue_name=os.path.basename(folder),
                         serializer="raw", max_events_per_file=len(rows) + 1,
                         max_batch_age=math.inf, mode=self.mode)
        try:
            for span in _runs(suspects):
                target = _dead_path(self._batch_folder, rest, span, attempts)
                if not any(n.startswith(_dead_prefix(rest, span)) for n in written):
                    writer.set_aside(rows[span[0]:span[1] + 1], target)
                    self._dead_lettered += span[1] - span[0] + 1
                    _crash_point("dead")
                logger.error("turbo_queue: %s %s of batch %s, in hand when %d consumers died holding "
                             "the batch (max_attempts=%d), set aside as the dead letter %s; the batch's "
                             "other events are delivered. See it with `turbo-queue dead`, return it "
                             "with `turbo-queue requeue`.", "event" if span[0] == span[1] else "events",
                             _span_text(span), self.batch_path, attempts, self._max_attempts,
                             os.fsdecode(target))
            skip = set(suspects)
            remainder = [rows[i] for i in range(last + 1, len(rows)) if i not in skip]
            if remainder:
                writer.republish(remainder, _ns_of_rest(rest))
        finally:
            writer.close()
        self._finish_batch()
        return 0

    cdef int _hold(self, tuple span) except -1:
        """Careful: say in the claim's name that events span = (first, last) are about to be handed
        out, so that if this consumer dies with them, recovery knows which they were."""
        cdef bytes target = _holding_path(self._batch_folder, self._rest, self._owner.token.encode(), span)
        cdef int err = 0
        if hold_event(self._path, target, &err) != MOVED:
            raise os_error(err, "record the event in hand", self._path)
        self._path = target
        self._name = os.fsdecode(os.path.basename(target))
        self._holding = span
        _crash_point("hold")
        return 0

    cdef bint _open_batch(self, bytes path, bytes rest) except -1:
        """Open a claimed batch for reading. False when it is not a readable batch: it was
        quarantined."""
        cdef sqlite3 *db = NULL
        cdef sqlite3_stmt *sel = NULL
        cdef const char *p = path
        cdef int rc, sys_err = 0
        cdef int fd = self._lock_fd
        with nogil:
            rc = _check_header(fd)
            if rc == SQLITE_OK:
                rc = _open_for_reading(p, &db, &sel)
            if rc != SQLITE_OK and rc != NOT_A_BATCH:
                sys_err = tq_write_errno(sqlite3_system_errno(db)) if db != NULL else 0
        self._path, self._rest = path, rest
        self._name = os.fsdecode(os.path.basename(path))
        if rc == SQLITE_OK:
            self._db, self._sel = db, sel
            self._careful = self._max_attempts == 1  # (no first attempt to spare)
            self._holding = None
            self._free_end = 0
            self._reading = READING
            self._read_error = None
            self._chunk.nrows = 0
            self._chunk_start = 0
            self._pos = 0
            return True
        if rc == NOT_A_BATCH:
            detail = "not a batch: another format, journal mode or schema than one table logs(log_data)"
        else:
            detail = (sqlite3_errmsg(db) if db != NULL else sqlite3_errstr(rc)).decode("utf-8", "replace")
        if rc != NOT_A_BATCH and sqlite_fault(rc) == FAULT_ENVIRONMENT:
            # Not the file's fault: give the batch back and report.
            error = sqlite_error(rc, db, sys_err, "open batch", path)
            sqlite3_close_v2(db)
            self._db = NULL
            self._give_back()
            raise error
        sqlite3_close_v2(db)
        quarantine(self._batch_folder, self._name, detail)
        self._quarantined += 1
        self._drop_lock()
        return False

    cdef void _drop_lock(self) noexcept:
        if self._lock_fd >= 0:
            close(self._lock_fd)
            self._lock_fd = -1

    cdef int _close_batch(self) except -1:
        sqlite3_finalize(self._sel)
        sqlite3_close_v2(self._db)
        self._sel = NULL
        self._db = NULL
        self._chunk.nrows = 0
        self._pos = 0
        self._free_end = 0
        return 0

    cdef int _finish_batch(self) except -1:
        """Every event was handed out and the next one asked for: delete the batch."""
        cdef int err = 0
        cdef Moved moved
        self._close_batch()
        try:
            if self._reading == READ_FAILED:
                quarantine(self._batch_folder, self._name, self._read_error)
                self._quarantined += 1
                return 0
            _crash_point("delete")
            moved = finish_batch(self._path, &err)
            if moved == GONE:
                logger.warning("turbo_queue: batch %s vanished while held by this consumer (did "
                               "someone delete it?)", os.fsdecode(self._path))
            elif moved != MOVED:
                raise os_error(err, "delete finished batch", self._path)
        finally:
            self._drop_lock()
        return 0

    cdef int _give_back(self, bint failed=False) except -1:
        """Return the held batch to ready_ under its original name, so it keeps its place (for
        this consumer too: its next claim looks at the folder again). `failed`: with one more
        attempt, and the event last handed out remembered as the one in hand."""
        cdef int err = 0
        cdef Py_ssize_t handed = self._chunk_start + self._pos
        cdef bytes rest = self._rest
        if failed:
            rest = os.fsencode(_died_rest(os.fsdecode(rest), self._in_hand(handed)))
        if self._db != NULL:
            self._close_batch()
        self._candidates = []
        try:
            if give_back_batch(self._path, _ready_path(self._batch_folder, rest), &err) == FAILED:
                raise os_error(err, "return batch to the queue", self._path)
        finally:
            self._drop_lock()
        self._waiter.ring(self._batch_folder, True)  # (put back in ready_)
        return 0

    cdef object _in_hand(self, Py_ssize_t handed):
        """What a failing handler had in hand: what a careful consumer said it hands out, else the
        event last handed out (None if none was)."""
        if self._holding is not None:
            return self._holding
        return (handed - 1, handed - 1) if handed > 0 else None

    cdef Waited _wait(self, double timeout) except *:
        cdef double started = tq_now()
        try:
            return self._waiter.wait(timeout)
        finally:
            self._waited_s += tq_now() - started
            self._waits += 1

    cdef int _maybe_reclaim(self, bytes folder) except -1:
        cdef double now = tq_now()
        cdef bint first = self._next_reclaim == 0
        if now < self._next_reclaim:
            return 0
        self._next_reclaim = now + self._reclaim_interval
        turn = reclaim_turn(folder, self._reclaim_interval, self._file_mode, self._exact_mode, first)
        if turn == TURN_SKIP:
            return 0
        try:
            counts = recover_folder(os.fsdecode(folder), legacy=False)
        finally:
            if turn >= 0:
                end_reclaim_turn(turn)
        self._reclaim_passes += 1
        self._reclaimed += counts["published"]
        self._quarantined += counts["quarantined"]
        if counts["published"] or counts["quarantined"]:
            self._candidates = []
            logger.warning("turbo_queue: reclaimed batches of dead processes in %s: %s",
                           os.fsdecode(folder), counts)
        return 0

    def clean_up(self):
        """Delete the current batch now (as when its last event was handed out). Events of it not yet
        handed out are dropped. Does nothing when no batch is held."""
        if self._busy:
            self._enter()  # raises: another thread is in the middle of a call
        if self._db == NULL:
            return
        if not self._all_handed_out():
            logger.warning("turbo_queue: clean_up() dropped %s before all its events were read",
                           self.batch_path)
        self._finish_batch()

    def roll_back(self, failed=False):
        """Give the current batch back to the queue unfinished, under its original name so it keeps
        its place; every event of it will be delivered again. Returns False if no batch was held.
        `failed=True`: the handler failed on the event last handed out, which counts an attempt
        (see max_attempts), as a consumer that dies holding the batch does; a `with` block left by
        an exception rolls back so."""
        _check_bool("failed", failed)
        if self._busy:
            self._enter()
        if self._db == NULL:
            return False
        self._give_back(failed)
        return True

    def close(self):
        """Release the held batch and this consumer's files; the consumer cannot be used after it.
        Idempotent. A batch whose every event was handed out is deleted (auto_cleanup or not); one
        partly handed out is given back whole, or with keep_delivered only its events not yet
        handed out are."""
        self._close(False)

    cdef int close_failed(self) except -1:
        """close(), at the exit of a process that an uncaught exception ends: a batch given back
        counts a failed attempt."""
        return self._close(True)

    cdef int _close(self, bint failed) except -1:
        if self._busy:
            self._enter()
        self._closed = True
        if self._db != NULL:
            if self._all_handed_out():
                self._finish_batch()
            elif self._keep_delivered:
                self._requeue_rest()
            else:
                self._give_back(failed)
        self._release()
        _count_out(self, "consumer")
        return 0

    cdef int _release(self) except -1:
        self._owner.release()
        self._waiter.release()
        return 0

    cdef int _requeue_rest(self) except -1:
        """Write the held batch's events not yet handed out to a new batch that keeps its place in
        line, then delete it. A crash in between duplicates them, never loses them."""
        cdef list rest = []
        cdef Py_ssize_t i
        cdef Enqueue writer
        while True:
            for i in range(self._pos, self._chunk.nrows):
                rest.append(_stored_bytes(&self._chunk.rows[i], self._chunk.buf))
            self._pos = self._chunk.nrows
            if self._reading != READING:
                break
            self._fill()
        if rest and self._reading != READ_FAILED:
            folder = os.fsdecode(self._batch_folder[:-1])
            writer = Enqueue(root_path=os.path.dirname(folder), queue_name=os.path.basename(folder),
                             serializer="raw", max_events_per_file=len(rest) + 1,
                             max_batch_age=math.inf, mode=self.mode)
            writer.republish(rest, _ns_of_rest(os.fsdecode(self._rest)))
            writer.close()
        self._finish_batch()
        return 0

    def total_gets(self):
        """Events handed out so far."""
        return self._total_gets

    def counters(self):
        """What this consumer did so far, for metrics (see turbo_queue.metrics): events handed out,
        batches claimed, seconds spent waiting for a batch, batches of dead processes it reclaimed,
        files it quarantined, events it set aside as undecodable and as dead letters, and the
        recovery passes it ran (one consumer of a pool runs one each reclaim_interval), the times it
        slept for a batch (woken or timed out), and its looks at the folder that found nothing to
        claim (or were skipped: nothing could have landed)."""
        return {"events": self._total_gets, "batches": self._total_batch,
                "wait_seconds": self._waited_s, "reclaimed": self._reclaimed,
                "quarantined": self._quarantined, "set_aside": self._set_aside,
                "dead_lettered": self._dead_lettered, "reclaim_passes": self._reclaim_passes,
                "waits": self._waits, "empty_scans": self._empty_scans,
                "left_to_busy": self._left_to_busy}

    def total_batch(self):
        """Batches claimed so far."""
        return self._total_batch

    cdef void after_fork_in_child(self) noexcept:
        # The held batch, the inotify descriptor and the lock belong to the parent.
        if self._sel != NULL:
            sqlite3_finalize(self._sel)
        if self._db != NULL:
            sqlite3_close_v2(self._db)
        self._sel = NULL
        self._db = NULL
        self._chunk.nrows = 0
        self._pos = 0
        self._free_end = 0
        self._waiter.forget_after_fork()
        # The child's copy of the batch's lock: kept open, it would keep the batch locked after the
        # parent died, for as long as the child lives (closing it leaves the parent's lock held).
        self._drop_lock()
        self._owner.forget()
