# Recovery: batches whose owner died go back to ready_ (at startup, and in every consumer's periodic
# reclaim pass), unreadable ones are quarantined, nothing is ever deleted that holds an event, and
# nothing outside the folder is followed, opened or changed.

cdef enum Leftover:
    LEFT_GONE = 0          # removed or moved meanwhile
    LEFT_PUBLISHED = 1     # now a ready_ batch
    LEFT_EMPTY = 2         # held no event: removed
    LEFT_UNFINISHED = 3    # a producer died while writing it, before publishing: removed
    LEFT_QUARANTINED = 4   # not a readable batch: renamed invalid_...
    LEFT_LIVE = 5          # its owner, or whoever holds the file, lives
    LEFT_ALONE = 6         # cannot be judged (another user's, other hard links): untouched

cdef tuple _LEFTOVER_COUNTS = ("gone", "published", "empty", "unfinished", "quarantined",
                               "skipped_live", "skipped_other")

cdef bytes SQLITE_MAGIC = b"SQLite format 3\0"


cdef long long _count_rows(bytes path, bint rollback, bint missing_table_is_empty) except -2:
    """Check a leftover batch and count its rows; -1 when it is not a readable batch. With
    `rollback` it is opened for writing under its own name, so that SQLite rolls back its hot
    journal; else read-only. Raises when the environment, not the file, failed (see sqlite_fault)."""
    cdef sqlite3 *db = NULL
    cdef sqlite3_stmt *st = NULL
    cdef int rc, sys_err = 0
    cdef const char *cpath = path
    cdef int flags = (SQLITE_OPEN_READWRITE if rollback else SQLITE_OPEN_READONLY) | SQLITE_OPEN_NOFOLLOW
    with nogil:
        rc = sqlite3_open_v2(cpath, &db, flags, NULL)
        if rc == SQLITE_OK:
            rc = sqlite3_prepare_v2(db, b"PRAGMA quick_check", -1, &st, NULL)
            if rc == SQLITE_OK:
                rc = sqlite3_step(st)
        sys_err = sqlite3_system_errno(db) if db != NULL else 0
    try:
        if rc == SQLITE_ROW:
            ok = (<const char *>sqlite3_column_blob(st, 0))[:sqlite3_column_bytes(st, 0)] == b"ok"
            sqlite3_finalize(st)
            st = NULL
            if not ok:
                return -1
            with nogil:
                rc = _check_schema(db)
                if rc == SQLITE_OK:
                    rc = sqlite3_prepare_v2(db, b"SELECT count(*) FROM logs", -1, &st, NULL)
                if rc == SQLITE_OK:
                    rc = sqlite3_step(st)
            if rc == SQLITE_ROW:
                return sqlite3_column_int64(st, 0)
            if rc == NOT_A_BATCH and missing_table_is_empty and _no_schema(db):
                return 0
            return -1
        if sqlite_fault(rc) == FAULT_ENVIRONMENT:
            raise sqlite_error(rc, db, sys_err, "recover", path)
        return -1
    finally:
        sqlite3_finalize(st)
        sqlite3_close_v2(db)


cdef bint _schema_may_be_a_batch(bytes path) except -1:
    """Whether a file with a hot journal holds a batch's schema (or none yet), read as it is on
    disk (`immutable`: SQLite neither rolls the journal back nor locks nor creates anything)."""
    from urllib.parse import quote  # (only here: recovery of a hot journal is rare)

    cdef bytes uri = b"file:" + quote(path).encode() + b"?immutable=1"
    cdef const char *curi = uri
    cdef sqlite3 *db = NULL
    cdef int rc
    with nogil:
        rc = sqlite3_open_v2(curi, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL)
        if rc == SQLITE_OK:
            rc = _check_schema(db)
    try:
        return rc == SQLITE_OK or (rc == NOT_A_BATCH and _no_schema(db))
    finally:
        sqlite3_close_v2(db)


cdef bint _no_schema(sqlite3 *db) except -1:
    cdef sqlite3_stmt *st = NULL
    cdef bint empty = False
    if sqlite3_prepare_v2(db, b"SELECT count(*) FROM sqlite_master", -1, &st, NULL) == SQLITE_OK:
        empty = sqlite3_step(st) == SQLITE_ROW and sqlite3_column_int64(st, 0) == 0
    sqlite3_finalize(st)
    return empty


cdef Leftover _recover_locked(bytes folder, BatchName b, int fd, struct_stat *st) except *:
    """Turn one leftover file, open as `fd` and locked by the caller, into a ready_ batch."""
    cdef bytes src = folder + os.fsencode(b.name)
    cdef bytes journal = src + b"-journal"
    cdef char buf[100]
    cdef Py_ssize_t got
    cdef long long n
    cdef bint rollback
    cdef bint own_loading = b.state == "loading" and _is_own_loading(b.rest)
    if st.st_size == 0:
        if b.state == "chosen":  # a claimed batch was complete: an empty one is not ours
            return LEFT_QUARANTINED if quarantine(folder, b.name, "an empty claimed batch (a claimed batch is complete)") else LEFT_GONE
        return LEFT_EMPTY if _remove_leftover(src, "empty leftover batch") else LEFT_GONE
    with nogil:
        got = pread(fd, buf, 100, 0)
    head = buf[:got] if got > 0 else b""
    if own_loading and head[:16] == bytes(16):
        # Its producer died while writing the batch from memory (SQLite's magic string is written
        # last, by tq_write_image_magic): never published, and incomplete.
        logger.warning("turbo_queue: removing %s: its producer died while writing it, before "
                       "publishing it (%d bytes, never published)", os.fsdecode(src), st.st_size)
        return LEFT_UNFINISHED if _remove_leftover(src, None) else LEFT_GONE
    if len(head) < 100 or head[:16] != SQLITE_MAGIC or head[18] != 1 or head[19] != 1:
        what = "a WAL database" if len(head) == 100 and head[:16] == SQLITE_MAGIC else "not an SQLite database"
        return LEFT_QUARANTINED if quarantine(folder, b.name, f"{what}, not a batch") else LEFT_GONE
    # A hot journal beside it (a producer building it in its file died mid-write) is rolled back by
    # opening it for writing under its own name; anything else is only read.
    try:
        jst = os.lstat(journal)
    except FileNotFoundError:
        jst = None
    if jst is not None and not stat_module.S_ISREG(jst.st_mode):
        return LEFT_QUARANTINED if quarantine(folder, b.name, "its -journal is not a regular file") else LEFT_GONE
    rollback = jst is not None and jst.st_size > 0
    if b.state == "chosen" and st.st_nlink > 1 and _also_ready(folder, st):
        # Its consumer died giving it back, between link() and unlink(): it is ready_ already.
        return LEFT_PUBLISHED if _remove_leftover(src, "second name of a batch given back") else LEFT_GONE
    if rollback and st.st_nlink > 1:  # rolling it back would write through its other names
        return LEFT_QUARANTINED if quarantine(folder, b.name, "a hot journal and other hard links") else LEFT_GONE
    if rollback and not own_loading and not _schema_may_be_a_batch(src):
        # Rolled back only if it is our own unfinished batch (a producer that built it in its file
        # died mid-write: its pages may be half written) or a batch by its schema: a foreign
        # database is never changed.
        return LEFT_QUARANTINED if quarantine(folder, b.name, "a hot journal, and not a batch") else LEFT_GONE
    try:
        n = _count_rows(src, rollback, b.state == "loading" or b.state == "legacy")
    except FileNotFoundError:
        return LEFT_GONE
    if n < 0:
        return LEFT_QUARANTINED if quarantine(folder, b.name, "not a readable batch") else LEFT_GONE
    if n == 0:
        # A producer that died before its first commit leaves a file without events.
        return LEFT_EMPTY if _remove_leftover(src, "empty leftover batch") else LEFT_GONE
    # A consumer of ours died holding it: one more attempt, and the event it had in hand (known
    # when it was careful, see Dequeue._hold) remembered, so that consumers can tell a poison event.
    rest = _died_rest(b.rest, b.holding) if b.state == "chosen" and b.owner is not None else b.rest
    return LEFT_PUBLISHED if publish_leftover(folder, b.name, rest, b.state, n) == "published" else LEFT_GONE


cdef bint _also_ready(bytes folder, struct_stat *st) except -1:
    """Whether a ready_ name of `folder` is the file `st` (a batch with two names)."""
    for name in os.listdir(folder):
        if name.startswith(READY_B):
            try:
                other = os.lstat(folder + name)
            except FileNotFoundError:
                continue
            if other.st_ino == st.st_ino and other.st_dev == st.st_dev:
                return True
    return False


cdef bint _remove_leftover(bytes src, str what) except -1:
    try:
        os.unlink(src)
    except FileNotFoundError:
        return False
    try:
        os.unlink(src + b"-journal")
    except FileNotFoundError:
        pass
    if what is not None:
        logger.info("turbo_queue: removed %s %s", what, os.fsdecode(src))
    return True


cdef Leftover _recover_one(bytes folder, BatchName b, dict owners) except *:
    """Judge one leftover file, and recover it if nobody holds it."""
    cdef int fd = -1
    cdef struct_stat st
    cdef OwnerState state
    if b.owner is not None:
        if b.owner not in owners:
            state = _owner_state(folder, b.owner, &fd)
            owners[b.owner] = (state, fd)
        if owners[b.owner][0] == OWNER_ALIVE:
            return LEFT_LIVE
    # Otherwise (a dead owner, or a lock file missing or unreadable, which prove nothing) the file's
    # own lock decides: its owner holds it for as long as it may move the file.
    fd = lock_batch(folder, os.fsencode(b.name), &st)
    if fd == BATCH_HELD:
        return LEFT_LIVE
    if fd == BATCH_QUARANTINED:
        return LEFT_QUARANTINED
    if fd == BATCH_LEFT_ALONE:
        return LEFT_ALONE
    if fd < 0:
        return LEFT_GONE
    try:
        return _recover_locked(folder, b, fd, &st)
    finally:
        close(fd)


def recover_folder(folder, *, legacy=True):
    """Return the batches of dead producers and consumers in `folder` to ``ready_``.

    Safe beside live processes: a ``loading_`` or ``chosen_`` file whose owner holds its lock (on
    the file itself, and on its ``.owner_*.lock`` file where there is one) is left alone; a lock
    file that was removed is no proof of death. Names written by the pure-Python package carry no
    owner, so they are recovered only when ``legacy`` is true (at startup, when those processes must
    be stopped). Unreadable files, and anything that is no regular file (FIFO, socket, directory,
    symlink: never followed), are renamed ``invalid_...`` and logged, never deleted, except a
    ``loading_`` batch that its producer was still writing when it died ("unfinished": never
    published). Lock files of dead owners are removed. Returns counts of what was done.
    """
    cdef bytes folder_b = os.fsencode(os.path.join(os.fspath(folder), ""))
    cdef BatchName b
    cdef Leftover result
    counts = {"published": 0, "empty": 0, "unfinished": 0, "quarantined": 0, "skipped_live": 0,
              "skipped_other": 0}
    try:
        names = sorted(os.listdir(folder_b))
    except FileNotFoundError:
        return counts
    owners = {}  # token -> (OwnerState, fd holding a dead owner's lock file while its files are handled)
    try:
        for raw in names:
            b = parse_name(raw)
            if b is None or b.state not in ("loading", "chosen", "legacy"):
                continue
            if b.owner is None and not legacy:
                continue
            result = _recover_one(folder_b, b, owners)
            if result != LEFT_GONE:
                counts[_LEFTOVER_COUNTS[result]] += 1
        _sweep_dead_locks(folder_b, names, owners)
    finally:
        for token, (state, fd) in owners.items():
            if fd >= 0:
                close(fd)
    return counts


cdef int _sweep_dead_locks(bytes folder, list names, dict owners) except -1:
    """Remove the lock files of dead owners (each removed while its lock is held, so a live owner's
    is never taken: an owner checks, once it holds its new lock, that its file still has the name)."""
    cdef int fd
    cdef struct_stat st
    for raw in names:
        if not (raw.startswith(OWNER_LOCK_B) and raw.endswith(OWNER_LOCK_SUFFIX_B)):
            continue
        path = folder + raw
        token = os.fsdecode(raw[len(OWNER_LOCK_B):-len(OWNER_LOCK_SUFFIX_B)])
        held = owners.get(token)
        if held is not None:
            if held[0] != OWNER_DEAD:
                continue
            fd = held[1]
        else:
            fd = tq_lock_existing(path, &st)
            if fd < 0:
                continue
            owners[token] = (OWNER_DEAD, fd)
        if tq_same_file(path, fd):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    return 0


# -- One pass for the whole pool -----------------------------------------------------------------------
#
# Every consumer runs a pass each reclaim_interval; with many consumers, one pass per interval for
# the whole pool does the same work. .reclaim.lock says who runs it (flock) and when the last one
# ran (its mtime, touched at the start and at the end of a pass). It is only an economy: passes are
# safe side by side, so a lock file that cannot be used, or a holder stuck mid-pass, never stops one.

cdef bytes RECLAIM_LOCK_B = b".reclaim.lock"

# reclaim_turn()'s answers besides a descriptor.
cdef enum:
    TURN_SKIP = -1       # another consumer runs a pass now, or ran one within the interval
    TURN_UNLOCKED = -2   # run the pass without the lock (unusable lock file, or a stuck holder)


cdef int reclaim_turn(bytes folder, double interval, int mode, bint exact, bint first) except -3:
    """Whether this consumer runs the pool's recovery pass now: a locked descriptor to hand to
    end_reclaim_turn() after the pass, TURN_SKIP, or TURN_UNLOCKED. A consumer's `first` pass is
    skipped only while another runs (a restarted consumer takes its dead predecessor's batches at
    once)."""
    cdef int fd, rc
    cdef double age
    fd, st, created = open_shared_file(folder + RECLAIM_LOCK_B, mode, exact, True,
                                       "recovery passes run without it")
    if fd < 0:  # a symlink, another user's file, a read-only or full folder...
        return TURN_UNLOCKED
    try:
        with nogil:
            rc = tq_flock_nb(fd)
        age = time.time() - st.st_mtime
        if rc == TQ_LOCK_HELD:
            close(fd)
            # Held: a pass runs, unless its holder is stuck (SIGSTOPped) well past an interval.
            return TURN_SKIP if 0 <= age < 2 * interval + 1 else TURN_UNLOCKED
        if rc != 0:
            close(fd)
            return TURN_UNLOCKED
        if not (created or first) and 0 <= age < interval:  # one ran lately
            close(fd)
            return TURN_SKIP
        _touch(fd)  # the start of this pass, for whoever finds the lock held
    except BaseException:
        close(fd)
        raise
    return fd


cdef int _touch(int fd) except -1:
    try:
        os.utime(fd)  # (timestamps only: works on a full disk)
    except OSError:
        pass  # the pass runs all the same; only the economy is lost
    return 0


cdef int end_reclaim_turn(int fd) except -1:
    try:
        _touch(fd)  # the end of the pass: the next is due an interval from now
    finally:
        close(fd)
    return 0


cdef class Startup(_QueueBase):
    """Startup recovery for one queue: ``on_start_cleanup()``."""

    def __init__(self, *, root_path=None, queue_name=None):
        self._configure(dict(root_path=root_path, queue_name=queue_name))

    def on_start_cleanup(self):
        """Return batches left by dead processes to ``ready_`` (see recover_folder). Safe to run
        while other turbo-queue processes of this package run; processes of the pure-Python package
        must be stopped, since their files carry no owner lock. Returns counts of what was done."""
        counts = recover_folder(os.fsdecode(self._folder()), legacy=True)
        logger.info("turbo_queue: startup cleanup of %s: %s", os.fsdecode(self._folder()), counts)
        return counts
