# The producer: Enqueue buffers events in an open batch and publishes it (thresholds, max_batch_age's
# background thread, lingering while consumers are behind, backpressure, durability).

# What one look of the max_batch_age thread found.
cdef enum AgeTick:
    AGE_STOP = 0   # the producer is closed: the thread ends
    AGE_IDLE = 1   # no open batch: sleep until woken
    AGE_WAIT = 2   # look again after the given wait

# _age_wake_at when the thread sleeps until it is woken.
cdef double NOT_SCHEDULED = 1e300

cdef class Enqueue(_QueueBase):
    """Writes events into batches of the queue ``root_path/queue_name``.

    Events are buffered in an open ``loading_`` batch; a batch is published (renamed ``ready_``)
    when it holds ``max_events_per_file`` events, ``max_batch_age`` seconds after its first event
    (by a background thread, with no call needed), on ``flush()``, ``close()``, leaving a ``with``
    block, or at interpreter exit. An event is safe from crashes once its batch is published.
    """
    cdef PyThread_type_lock _mutex
    cdef sqlite3 *_db
    cdef sqlite3_stmt *_ins
    cdef sqlite3_stmt *_ins_group
    cdef bytes _loading_path
    # The open batch's name after its state prefix (see the protocol unit).
    cdef bytes _rest
    cdef bytes _batch_folder
    cdef list _pending
    cdef Py_ssize_t _pending_bytes
    cdef Py_ssize_t _count
    cdef double _batch_started
    cdef int64_t _last_ns
    cdef bint _last_was_small
    # Where the open batch is built: in memory (written to its loading_ file when published) or in
    # the loading_ file itself. _fd: that file, locked from its creation until it is ready_.
    cdef bint _in_memory
    cdef int _fd
    cdef Py_ssize_t _batch_bytes
    # The buffer batches are built in, kept from one batch to the next (see tq_open_memory_batch).
    cdef unsigned char *_image_buf
    cdef sqlite3_int64 _image_cap
    cdef _Owner _owner
    cdef object _timer
    cdef object _wake
    # When the age thread looks next (tq_now() clock, or NOT_SCHEDULED). A new batch wakes it only
    # if due sooner: waking it hands it the GIL (docs/design.md has the cost).
    cdef double _age_wake_at
    cdef bint _closed
    cdef bint _durable
    cdef object _error
    cdef double _ready_checked_at
    cdef long _ready_count
    cdef readonly long long events_published
    cdef readonly long long batches_published
    # Lingering (see the max_linger property and _age_tick).
    cdef double _max_linger
    cdef double _linger_rate
    # The creation time the next batch's name takes instead of now, or 0 (see republish), and
    # where it is published instead of ready_, or None (see set_aside).
    cdef int64_t _name_ns
    cdef bytes _publish_target
    cdef bint _publish_dead  # (add_dead_letters: what is published meanwhile goes to dead_)
    cdef _Bell _bell         # the folder's doorbell, rung after each publish
    cdef long long _dead_lettered

    def __cinit__(self, *args, **kwargs):
        self._mutex = PyThread_allocate_lock()
        if self._mutex == NULL:
            raise MemoryError()
        self._pending = []
        self._owner = _Owner()
        self._ready_checked_at = -1e300
        self._fd = -1

    def __init__(self, *, root_path=None, queue_name=None, max_events_per_file=None,
                 max_ready_files=None, max_batch_age=None, serializer=None, durability=None,
                 max_linger=None, linger_rate=None, mode=None):
        self._configure(dict(root_path=root_path, queue_name=queue_name,
                             max_events_per_file=max_events_per_file,
                             max_ready_files=max_ready_files, max_batch_age=max_batch_age,
                             serializer=serializer, durability=durability, max_linger=max_linger,
                             linger_rate=linger_rate, mode=mode))
        _live.add(self)

    def __dealloc__(self):
        if self._mutex != NULL:
            PyThread_free_lock(self._mutex)
        if self._db == NULL:  # (an open batch still uses it: leak it rather than free it under it)
            sqlite3_free(self._image_buf)

    def __del__(self):
        try:
            self.close()
        except Exception:
            logger.exception("turbo_queue: publishing the open batch of a discarded enqueue failed")

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.close()

    @property
    def durability(self):
        """'process' (default): a published batch survives the crash of any process.
        'os': also fsync the batch before publishing and the folder after, so that it survives an
        OS crash or power loss, at the cost of two fsyncs per batch."""
        return "os" if self._durable else "process"

    @durability.setter
    def durability(self, value):
        if value not in DURABILITY:
            raise ValueError(f"turbo_queue: durability must be 'process' or 'os', not {value!r}")
        self._durable = value == "os"

    @property
    def max_linger(self):
        """Seconds (0, the default: never) that a batch past max_batch_age may keep filling while
        published batches wait unclaimed (consumers are behind: a batch published now gains them
        nothing) or while events come at linger_rate per second or more (a small batch's fixed cost
        would take a large share of the CPU). It is published at max_linger, or when full."""
        return self._max_linger

    @max_linger.setter
    def max_linger(self, value):
        if type(value) not in (int, float) or not 0 <= value < math.inf:
            raise ValueError(f"turbo_queue: max_linger must be a number of seconds >= 0 (0: never "
                             f"linger), not {value!r}")
        self._max_linger = value

    @property
    def linger_rate(self):
        """Events per second from which a batch lingers (see max_linger); 0, the default: rate alone
        never makes a batch linger."""
        return self._linger_rate

    @linger_rate.setter
    def linger_rate(self, value):
        if type(value) not in (int, float) or not 0 <= value < math.inf:
            raise ValueError(f"turbo_queue: linger_rate must be a number of events per second >= 0, "
                             f"not {value!r}")
        self._linger_rate = value

    @property
    def closed(self):
        return self._closed

    cdef inline void _lock(self) noexcept:
        # Never block while holding the GIL: the age thread may need it to finish a publish.
        if not PyThread_acquire_lock(self._mutex, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self._mutex, WAIT_LOCK)

    cdef inline void _unlock(self) noexcept:
        PyThread_release_lock(self._mutex)

    def start(self):
        """Check the queue folder (created if missing) and the settings; the first batch file is
        created by the first event. Calling it is optional."""
        if self._closed:
            raise ValueError("turbo_queue: this enqueue is closed")
        self._lock()
        try:
            self._owner.acquire(self._folder(), self._file_mode, self._exact_mode)
        finally:
            self._unlock()
        self.update_enqueue_active_state()

    def add(self, data):
        """Add one event. Raises EncodeError (a TypeError and a ValueError), with nothing written, if
        it cannot be serialized."""
        cdef bytes b = _encode(self._ser, data, self._custom)
        self._lock()
        try:
            self._append_locked(b)
        finally:
            self._unlock()

    def add_many(self, events):
        """Add every event of an iterable; returns how many. Whatever goes wrong part way (an event
        that cannot be serialized, the iterable itself raising, KeyboardInterrupt), the events
        before it are added first; EncodeError says which event could not be encoded and why."""
        cdef list chunk = []
        cdef Py_ssize_t n = 0
        try:
            for event in events:
                chunk.append(_encode(self._ser, event, self._custom))
                n += 1
                if len(chunk) == PENDING_MAX:
                    full, chunk = chunk, []  # (never appended twice, even if appending fails)
                    self._append_chunk(full)
        except EncodeError as e:
            self._append_chunk(chunk)
            raise EncodeError(f"turbo_queue: event #{n} of add_many: {e} (the {n} events before it "
                              f"were added)", index=n, value_type=e.value_type) from (e.__cause__ or e)
        except BaseException:
            self._append_chunk(chunk)
            raise
        self._append_chunk(chunk)
        return n

    def counters(self):
        """What this producer did so far, for metrics (see turbo_queue.metrics): events and batches
        published (ready_), and events written as dead letters."""
        return {"events": self.events_published, "batches": self.batches_published,
                "dead_lettered": self._dead_lettered}

    def add_dead_letters(self, events):
        """Write events straight into dead_ batches, not ready_: events a consumer gives up on (a
        broker refuses them for good, say), kept until a person acts (see turbo_queue.dead_letters
        and turbo_queue.requeue). What this producer had open is published first, as usual. Returns
        how many were written; raises EncodeError, having written none, if one cannot be encoded."""
        cdef list stored = [_encode(self._ser, event, self._custom) for event in events]
        if not stored:
            return 0
        self._lock()
        try:
            self._publish_locked()
            self._publish_dead = True
            for b in stored:
                self._append_locked(<bytes>b)
            self._publish_locked()
        finally:
            self._publish_dead = False
            self._unlock()
        return len(stored)

    cdef int _append_chunk(self, list chunk) except -1:
        if not chunk:
            return 0
        self._lock()
        try:
            for b in chunk:
                self._append_locked(<bytes>b)
        finally:
            self._unlock()
        return 0

    cdef int set_aside(self, list stored, bytes target) except -1:
        """Write values as stored in a batch into one new batch published as `target` (a name in the
        protocol's invalid_ state), not ready_: events that must wait for a person."""
        self._lock()
        try:
            self._publish_locked()  # what was open goes out as usual
            for b in stored:
                self._append_locked(<bytes>b)
            self._publish_target = target
            self._publish_locked()
        finally:
            self._publish_target = None
            self._unlock()
        return 0

    cdef int republish(self, list stored, int64_t ns) except -1:
        """Write values as stored in a batch (see _stored_bytes) into one new batch that takes the
        creation time `ns`, so that it keeps that batch's place in line, and publish it."""
        self._lock()
        try:
            self._name_ns = ns
            for b in stored:
                self._append_locked(<bytes>b)
            self._publish_locked()
        finally:
            self._unlock()
        return 0

    cdef int _append_locked(self, bytes b) except -1:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._closed:
            raise ValueError("turbo_queue: this enqueue is closed")
        if PyBytes_GET_SIZE(b) > MAX_EVENT_BYTES:
            raise EventTooLargeError(
                f"turbo_queue: an event of {PyBytes_GET_SIZE(b)} bytes is over SQLite's limit of "
                f"{MAX_EVENT_BYTES} bytes per value; nothing was written. Split the event.")
        if self._db == NULL:
            self._open_batch_locked()
        self._pending.append(b)
        self._pending_bytes += PyBytes_GET_SIZE(b)
        self._batch_bytes += PyBytes_GET_SIZE(b)
        self._count += 1
        _crash_point("add")
        # Insert once enough is pending, by count or (for large events) by size.
        if len(self._pending) >= PENDING_MAX or self._pending_bytes >= CHUNK_BYTES:
            self._insert_pending_locked()
        if (self._count >= self._max_events_per_file
                or (self._in_memory and self._batch_bytes >= MAX_MEMORY_BATCH_BYTES)):
            self._publish_locked()
        return 0

    cdef int _open_batch_locked(self) except -1:
        cdef bytes folder = self._folder()
        cdef sqlite3 *db = NULL
        cdef int rc, sys_err, err
        cdef const char *path
        cdef bint in_memory = _memory_batches
        cdef int fd = -1, mode = self._file_mode
        cdef bint exact = self._exact_mode
        cdef bytes sql_b = _BATCH_SQL[in_memory, self._last_was_small]
        cdef const char *sql = sql_b
        _ensure_exit_hook()
        self._owner.acquire(folder, mode, exact)
        if self._name_ns:  # a batch that must keep another's place in line (see Dequeue)
            ns, self._name_ns = self._name_ns, 0
        else:
            ns = time.time_ns()
            if ns <= self._last_ns:  # keep one producer's batches in order if the clock steps back
                ns = self._last_ns + 1
            self._last_ns = ns
        self._batch_folder = folder
        # The loading_ file exists, empty and locked by this producer, while the batch fills: the
        # folder shows what is being loaded, as in the original, and its lock says who loads it.
        while True:
            self._rest = _new_batch_rest(ns, self._owner.token)
            self._loading_path = _loading_path(folder, self._rest)
            path = self._loading_path
            with nogil:
                fd = tq_create_locked(path, mode, exact)
                err = errno
            if fd >= 0:
                break
            if fd == TQ_ERROR and err != EEXIST:
                raise os_error(err, "create batch", self._loading_path)
            ns += 1  # the name was taken, or the new file meanwhile: the next nanosecond
        with nogil:
            rc = _create_batch_db(path, in_memory, sql, &db, &self._image_buf, &self._image_cap)
            if rc == SQLITE_OK:
                rc = sqlite3_prepare_v2(db, INSERT_ONE, -1, &self._ins, NULL)
            # The multi-row INSERT is prepared on first use (_insert_pending_locked): parsing it
            # costs more than creating the file, and a small batch never needs it.
            sys_err = sqlite3_system_errno(db) if db != NULL else 0
        if rc != SQLITE_OK:
            error = sqlite_error(rc, db, sys_err, "create batch", self._loading_path)
            sqlite3_finalize(self._ins)
            sqlite3_finalize(self._ins_group)
            sqlite3_close_v2(db)
            self._ins = NULL
            self._ins_group = NULL
            try:
                os.unlink(self._loading_path)
            except OSError:
                pass
            close(fd)
            raise error
        self._db = db
        self._fd = fd
        self._in_memory = in_memory
        self._batch_bytes = 0
        self._count = 0
        self._batch_started = tq_now()
        if self._ages_batches:
            self._ensure_age_thread()
        return 0

    cdef int _insert_pending_locked(self) except -1:
        cdef Py_ssize_t n = len(self._pending), i, j
        cdef int rc = SQLITE_DONE, sys_err = 0
        cdef sqlite3_stmt *ins = self._ins
        cdef sqlite3_stmt *group = self._ins_group
        if n == 0:
            return 0
        if group == NULL and n >= INSERT_GROUP:
            with nogil:
                rc = sqlite3_prepare_v2(self._db, INSERT_GROUP_SQL, -1, &self._ins_group, NULL)
                if rc != SQLITE_OK:
                    sys_err = sqlite3_system_errno(self._db)
            if rc != SQLITE_OK:
                self._abandon_batch_locked(rc, sys_err, "prepare the batch insert")
            group = self._ins_group
            rc = SQLITE_DONE
        cdef const char **data = <const char **>malloc(n * sizeof(char *))
        cdef int *sizes = <int *>malloc(n * sizeof(int))
        if data == NULL or sizes == NULL:
            free(data)
            free(sizes)
            raise MemoryError()
        try:
            for i in range(n):
                b = <bytes>self._pending[i]
                data[i] = PyBytes_AS_STRING(b)
                sizes[i] = <int>PyBytes_GET_SIZE(b)
            with nogil:
                i = 0
                while n - i >= INSERT_GROUP:
                    for j in range(INSERT_GROUP):
                        rc = sqlite3_bind_blob(group, j + 1, data[i + j], sizes[i + j], SQLITE_STATIC)
                        if rc != SQLITE_OK:
                            break
                    if rc == SQLITE_OK:
                        rc = sqlite3_step(group)
                    sqlite3_reset(group)
                    if rc != SQLITE_DONE:
                        break
                    i += INSERT_GROUP
                while rc == SQLITE_DONE and i < n:
                    rc = sqlite3_bind_blob(ins, 1, data[i], sizes[i], SQLITE_STATIC)
                    if rc == SQLITE_OK:
                        rc = sqlite3_step(ins)
                    sqlite3_reset(ins)
                    i += 1
                if rc != SQLITE_DONE:
                    sys_err = tq_write_errno(sqlite3_system_errno(self._db))
        finally:
            free(data)
            free(sizes)
        self._pending.clear()
        self._pending_bytes = 0
        _crash_point("insert")
        if rc != SQLITE_DONE:
            self._abandon_batch_locked(rc, sys_err, "write to batch")
        return 0

    cdef int _abandon_batch_locked(self, int rc, int sys_err, str action) except -1:
        """A write failed: discard the unpublished batch (nothing half-written is ever published) and
        raise, saying how many events were lost with it."""
        cdef Py_ssize_t lost = self._count
        cdef bytes path = self._loading_path
        cdef sqlite3_int64 size
        cdef str what = (f"{action} ({lost} events of this unpublished batch were discarded; "
                         f"batches published earlier are safe)")
        if rc == SQLITE_OK:  # a system call failed, not SQLite: sys_err is its errno
            error = os_error(sys_err, what, path)
        else:
            error = sqlite_error(rc, self._db, sys_err, what, path)
        sqlite3_exec(self._db, b"ROLLBACK", NULL, NULL, NULL)
        sqlite3_finalize(self._ins)
        sqlite3_finalize(self._ins_group)
        if self._in_memory:  # where the buffer is now, before the database goes
            self._take_image_locked(&size)
        sqlite3_close_v2(self._db)
        self._db = NULL
        self._release_image_buffer_locked()
        self._ins = NULL
        self._ins_group = NULL
        self._count = 0
        self._pending.clear()
        self._pending_bytes = 0
        for suffix in (b"", b"-journal"):
            try:
                os.unlink(path + suffix)
            except OSError:
                pass
        if self._fd >= 0:  # unlocked only once it is gone
            close(self._fd)
        self._fd = -1
        self._publish_target = None
        raise error

    cdef int _write_image_locked(self) except -1:
        """Write the committed in-memory batch into its loading_ file (left open: its lock is held
        until it is published)."""
        cdef int fd = self._fd, rc = 0, err = 0
        cdef sqlite3_int64 size = 0
        cdef unsigned char *image
        cdef bint durable = self._durable
        image = self._take_image_locked(&size)
        if image == NULL:
            self._abandon_batch_locked(SQLITE_NOMEM, 0, "find the batch in memory")
        with nogil:
            rc = tq_write_image_body(fd, image, size)
            err = errno
        if rc == 0:
            _crash_point("write")  # the test hook's point between the two writes
            with nogil:
                rc = tq_write_image_magic(fd, image, durable)
                err = errno
        if rc != 0:
            self._abandon_batch_locked(SQLITE_OK, err or EIO, "write batch")
        return 0

    cdef unsigned char *_take_image_locked(self, sqlite3_int64 *size) except? NULL:
        """The open in-memory batch's image. Its buffer, possibly moved by SQLite while growing, is
        kept for the next batch unless it grew past MAX_KEPT_IMAGE_BYTES."""
        cdef sqlite3_int64 cap = 0
        cdef unsigned char *image = tq_memory_batch_image(self._db, size, &cap)
        if image != NULL:
            self._image_buf = image
            self._image_cap = cap
        return image

    cdef void _release_image_buffer_locked(self) noexcept:
        """After the batch's database is closed: give back a buffer grown too large to keep."""
        if self._image_cap > MAX_KEPT_IMAGE_BYTES:
            sqlite3_free(self._image_buf)
            self._image_buf = NULL
            self._image_cap = 0

    cdef int _publish_locked(self) except -1:
        cdef int rc, err, sys_err = 0
        cdef sqlite3 *db = self._db
        cdef const char *loading
        cdef const char *folder
        cdef bint durable = self._durable
        cdef bint in_memory = self._in_memory
        cdef bint to_ready = False
        cdef Moved moved
        if db == NULL:
            return 0
        self._insert_pending_locked()
        _crash_point("commit")
        with nogil:
            rc = sqlite3_exec(db, b"COMMIT", NULL, NULL, NULL)
            if rc != SQLITE_OK:
                sys_err = tq_write_errno(sqlite3_system_errno(db))
        if rc != SQLITE_OK:
            self._abandon_batch_locked(rc, sys_err, "commit batch")
        sqlite3_finalize(self._ins)
        sqlite3_finalize(self._ins_group)
        self._ins = NULL
        self._ins_group = NULL
        if in_memory:
            self._write_image_locked()
        with nogil:
            rc = sqlite3_close_v2(db)
        self._db = NULL
        self._release_image_buffer_locked()
        count = self._count
        self._count = 0
        self._last_was_small = count < SMALL_BATCH_EVENTS
        folder = self._batch_folder
        fd, self._fd = self._fd, -1
        try:
            if durable and not in_memory:  # an image written from memory was synced by its writer
                with nogil:
                    rc = tq_fsync_fd(fd)
                    err = errno
                if rc != 0:
                    raise os_error(err, f"fsync batch ({count} events stay in it, unpublished; it "
                                   f"is recovered when this process exits)", self._loading_path)
            # The batch is complete and closed: now, and only now, it may be published.
            _crash_point("publish")
            target = self._publish_target
            to_ready = target is None and not self._publish_dead
            if target is None:
                target = (_dead_batch_path(self._batch_folder, self._rest, count) if self._publish_dead
                          else _published_path(self._batch_folder, self._rest, count))
            self._publish_target = None
            moved = publish_batch(self._loading_path, target, &err)
            if moved != MOVED:
                raise os_error(err, f"publish batch ({count} events stay in it, unpublished; it is "
                               f"recovered when this process exits)", self._loading_path)
        finally:
            close(fd)  # its lock goes with it: the batch is ready_ (or left for recovery)
        if target is not None and not self._publish_dead:
            # (after the close: a consumer woken finds it unlocked)
            self._bell = ring_bell(self._batch_folder, self._bell)
        if durable:
            with nogil:
                rc = tq_fsync_path(folder, 1)
                err = errno
            if rc != 0:
                raise os_error(err, "fsync the queue folder", self._batch_folder)
        _crash_point("published")
        if to_ready:
            self.events_published += count
            self.batches_published += 1
        elif self._publish_dead:
            self._dead_lettered += count
        self._ready_checked_at = -1e300
        return count

    def flush(self):
        """Publish the open batch now; returns how many events it held (0 if none). When it returns,
        those events are safe."""
        self._lock()
        try:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            return self._publish_locked()
        finally:
            self._unlock()

    def close(self):
        """Publish the open batch and release this producer's files. Idempotent."""
        if self._closed:
            return
        self._lock()
        try:
            self._closed = True
            self._publish_locked()
            error, self._error = self._error, None
            self._owner.release()
            self._bell = None
        finally:
            self._unlock()
            if self._wake is not None:
                self._wake.set()
            _count_out(self, "producer")
        if error is not None:
            raise error

    def update_enqueue_active_state(self):
        """Backpressure: set enqueue_active to False while the queue holds max_ready_files ready
        batches, True otherwise. Cheap enough to call once per event (the folder is counted at most
        every 2 ms, and after each publish)."""
        cdef double now = tq_now()
        if now - self._ready_checked_at >= 0.002:
            self._ready_count = count_ready(self._folder(), True)
            self._ready_checked_at = now
        self._enqueue_active = self._ready_count < self._max_ready_files

    def pending(self):
        """Events added but not yet published."""
        return self._count

    # -- max_batch_age: a daemon thread publishes a batch that has aged, with no call needed.

    cdef int _ensure_age_thread(self) except -1:
        if self._timer is None or not self._timer.is_alive():
            self._wake = threading.Event()
            self._timer = threading.Thread(target=_age_loop, args=(weakref.ref(self), self._wake),
                                           name="turbo_queue-batch-age", daemon=True)
            self._age_wake_at = 0  # it looks at once
            self._timer.start()
        elif self._batch_started + self._max_batch_age < self._age_wake_at:
            self._wake.set()
        return 0

    cdef int _max_batch_age_changed(self) except -1:
        if self._wake is not None:  # the open batch may be due sooner now
            self._wake.set()
        return 0

    cdef AgeTick _age_tick(self, double *wait) except *:
        """Publish the batch if it is due; says when the thread should look again."""
        cdef double now, age
        self._lock()
        try:
            if self._closed:
                return AGE_STOP
            if self._db == NULL or self._count == 0:
                self._age_wake_at = NOT_SCHEDULED
                return AGE_IDLE
            now = tq_now()
            age = now - self._batch_started
            if (age >= self._max_batch_age and self._max_linger > 0 and age < self._max_linger
                    and ((self._linger_rate > 0 and self._count >= self._linger_rate * age)
                         or self._ready_waiting())):
                # Look again in a quarter of the linger: each look takes the GIL from a busy
                # producer thread, and a look every millisecond cost more than it saved.
                wait[0] = min(max(self._max_batch_age, self._max_linger / 4), self._max_linger - age)
                self._age_wake_at = now + wait[0]
                return AGE_WAIT
            if now >= self._batch_started + self._max_batch_age:
                try:
                    self._publish_locked()
                except BaseException as e:
                    logger.error("turbo_queue: publishing an aged batch failed: %s", e)
                    self._error = e
                self._age_wake_at = NOT_SCHEDULED
                return AGE_IDLE
            self._age_wake_at = self._batch_started + self._max_batch_age
            wait[0] = self._age_wake_at - now
            return AGE_WAIT
        finally:
            self._unlock()

    cdef bint _ready_waiting(self) except -1:
        return count_ready(self._batch_folder, False) > 0

    cdef void after_fork_in_child(self) noexcept:
        # The open batch, its pending events and the lock belong to the parent. Forget them without
        # closing the SQLite handle: a rollback here would write to the parent's file.
        self._mutex = PyThread_allocate_lock()
        if self._fd >= 0:
            close(self._fd)  # the parent's loading_ file: only the parent writes it
            self._fd = -1
        self._image_buf = NULL  # the parent's open batch may still live in it
        self._image_cap = 0
        self._db = NULL
        self._ins = NULL
        self._ins_group = NULL
        self._count = 0
        self._pending = []
        self._pending_bytes = 0
        self._timer = None
        self._owner.forget()


def _age_loop(ref, wake):
    """The max_batch_age thread of one producer; it holds no reference to it while it sleeps."""
    cdef double wait = 0
    cdef AgeTick tick
    while True:
        producer = ref()
        if producer is None:
            return
        tick = (<Enqueue>producer)._age_tick(&wait)
        del producer
        if tick == AGE_STOP:
            return
        wake.wait(wait if tick == AGE_WAIT else None)
        wake.clear()

