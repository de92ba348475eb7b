# Recovery: batches whose owner died go back to ready_ (at startup, and in every consumer's periodic
# reclaim pass), unreadable ones are quarantined, nothing is ever deleted that holds an event.

cdef long long _count_rows(bytes path, bint missing_table_is_empty) except -2:
    """Open a leftover batch under its own name (SQLite rolls back a hot journal), check it and count
    its rows. Returns the count, or -1 when the file cannot be read as a batch; raises when the
    environment, not the file, failed (see sqlite_fault)."""
    cdef sqlite3 *db = NULL
    cdef sqlite3_stmt *st = NULL
    cdef int rc, sys_err = 0
    cdef const char *cpath = path
    with nogil:
        rc = sqlite3_open_v2(cpath, &db, SQLITE_OPEN_READWRITE, NULL)
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
                rc = sqlite3_prepare_v2(db, b"SELECT count(*) FROM logs", -1, &st, NULL)
                if rc == SQLITE_OK:
                    rc = sqlite3_step(st)
            if rc == SQLITE_ROW:
                return sqlite3_column_int64(st, 0)
            if missing_table_is_empty and b"no such table" in sqlite3_errmsg(db):
                return 0
            return -1
        if sqlite_fault(rc) == FAULT_ENVIRONMENT:
            raise sqlite_error(rc, db, sys_err, "recover", path)
        return -1
    finally:
        sqlite3_finalize(st)
        sqlite3_close_v2(db)


cdef bint _unfinished_image(bytes path) except -1:
    """A file that a producer was writing from memory when it died: SQLite's magic string, written
    last (tq_write_image_magic), is still zeros."""
    try:
        with open(path, "rb") as f:
            return f.read(16) == bytes(16)
    except FileNotFoundError:
        return False


cdef str _recover_one(bytes folder, BatchName b):
    """Turn one leftover file into a ready_ batch. Returns what happened: a key of recover_folder's
    counts, or "gone"."""
    cdef bytes src = folder + os.fsencode(b.name)
    cdef long long n
    try:
        size = os.stat(src).st_size
    except FileNotFoundError:
        return "gone"
    if b.state == "loading" and size > 0 and _is_own_loading(b.rest) and _unfinished_image(src):
        try:
            os.unlink(src)
        except FileNotFoundError:
            return "gone"
        logger.warning("turbo_queue: removed %s: its producer died while writing it, before "
                       "publishing it (%d bytes, never published)", os.fsdecode(src), size)
        return "unfinished"
    try:
        n = _count_rows(src, b.state == "loading" or size == 0 and b.state != "chosen")
    except FileNotFoundError:
        return "gone"
    if n < 0:
        return "quarantined" if quarantine(folder, b.name, "not a readable batch") else "gone"
    if n == 0:
        # A producer that died before its first commit leaves an empty file: nothing to deliver.
        for suffix in (b"", b"-journal"):
            try:
                os.unlink(src + suffix)
            except FileNotFoundError:
                pass
        logger.info("turbo_queue: removed empty leftover batch %s", os.fsdecode(src))
        return "empty"
    return publish_leftover(folder, b.name, b.rest, b.state, n)


def recover_folder(folder, *, legacy=True):
    """Return the batches of dead producers and consumers in `folder` to ``ready_``.

    Safe beside live processes: a ``loading_`` or ``chosen_`` file whose owner still holds its lock
    is left alone. Names written by the pure-Python package carry no owner, so they are recovered
    only when ``legacy`` is true (at startup, when those processes must be stopped). Unreadable
    files are renamed ``invalid_...`` and logged, never deleted, except a ``loading_`` batch that its
    producer was still writing when it died ("unfinished": never published). Returns counts of what
    was done.
    """
    cdef bytes folder_b = os.fsencode(os.path.join(os.fspath(folder), ""))
    cdef BatchName b
    counts = {"published": 0, "empty": 0, "unfinished": 0, "quarantined": 0, "skipped_live": 0}
    try:
        names = sorted(os.listdir(folder_b))
    except FileNotFoundError:
        return counts
    held = {}  # token -> fd holding a dead owner's lock while its files are handled
    try:
        for raw in names:
            b = parse_name(raw)
            if b is None or b.state not in ("loading", "chosen", "legacy"):
                continue
            if b.owner is not None:
                if b.owner not in held:
                    held[b.owner] = _lock_dead_owner(folder_b, b.owner)
                if held[b.owner] is None:
                    counts["skipped_live"] += 1
                    continue
            elif not legacy:
                continue
            result = _recover_one(folder_b, b)
            if result in counts:
                counts[result] += 1
    finally:
        for token, fd in held.items():
            if fd is not None and fd != NO_LOCK_FILE:
                os.unlink(_owner_lock_path(folder_b, token))
                os.close(fd)
    return counts


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
