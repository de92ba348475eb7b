# The batch file: its schema and pragmas, how a batch database is created (in memory or in its file),
# and how one is read, in chunks stepped in C or read-only for tools. Knows no names and no states.
#
# A batch is one SQLite database with one table, logs(log_data json), one row per event, as the
# pure-Python package writes it. docs/design.md has the measurements behind each choice here.

cdef enum:
    # Events encoded by add() are inserted in one GIL-free pass once this many are pending.
    PENDING_MAX = 256
    # Rows read from a batch in one GIL-free pass.
    CHUNK_ROWS = 1024
    # Rows per multi-row INSERT: one statement execution per group saves SQLite's per-statement work.
    INSERT_GROUP = 64
    # After a batch of fewer events, the next is made with 4 KiB pages: new pages are zeroed.
    SMALL_BATCH_EVENTS = 256

# ... or fewer rows, once this many bytes were read.
cdef size_t CHUNK_BYTES = 4 << 20
cdef bytes _INSERT_GROUP_SQL = b"INSERT INTO logs (log_data) VALUES " + b",".join([b"(?)"] * INSERT_GROUP)
cdef const char *INSERT_ONE = b"INSERT INTO logs (log_data) VALUES (?)"
cdef const char *INSERT_GROUP_SQL = _INSERT_GROUP_SQL
cdef const char *SELECT_ALL = b"SELECT log_data FROM logs"

# Built in its file (SQLite < 3.36): a rollback journal, never OFF/MEMORY/WAL, so that a crash
# mid-write leaves a readable file; no fsync per commit, publishing is what makes a batch safe.
# Statement journals in memory: with 64 KiB pages one would spill to a temporary file per batch.
_FILE_PRAGMAS = b"PRAGMA synchronous=OFF; PRAGMA journal_mode=DELETE; PRAGMA temp_store=MEMORY; "
# Built in memory: memdb hands every file but the database itself to the default VFS, so the rollback
# journal must be kept in memory too, or it would be created on disk.
_MEMORY_PRAGMAS = b"PRAGMA journal_mode=MEMORY; PRAGMA temp_store=MEMORY; "
_CREATE_TABLE = b"BEGIN; CREATE TABLE logs (log_data json)"
# (in memory, small) -> the statements that start a batch. 64 KiB pages: fewer system calls per
# batch to write and to read; 4 KiB after a small batch.
_BATCH_SQL = {
    (False, False): _FILE_PRAGMAS + b"PRAGMA page_size=65536; PRAGMA cache_size=-65536; " + _CREATE_TABLE,
    (False, True): _FILE_PRAGMAS + b"PRAGMA page_size=4096; " + _CREATE_TABLE,
    (True, False): _MEMORY_PRAGMAS + b"PRAGMA page_size=65536; " + _CREATE_TABLE,
    (True, True): _MEMORY_PRAGMAS + b"PRAGMA page_size=4096; " + _CREATE_TABLE,
}
# A batch built in memory is published once it holds this many bytes, whatever max_events_per_file
# says, so that a producer's memory stays bounded.
cdef Py_ssize_t MAX_MEMORY_BATCH_BYTES = 64 << 20
# The buffer a batch was built in is kept for the next one unless it grew past this.
cdef sqlite3_int64 MAX_KEPT_IMAGE_BYTES = 16 << 20

cdef const char *FAST_VFS = NULL
# "unix-none" skips SQLite's own file locking: the rename protocol already guarantees that only
# one process writes a loading_ file and only one reads a chosen_ one.
if sqlite3_vfs_find(b"unix-none") != NULL:
    FAST_VFS = b"unix-none"

SQLITE_VERSION = sqlite3_libversion().decode()


def _sqlite_options():
    cdef int i = 0
    cdef list out = []
    while sqlite3_compileoption_get(i) != NULL:
        out.append(sqlite3_compileoption_get(i).decode())
        i += 1
    return tuple(out)


# The options the SQLite in use was compiled with (without the SQLITE_ prefix): which one a wheel
# carries, and whether it is the tuned one compiled into the extension (see setup.py).
SQLITE_OPTIONS = _sqlite_options()

# Whether this SQLite can build batches in memory (the default where it can): one file created per
# batch instead of three, written in one go when the batch is published.
MEMDB_AVAILABLE = bool(TQ_HAVE_MEMDB and sqlite3_vfs_find(b"memdb") != NULL)
cdef bint _memory_batches = MEMDB_AVAILABLE


def batch_build():
    """Where new batches are built now: "memory" or "file" (see set_batch_build)."""
    return "memory" if _memory_batches else "file"


def set_batch_build(str where):
    """Test hook: build new batches in "memory" (the default where SQLite has memdb) or in the
    "file" (what older SQLite does). Also TURBO_QUEUE_BATCH_BUILD=file. Returns the previous one."""
    global _memory_batches
    previous = batch_build()
    if where not in ("memory", "file"):
        raise ValueError(f"unknown batch build {where!r}")
    if where == "memory" and not MEMDB_AVAILABLE:
        raise RuntimeError(f"SQLite {SQLITE_VERSION} has no memdb VFS")
    _memory_batches = where == "memory"
    return previous


if os.environ.get("TURBO_QUEUE_BATCH_BUILD"):
    set_batch_build(os.environ["TURBO_QUEUE_BATCH_BUILD"])


cdef int _create_batch_db(const char *path, bint in_memory, const char *sql, sqlite3 **db,
                          unsigned char **buf, sqlite3_int64 *cap) noexcept nogil:
    """Open a new batch's database, in memory (in *buf) or in the file `path`, and start it with
    `sql` (_BATCH_SQL). Returns an SQLite code; *db is set even on failure, to be closed."""
    cdef int rc
    if in_memory:
        rc = tq_open_memory_batch(db, buf, cap)
    else:
        rc = sqlite3_open_v2(path, db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW,
                             FAST_VFS)
    if rc == SQLITE_OK:
        rc = sqlite3_exec(db[0], sql, NULL, NULL, NULL)
    return rc


cdef int _max_value_length():
    cdef sqlite3 *db = NULL
    cdef int limit = 1000000000
    if sqlite3_open_v2(b":memory:", &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK:
        limit = sqlite3_limit(db, SQLITE_LIMIT_LENGTH, -1)
    sqlite3_close_v2(db)
    return limit

cdef Py_ssize_t MAX_EVENT_BYTES = _max_value_length()


# -- Reading ------------------------------------------------------------------------------------------

cdef struct _Row:
    int kind
    size_t offset
    size_t size
    int64_t ival
    double dval


cdef struct _Chunk:
    _Row *rows
    Py_ssize_t nrows
    char *buf
    size_t used
    size_t cap


cdef int _read_chunk(sqlite3_stmt *st, _Chunk *c) noexcept nogil:
    """Step up to CHUNK_ROWS rows into `c`. Returns SQLITE_ROW if rows may remain, SQLITE_DONE at
    the end, another SQLite code on error, or -1 when out of memory."""
    cdef int rc, kind, size
    cdef const void *p
    cdef _Row *r
    cdef char *grown
    cdef size_t cap
    c.nrows = 0
    c.used = 0
    while c.nrows < CHUNK_ROWS and c.used < CHUNK_BYTES:
        rc = sqlite3_step(st)
        if rc != SQLITE_ROW:
            return rc
        r = &c.rows[c.nrows]
        kind = sqlite3_column_type(st, 0)
        r.kind = kind
        if kind == SQLITE_BLOB or kind == SQLITE_TEXT:
            p = sqlite3_column_blob(st, 0)
            size = sqlite3_column_bytes(st, 0)
            if c.used + size > c.cap:
                cap = c.cap * 2 if c.cap else 65536
                while cap < c.used + size:
                    cap *= 2
                grown = <char *>realloc(c.buf, cap)
                if grown == NULL:
                    return -1
                c.buf = grown
                c.cap = cap
            if size:
                memcpy(c.buf + c.used, p, size)
            r.offset = c.used
            r.size = size
            c.used += size
        elif kind == SQLITE_INTEGER:
            r.ival = sqlite3_column_int64(st, 0)
        elif kind == SQLITE_FLOAT:
            r.dval = sqlite3_column_double(st, 0)
        c.nrows += 1
    return SQLITE_ROW



cdef enum:
    # The answer of the checks below for a file that is no batch: not SQLite, a WAL database, or
    # another schema. Such a file is quarantined without SQLite ever writing to it or beside it.
    NOT_A_BATCH = -100

# Exactly one object, the table logs: no view, trigger, index or virtual table runs when a batch is
# read. (A plain statement, checked in C: parsing an aggregate cost a one-event batch more.)
cdef const char *SCHEMA_CHECK = b"SELECT name, sql FROM sqlite_master"


cdef int _check_header(int fd) noexcept nogil:
    """SQLITE_OK when the open file `fd` starts as an SQLite database in rollback-journal mode (a
    batch never uses WAL, which would make SQLite create files beside it), else NOT_A_BATCH."""
    cdef unsigned char head[100]
    if pread(fd, head, 100, 0) != 100 or memcmp(head, b"SQLite format 3\0", 16) != 0:
        return NOT_A_BATCH
    # Bytes 18 and 19: the file format's write and read versions, 1 for rollback, 2 for WAL.
    if head[18] != 1 or head[19] != 1:
        return NOT_A_BATCH
    return SQLITE_OK


cdef int _check_schema(sqlite3 *db) noexcept nogil:
    cdef sqlite3_stmt *st = NULL
    cdef const char *name
    cdef const char *sql
    cdef int rc = sqlite3_prepare_v2(db, SCHEMA_CHECK, -1, &st, NULL)
    if rc == SQLITE_OK:
        rc = sqlite3_step(st)
        if rc == SQLITE_ROW:
            name = <const char *>sqlite3_column_text(st, 0)
            sql = <const char *>sqlite3_column_text(st, 1)
            rc = (SQLITE_OK if name != NULL and sql != NULL and strcmp(name, b"logs") == 0
                  and strncmp(sql, b"CREATE TABLE ", 13) == 0 else NOT_A_BATCH)
            if rc == SQLITE_OK and sqlite3_step(st) != SQLITE_DONE:
                rc = NOT_A_BATCH  # another object beside it
        elif rc == SQLITE_DONE:
            rc = NOT_A_BATCH  # no table at all
    sqlite3_finalize(st)
    return rc


cdef int _open_for_reading(const char *path, sqlite3 **db, sqlite3_stmt **sel) noexcept nogil:
    """Open a batch read-only, check its schema, and prepare the statement that reads its rows in
    order. Returns an SQLite code or NOT_A_BATCH; *db is set even on failure, to be closed. Check
    the file first (tq_open_regular, _check_header): SQLite opens it again by name."""
    cdef int rc = sqlite3_open_v2(path, db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW,
                                  FAST_VFS)
    if rc == SQLITE_OK:
        rc = _check_schema(db[0])
    if rc == SQLITE_OK:
        rc = sqlite3_prepare_v2(db[0], SELECT_ALL, -1, sel, NULL)
    return rc


cdef int _open_checked(const char *path, sqlite3 **db, sqlite3_stmt **sel, int *sys_err) noexcept nogil:
    """_open_for_reading for tools, which lock nothing: the file is checked first through a
    descriptor of its own (no symlink followed, no FIFO opened by SQLite). TQ_NOT_REGULAR, or
    TQ_ERROR with errno in *sys_err, when it cannot be opened at all."""
    cdef struct_stat st
    cdef int fd = tq_open_regular(path, 0, &st), rc
    if fd < 0:
        sys_err[0] = errno
        return fd
    rc = _check_header(fd)
    close(fd)
    if rc == SQLITE_OK:
        rc = _open_for_reading(path, db, sel)
    return rc


cdef bytes _stored_bytes(_Row *r, const char *buf):
    """A row's value as the bytes a serializer reads. Numbers are what the pure-Python package
    stored through the json column's NUMERIC affinity: their text."""
    if r.kind == SQLITE_BLOB or r.kind == SQLITE_TEXT:
        return PyBytes_FromStringAndSize(buf + r.offset, r.size)
    if r.kind == SQLITE_INTEGER:
        return repr(r.ival).encode()
    if r.kind == SQLITE_FLOAT:
        return repr(r.dval).encode()
    return b"null"


def read_batch(path, Py_ssize_t limit=-1):
    """The stored values of a batch file, oldest first (at most `limit`; -1: all), read-only through
    the core's own SQLite, without claiming or changing anything. Raises CorruptBatchError (or the
    OSError) when the file cannot be read as a batch."""
    cdef bytes p = os.fsencode(path)
    cdef const char *cp = p
    cdef sqlite3 *db = NULL
    cdef sqlite3_stmt *sel = NULL
    cdef _Chunk chunk
    cdef int rc, sys_err = 0
    cdef Py_ssize_t i
    cdef list out = []
    chunk.rows = <_Row *>malloc(CHUNK_ROWS * sizeof(_Row))
    chunk.buf = NULL
    chunk.cap = 0
    if chunk.rows == NULL:
        raise MemoryError()
    try:
        with nogil:
            rc = _open_checked(cp, &db, &sel, &sys_err)
        if rc < 0:
            raise _unreadable_batch(rc, sys_err, p)
        while rc == SQLITE_OK or rc == SQLITE_ROW:
            with nogil:
                rc = _read_chunk(sel, &chunk)
            for i in range(chunk.nrows):
                if limit >= 0 and len(out) >= limit:
                    return out
                out.append(_stored_bytes(&chunk.rows[i], chunk.buf))
        if rc == -1:
            raise MemoryError(f"turbo_queue: out of memory reading {os.fsdecode(p)}")
        if rc != SQLITE_DONE:
            sys_err = sqlite3_system_errno(db) if db != NULL else 0
            raise sqlite_error(rc, db, sys_err, "read batch", p)
        return out
    finally:
        sqlite3_finalize(sel)
        sqlite3_close_v2(db)
        free(chunk.rows)
        free(chunk.buf)


def count_batch_rows(path):
    """The events in a batch file, counted read-only through the core's own SQLite."""
    cdef bytes p = os.fsencode(path)
    cdef const char *cp = p
    cdef sqlite3 *db = NULL
    cdef sqlite3_stmt *sel = NULL
    cdef sqlite3_stmt *st = NULL
    cdef int rc, sys_err = 0
    cdef long long n = 0
    with nogil:
        rc = _open_checked(cp, &db, &sel, &sys_err)
        if rc == SQLITE_OK:
            rc = sqlite3_prepare_v2(db, b"SELECT count(*) FROM logs", -1, &st, NULL)
        if rc == SQLITE_OK:
            rc = sqlite3_step(st)
        if rc == SQLITE_ROW:
            n = sqlite3_column_int64(st, 0)
    if rc < 0:
        raise _unreadable_batch(rc, sys_err, p)
    try:
        if rc != SQLITE_ROW:
            sys_err = sqlite3_system_errno(db) if db != NULL else 0
            raise sqlite_error(rc, db, sys_err, "count the events of batch", p)
        return n
    finally:
        sqlite3_finalize(sel)
        sqlite3_finalize(st)
        sqlite3_close_v2(db)


cdef object _unreadable_batch(int rc, int sys_err, bytes path):
    if rc == NOT_A_BATCH or rc == TQ_NOT_REGULAR or sys_err in (ELOOP, ENXIO):
        return CorruptBatchError(f"turbo_queue: {os.fsdecode(path)} is not a batch (not a regular "
                                 f"SQLite file in rollback mode with the one table logs)",
                                 rc, os.fsdecode(path))
    return os_error(sys_err, "open batch", path)
