# cython: language_level=3, embedsignature=True, auto_pickle=False, autotestdict=False
"""The compiled core of turbo_queue.

A queue is a folder of SQLite files, one batch of events each. Processes coordinate only through
file names and rename(2):

    loading_<epoch>_<id>.db  ->  ready_<epoch>_<id>.db  ->  chosen_<epoch>_<id>.db_<owner>  ->  deleted

Producers (``Enqueue``) write a batch in one transaction through one prepared INSERT and publish it
by renaming it to ``ready_``. Consumers (``Dequeue``) claim the oldest ready batch with a single
rename and read it in chunks stepped in C. Each producer and consumer holds an flock()ed
``.owner_<token>.lock`` file for as long as it lives; its token is in the names of the files it
owns, so any process can tell a dead owner (the kernel dropped its lock) from a slow one.
"""

import atexit
import gc
import json as _stdjson
import logging
import math
import os
import pickle as _pickle
import re
import secrets
import signal
import threading
import time
import weakref

import orjson

from turbo_queue.errors import (
    CorruptBatchError,
    DecodeError,
    EventTooLargeError,
    SQLiteError,
    TurboQueueError,
)

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject
from libc.math cimport isfinite
from cpython.pythread cimport (
    NOWAIT_LOCK,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
    PyThread_type_lock,
)
from libc.errno cimport EEXIST, EIO, ENOENT, ENOSPC, errno
from libc.stdint cimport int64_t
from libc.stdio cimport rename
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy
from posix.unistd cimport close, unlink

from turbo_queue._capi cimport *

logger = logging.getLogger("turbo_queue")

SERIALIZERS = ("json", "raw", "text", "pickle", "msgpack", "auto")
DURABILITY = ("process", "os")

cdef enum:
    S_JSON = 0
    S_RAW = 1
    S_TEXT = 2
    S_PICKLE = 3
    S_MSGPACK = 4
    S_AUTO = 5
    S_CUSTOM = 6

cdef enum:
    # Events encoded by add() are inserted in one GIL-free pass once this many are pending.
    PENDING_MAX = 256
    # Rows read from a batch in one GIL-free pass.
    CHUNK_ROWS = 1024
    # Rows per multi-row INSERT: one statement execution per group saves SQLite's per-statement
    # work (about 40% of an insert's instructions, measured with callgrind).
    INSERT_GROUP = 64

# ... or fewer rows, once this many bytes were read.
cdef size_t CHUNK_BYTES = 4 << 20
cdef bytes _INSERT_GROUP_SQL = b"INSERT INTO logs (log_data) VALUES " + b",".join([b"(?)"] * INSERT_GROUP)
cdef const char *INSERT_ONE = b"INSERT INTO logs (log_data) VALUES (?)"
cdef const char *INSERT_GROUP_SQL = _INSERT_GROUP_SQL
# How a batch is built. By default in memory (SQLite's "memdb" VFS), then written to its loading_
# file in one go when it is published (tq_write_image_body, then _magic): one file created per
# batch, where building it in the file also created and deleted a rollback journal. File creation is
# the dominant cost of a small batch on some file systems (ext4 without a journal scans recently
# deleted inodes on every create: 40% of a producer's CPU at 1,000 events per batch, measured with
# perf). Nothing is lost by it: a batch is safe only once published, in memory or not, and a process
# killed while writing the image leaves a file that recovery recognises as unfinished.
#
# Where SQLite is older than 3.36 the batch is built in the file itself, with a rollback journal
# (never OFF/MEMORY/WAL there: a crash mid-write must leave a readable file) and no fsync per commit:
# publishing is what makes a batch safe. Statement journals stay in memory in both cases (with 64 KiB
# pages one would otherwise spill to a temporary file per batch).
#
# 64 KiB pages: fewer write and read system calls per batch (for 100-byte events, 30% less CPU per
# event than 4 KiB pages to write, 45% less to read, measured with getrusage). But each new page is
# zeroed, so a batch of a few events costs far more with them: after a small batch, a producer makes
# the next one with 4 KiB pages (SMALL_BATCH_EVENTS).
#
# In memory, the rollback journal is kept in memory too: memdb passes every file but the database
# itself on to the default VFS, which would create it on disk.
_FILE_PRAGMAS = b"PRAGMA synchronous=OFF; PRAGMA journal_mode=DELETE; PRAGMA temp_store=MEMORY; "
_MEMORY_PRAGMAS = b"PRAGMA journal_mode=MEMORY; PRAGMA temp_store=MEMORY; "
_CREATE_TABLE = b"BEGIN; CREATE TABLE logs (log_data json)"
# (in memory, small) -> the statements that start a batch.
_BATCH_SQL = {
    (False, False): _FILE_PRAGMAS + b"PRAGMA page_size=65536; PRAGMA cache_size=-65536; " + _CREATE_TABLE,
    (False, True): _FILE_PRAGMAS + b"PRAGMA page_size=4096; " + _CREATE_TABLE,
    (True, False): _MEMORY_PRAGMAS + b"PRAGMA page_size=65536; " + _CREATE_TABLE,
    (True, True): _MEMORY_PRAGMAS + b"PRAGMA page_size=4096; " + _CREATE_TABLE,
}
# A batch built in memory is published once it holds this many bytes of events, whatever
# max_events_per_file says, so that a producer's memory stays bounded (events of 1 MB with
# max_events_per_file=100000 would otherwise make a 100 GB batch).
cdef Py_ssize_t MAX_MEMORY_BATCH_BYTES = 64 << 20
# The buffer a batch was built in is kept for the next one unless it grew past this.
cdef sqlite3_int64 MAX_KEPT_IMAGE_BYTES = 16 << 20
cdef enum:
    SMALL_BATCH_EVENTS = 256

# The names we write: <epoch seconds>_<nanoseconds, 9 digits>-<owner token>.db. The nanoseconds
# keep one producer's batches in publish order and batches of one second oldest first.
_OWN_BATCH = re.compile(r"^(\d+_\d{9}-([0-9a-f]{12})\.db)$")
_OWN_CHOSEN = re.compile(r"^(\d+_.+\.db)_([0-9a-f]{12})$")
_BATCH_REST = re.compile(r"^\d+_.+\.db$")
_EVENT_COUNT = re.compile(r"-n(\d+)\.db$")


def events_in_name(name):
    """The event count a ready_ name carries (ours do), or None."""
    m = _EVENT_COUNT.search(os.fsdecode(name))
    return int(m.group(1)) if m else None

cdef const char *FAST_VFS = NULL
# "unix-none" skips SQLite's own file locking: the rename protocol already guarantees that only
# one process writes a loading_ file and only one reads a chosen_ one.
if sqlite3_vfs_find(b"unix-none") != NULL:
    FAST_VFS = b"unix-none"

# Whether this SQLite can build batches in memory (the default where it can).
_MEMDB_AVAILABLE = bool(TQ_HAVE_MEMDB and sqlite3_vfs_find(b"memdb") != NULL)
cdef bint _memory_batches = _MEMDB_AVAILABLE


def _batch_build():
    """Where new batches are built now: "memory" or "file" (see _set_batch_build)."""
    return "memory" if _memory_batches else "file"


def _set_batch_build(str where):
    """Test hook: build new batches in "memory" (the default where SQLite has memdb) or in the
    "file" (what older SQLite does). Also TURBO_QUEUE_BATCH_BUILD=file. Returns the previous one."""
    global _memory_batches
    previous = _batch_build()
    if where not in ("memory", "file"):
        raise ValueError(f"unknown batch build {where!r}")
    if where == "memory" and not _MEMDB_AVAILABLE:
        raise RuntimeError(f"SQLite {sqlite3_libversion().decode()} has no memdb VFS")
    _memory_batches = where == "memory"
    return previous


if os.environ.get("TURBO_QUEUE_BATCH_BUILD"):
    _set_batch_build(os.environ["TURBO_QUEUE_BATCH_BUILD"])


cdef int _create_batch_db(const char *path, bint in_memory, const char *sql, sqlite3 **db,
                          unsigned char **buf, sqlite3_int64 *cap) noexcept nogil:
    """Open a new batch's database, in memory (in *buf) or in the file `path`, and start it with
    `sql` (_BATCH_SQL). Returns an SQLite code; *db is set even on failure, to be closed."""
    cdef int rc
    if in_memory:
        rc = tq_open_memory_batch(db, buf, cap)
    else:
        rc = sqlite3_open_v2(path, db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
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

SQLITE_VERSION = sqlite3_libversion().decode()


# ----------------------------------------------------------------------------------------------
# Test hook for crash tests: SIGKILL this process the n-th time it reaches a step. Set with
# _set_crash_point() or TURBO_QUEUE_CRASH_AT=step:n; costs one pointer comparison per step otherwise.

CRASH_POINTS = ("add", "insert", "commit", "write", "publish", "published", "claim", "read",
                "delete", "recover")
cdef object _crash_at = None
cdef long _crash_countdown = 0


def _set_crash_point(point, after=1):
    global _crash_at, _crash_countdown
    if point is not None and point not in CRASH_POINTS:
        raise ValueError(f"unknown crash point {point!r}")
    _crash_at = point
    _crash_countdown = after


cdef inline int _step(str point) except -1:
    global _crash_countdown
    if _crash_at is not None and _crash_at == point:
        _crash_countdown -= 1
        if _crash_countdown <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
    return 0


if os.environ.get("TURBO_QUEUE_CRASH_AT"):
    _p, _, _n = os.environ["TURBO_QUEUE_CRASH_AT"].partition(":")
    _set_crash_point(_p, int(_n or 1))


# ----------------------------------------------------------------------------------------------
# One error path: every OS and SQLite failure becomes an exception naming the file and a remedy.

_HINTS = {
    28: "the file system holding the queue is full: free space or point root_path elsewhere",
    13: "check the folder's owner and permissions, or choose another root_path",
    1: "check the folder's owner and permissions, or choose another root_path",
    30: "the file system is read-only: choose another root_path",
    122: "the disk quota is exhausted: free space or raise the quota",
    24: "too many open files: raise the limit (ulimit -n)",
}


cdef int raise_os(int err, str action, object path) except -1:
    cdef str where = os.fsdecode(path) if path is not None else "?"
    cdef str msg = f"turbo_queue: cannot {action} {where}: {os.strerror(err)}"
    hint = _HINTS.get(err)
    if hint:
        msg += f" ({hint})"
    raise OSError(err, msg, where)


cdef int raise_sqlite(int rc, sqlite3 *db, int sys_err, str action, object path) except -1:
    """Raise the exception for SQLite result `rc`. Call while `db` is still open."""
    cdef int primary = rc & 0xFF
    cdef str where = os.fsdecode(path) if path is not None else "?"
    detail = (sqlite3_errmsg(db) if db != NULL else sqlite3_errstr(rc)).decode("utf-8", "replace")
    if primary == SQLITE_FULL and sys_err == 0:
        sys_err = ENOSPC
    if sys_err and primary in (SQLITE_CANTOPEN, SQLITE_IOERR, SQLITE_PERM, SQLITE_READONLY,
                               SQLITE_FULL):
        raise_os(sys_err, f"{action} (SQLite: {detail})", path)
    if primary in (SQLITE_CORRUPT, SQLITE_NOTADB):
        raise CorruptBatchError(
            f"turbo_queue: {where} is not a readable batch ({action}: {detail})", rc, where)
    if primary == SQLITE_TOOBIG:
        raise EventTooLargeError(f"turbo_queue: {action} {where}: {detail}")
    raise SQLiteError(f"turbo_queue: cannot {action} {where}: {detail} (SQLite code {rc})",
                      rc, where)


# ----------------------------------------------------------------------------------------------
# Serializers. The default "json" writes what the original package writes (json.dumps text) and
# reads what it reads, using orjson wherever orjson gives the same value back.

cdef object _orjson_dumps = orjson.dumps
cdef object _orjson_loads = orjson.loads
cdef object _std_dumps = _stdjson.dumps
cdef object _std_loads = _stdjson.loads
cdef object _gc_isenabled = gc.isenabled
cdef object _gc_disable = gc.disable
cdef object _gc_enable = gc.enable
cdef object _pickle_dumps = _pickle.dumps
cdef object _pickle_loads = _pickle.loads
cdef object ORJSON_OPTS = (orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
                           | orjson.OPT_PASSTHROUGH_SUBCLASS)
cdef object _msgpack_packb = None
cdef object _msgpack_unpackb = None


cdef bint _has_nonfinite(object v, int depth):
    # Only reached when orjson wrote a null: was it a None, or a NaN/Infinity it turned into null?
    if isinstance(v, float):
        return not math.isfinite(v)
    if depth > 200:
        return True
    if isinstance(v, dict):
        for x in (<dict>v).values():
            if _has_nonfinite(x, depth + 1):
                return True
    elif isinstance(v, (list, tuple)):
        for x in v:
            if _has_nonfinite(x, depth + 1):
                return True
    return False


cdef bytes _json_encode(object value):
    cdef bytes b
    try:
        b = _orjson_dumps(value, None, ORJSON_OPTS)
    except TypeError:
        # Non-str keys, integers beyond 64 bits, str subclasses, invalid surrogates...: the
        # standard library handles them as the original does, or raises TypeError naming the type.
        return (<str>_std_dumps(value)).encode("ascii")
    if tq_has_null_token(PyBytes_AS_STRING(b), <size_t>PyBytes_GET_SIZE(b)) and _has_nonfinite(value, 0):
        return (<str>_std_dumps(value)).encode("ascii")
    return b


cdef object _json_decode(bytes b):
    cdef const char *p = PyBytes_AS_STRING(b)
    cdef size_t n = <size_t>PyBytes_GET_SIZE(b)
    # orjson reads integers beyond 64 bits as floats; the standard library keeps them exact. Any run
    # of 19+ digits goes to the standard library (always correct, only slower).
    if tq_has_digit_run(p, n, 19):
        return _std_loads(b)
    try:
        return _orjson_loads(b)
    except ValueError:
        # NaN, Infinity, lone surrogates, deep nesting: as the standard library reads them.
        return _std_loads(b)


# "auto": JSON (orjson) for values that come back from it exactly as pickle would give them back:
# dicts with str keys, lists, str, 64-bit int, finite float, bool and None, nested at most
# AUTO_MAX_DEPTH deep, and no container twice (pickle keeps shared and recursive references, JSON
# would copy them). Anything else is pickled. Pickle's protocol 2+ output starts with 0x80, which no
# JSON text does, so a reader tells them apart by the first byte, and folders written with "pickle"
# read back unchanged. For a small dict event JSON costs about a third of pickle, both ways.
cdef enum:
    AUTO_MAX_DEPTH = 64


cdef bint _json_exact(object v, int depth, set seen) except -1:
    cdef type t = type(v)
    cdef int overflow = 0
    cdef Py_ssize_t pos = 0
    cdef PyObject *k
    cdef PyObject *x
    if t is str or t is bool or v is None:
        return True
    if t is int:
        PyLong_AsLongLongAndOverflow(v, &overflow)
        return overflow == 0
    if t is float:
        return isfinite(PyFloat_AS_DOUBLE(v))
    if (t is not dict and t is not list) or depth >= AUTO_MAX_DEPTH:
        return False
    if depth > 0:
        # `seen` holds every container above and beside this one (it is made, holding the top
        # one, when the first nested container is met): one met twice is shared or recursive.
        if id(v) in seen:
            return False
        seen.add(id(v))
    if t is dict:
        while PyDict_Next(v, &pos, &k, &x):
            if type(<object>k) is not str:
                return False
            if seen is None and (type(<object>x) is dict or type(<object>x) is list):
                seen = {id(v)}
            if not _json_exact(<object>x, depth + 1, seen):
                return False
        return True
    for item in <list>v:
        if seen is None and (type(item) is dict or type(item) is list):
            seen = {id(v)}
        if not _json_exact(item, depth + 1, seen):
            return False
    return True


cdef bytes _auto_encode(object value):
    if _json_exact(value, 0, None):
        try:
            return _orjson_dumps(value)
        except TypeError:  # a str with lone surrogates: not UTF-8, so pickle it
            pass
    return _pickle_encode(value)


cdef bytes _pickle_encode(object value):
    try:
        return _pickle_dumps(value, 5)
    except Exception as e:
        raise TypeError(f"turbo_queue: cannot pickle a {type(value).__name__}: {e}") from e


cdef bytes _encode(int kind, object value, object custom):
    if kind == S_JSON:
        return _json_encode(value)
    if kind == S_RAW:
        if type(value) is bytes:
            return <bytes>value
        if isinstance(value, str):
            return (<str>value).encode("utf-8", "surrogatepass")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        raise TypeError(f"turbo_queue: serializer 'raw' takes bytes or str, not {type(value).__name__}")
    if kind == S_TEXT:
        if isinstance(value, str):
            return (<str>value).encode("utf-8", "surrogatepass")
        raise TypeError(f"turbo_queue: serializer 'text' takes str, not {type(value).__name__}")
    if kind == S_AUTO:
        return _auto_encode(value)
    if kind == S_PICKLE:
        return _pickle_encode(value)
    if kind == S_MSGPACK:
        return _msgpack_packb(value)
    out = custom.dumps(value)
    if type(out) is not bytes:
        raise TypeError(f"turbo_queue: {custom!r}.dumps() must return bytes, not {type(out).__name__}")
    return <bytes>out


cdef object _decode(int kind, bytes b, object custom):
    if kind == S_JSON:
        return _json_decode(b)
    if kind == S_RAW:
        return b
    if kind == S_TEXT:
        return b.decode("utf-8", "surrogatepass")
    if kind == S_AUTO:
        if PyBytes_GET_SIZE(b) and <unsigned char>PyBytes_AS_STRING(b)[0] == 0x80:
            return _pickle_loads(b)
        return _json_decode(b)
    if kind == S_PICKLE:
        return _pickle_loads(b)
    if kind == S_MSGPACK:
        return _msgpack_unpackb(b, raw=False, strict_map_key=False)
    return custom.loads(b)


def _decode_value(serializer, bytes value):
    """Decode one stored value with a serializer given by name or object (for tools)."""
    cdef int kind = _serializer_kind(serializer)
    return _decode(kind, value, serializer if kind == S_CUSTOM else None)


cdef int _serializer_kind(object serializer) except -1:
    global _msgpack_packb, _msgpack_unpackb
    if isinstance(serializer, str):
        if serializer == "msgpack" and _msgpack_packb is None:
            try:
                import msgpack
            except ImportError:
                raise ValueError("turbo_queue: serializer 'msgpack' needs the msgpack package: "
                                 "pip install 'turbo-queue[msgpack]'") from None
            _msgpack_packb = msgpack.packb
            _msgpack_unpackb = msgpack.unpackb
        try:
            return SERIALIZERS.index(serializer)
        except ValueError:
            pass
    elif callable(getattr(serializer, "dumps", None)) and callable(getattr(serializer, "loads", None)):
        return S_CUSTOM
    raise ValueError(f"turbo_queue: serializer must be one of {', '.join(SERIALIZERS)} or an object "
                     f"with dumps() and loads(), not {serializer!r}")


# ----------------------------------------------------------------------------------------------
# Owner locks.

cdef class _Owner:
    """An flock()ed `.owner_<token>.lock` file in one queue folder, held while its owner lives."""
    cdef readonly str token
    cdef int fd
    cdef bytes path
    cdef bytes folder

    def __cinit__(self):
        self.fd = -1

    cdef int acquire(self, bytes folder) except -1:
        cdef int fd, err
        cdef bytes path
        cdef const char *cpath
        if self.fd >= 0:
            if folder == self.folder:
                return 0
            self.release()
        while True:
            token = secrets.token_hex(6)
            path = folder + b".owner_" + token.encode() + b".lock"
            cpath = path
            with nogil:
                fd = tq_lock_file(cpath, 1)
                err = errno
            if fd >= 0:
                break
            if fd == -1:
                raise_os(err, "create the owner lock file", path)
        self.fd, self.path, self.folder, self.token = fd, path, folder, token
        return 0

    cdef void release(self) noexcept:
        if self.fd >= 0:
            unlink(self.path)
            close(self.fd)
            self.fd = -1
            self.token = None

    cdef void forget(self) noexcept:
        # After fork(): the lock belongs to the parent; the child only drops its copy of the fd.
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
            self.token = None


cdef object _lock_dead_owner(bytes folder, str token):
    """Return an open descriptor holding `token`'s lock if its owner is dead, -1 if no lock file is
    left (its owner is dead and was cleaned up), or None while the owner is alive."""
    cdef bytes path = folder + b".owner_" + token.encode() + b".lock"
    cdef int fd, err
    cdef const char *cpath = path
    with nogil:
        fd = tq_lock_file(cpath, 0)
        err = errno
    if fd >= 0:
        return fd
    if fd == -2:
        return None
    if err == ENOENT:
        return -1
    raise_os(err, "check the owner lock file", path)


# ----------------------------------------------------------------------------------------------
# Recovery of batches whose owner died.

def _classify(str name):
    """(kind, rest, token) for a leftover file name, or None. `rest` is `<epoch>_<id>.db`; `token` is
    our owner token, or None for names written by the pure-Python package."""
    if name.endswith(("-journal", "-wal", "-shm")):
        return None  # SQLite's side files go with their batch, never on their own
    if name.startswith("loading_"):
        rest = name[8:]
        m = _OWN_BATCH.match(rest)
        return ("loading", rest, m.group(2) if m else None)
    if name.startswith("chosen_"):
        rest = name[7:]
        m = _OWN_CHOSEN.match(rest)
        if m:
            return ("chosen", m.group(1), m.group(2))
        return ("chosen", rest, None)
    for prefix in ("load_", "unload_", "avail_", "assigned_"):
        if name.startswith(prefix):
            return ("legacy", name[len(prefix):], None)
    if name.startswith("ready_") and name.endswith("_temp_hold"):
        return ("legacy", name[6:-10], None)
    return None


cdef int _count_rows(bytes path, bint missing_table_is_empty) except -2:
    """Open a leftover batch under its own name (SQLite rolls back a hot journal), check it and count
    its rows. Returns the count, or -1 when the file cannot be read as a batch."""
    cdef sqlite3 *db = NULL
    cdef sqlite3_stmt *st = NULL
    cdef int rc, n = -1, sys_err = 0
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
        if (rc & 0xFF) in (SQLITE_CANTOPEN, SQLITE_IOERR, SQLITE_PERM, SQLITE_FULL):
            raise_sqlite(rc, db, sys_err, "recover", path)
        return -1
    finally:
        sqlite3_finalize(st)
        sqlite3_close_v2(db)


cdef str _quarantine(bytes folder, str name, str reason):
    """Rename a batch that cannot be read to invalid_<name>; never delete it."""
    cdef bytes src = folder + os.fsencode(name)
    cdef str target = "invalid_" + name
    cdef int rc, err
    cdef bytes dst
    cdef const char *csrc
    cdef const char *cdst
    for attempt in range(100):
        dst = folder + os.fsencode(target)
        csrc, cdst = src, dst
        with nogil:
            rc = tq_rename_noreplace(csrc, cdst)
            err = errno
        if rc == 0:
            logger.error("turbo_queue: quarantined %s as %s: %s. Its events were not delivered; "
                         "inspect it with the sqlite3 tool, or delete it.", os.fsdecode(src),
                         target, reason)
            return target
        if err == ENOENT:
            return None
        if err != EEXIST:
            raise_os(err, "quarantine unreadable batch", src)
        target = f"invalid_{attempt}_{name}"
    raise_os(EEXIST, "quarantine unreadable batch", src)


cdef str _publish_leftover(bytes folder, str name, str rest, str kind):
    """Turn one leftover file into a ready_ batch. Returns what happened."""
    cdef bytes src = folder + os.fsencode(name)
    cdef int rc, err, n
    cdef bytes dst
    cdef const char *csrc
    cdef const char *cdst
    try:
        size = os.stat(src).st_size
    except FileNotFoundError:
        return "gone"
    if kind == "loading" and size > 0 and _OWN_BATCH.match(rest) and _unfinished_image(src):
        # Its producer died while writing the batch from memory (SQLite's magic string is written
        # last, by tq_write_image_magic): the batch was never published, and it is incomplete.
        try:
            os.unlink(src)
        except FileNotFoundError:
            return "gone"
        logger.warning("turbo_queue: removed %s: its producer died while writing it, before "
                       "publishing it (%d bytes, never published)", os.fsdecode(src), size)
        return "unfinished"
    try:
        n = _count_rows(src, kind == "loading" or size == 0 and kind != "chosen")
    except FileNotFoundError:
        return "gone"
    if n < 0:
        return "quarantined" if _quarantine(folder, name, "not a readable batch") else "gone"
    if n == 0:
        # A producer that died before its first commit leaves an empty file: nothing to deliver.
        for suffix in (b"", b"-journal"):
            try:
                os.unlink(src + suffix)
            except FileNotFoundError:
                pass
        logger.info("turbo_queue: removed empty leftover batch %s", os.fsdecode(src))
        return "empty"
    if not _BATCH_REST.match(rest):
        rest = f"{int(time.time())}_{secrets.token_hex(8)}.db"
    if kind == "loading" and _OWN_BATCH.match(rest):
        rest = f"{rest[:-3]}-n{n}.db"
    _step("recover")
    for attempt in range(100):
        dst = folder + os.fsencode("ready_" + rest)
        csrc, cdst = src, dst
        with nogil:
            rc = tq_rename_noreplace(csrc, cdst)
            err = errno
        if rc == 0:
            logger.info("turbo_queue: recovered %s (%d events) as %s", os.fsdecode(src), n,
                        "ready_" + rest)
            return "published"
        if err == ENOENT:
            return "gone"
        if err != EEXIST:
            raise_os(err, "publish recovered batch", src)
        if os.path.samefile(src, dst):
            # An earlier recovery died between link() and unlink(): the batch is already ready_.
            os.unlink(src)
            return "published"
        rest = rest[:-3] + f"-r{attempt}.db"
    raise_os(EEXIST, "publish recovered batch", src)


cdef bint _unfinished_image(bytes path) except -1:
    try:
        with open(path, "rb") as f:
            return f.read(16) == bytes(16)
    except FileNotFoundError:
        return False


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
    counts = {"published": 0, "empty": 0, "unfinished": 0, "quarantined": 0, "skipped_live": 0}
    try:
        names = sorted(os.listdir(folder_b))
    except FileNotFoundError:
        return counts
    held = {}  # token -> fd holding a dead owner's lock while its files are handled
    try:
        for raw in names:
            name = os.fsdecode(raw)
            found = _classify(name)
            if found is None:
                continue
            kind, rest, token = found
            if token is not None:
                if token not in held:
                    held[token] = _lock_dead_owner(folder_b, token)
                if held[token] is None:
                    counts["skipped_live"] += 1
                    continue
            elif not legacy:
                continue
            result = _publish_leftover(folder_b, name, rest, kind)
            if result in counts:
                counts[result] += 1
    finally:
        for token, fd in held.items():
            if fd is not None and fd >= 0:
                os.unlink(folder_b + b".owner_" + token.encode() + b".lock")
                os.close(fd)
    return counts


# ----------------------------------------------------------------------------------------------
# Settings shared by every class (the original package kept them all on one base class).

cdef inline int _check_int(str name, object value, long minimum) except -1:
    if type(value) is not int or value < minimum:
        raise ValueError(f"turbo_queue: {name} must be an integer >= {minimum}, not {value!r}")
    return 0


cdef inline int _check_bool(str name, object value) except -1:
    if type(value) is not bool:
        raise ValueError(f"turbo_queue: {name} must be True or False, not {value!r}")
    return 0


cdef str _check_queue_name(object value):
    if type(value) is not str:
        raise ValueError(f"turbo_queue: queue_name must be a string, not {value!r}")
    name = <str>value
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or (os.altsep and os.altsep in name)):
        raise ValueError(f"turbo_queue: queue_name must be one folder name (no path separators, "
                         f"not empty, '.' or '..'), not {name!r}")
    return name


cdef class _QueueBase:
    cdef dict __dict__
    cdef object __weakref__
    cdef str _queue_name
    cdef str _root_path
    cdef bytes _folder_b
    cdef int _max_ready_files
    cdef Py_ssize_t _max_events_per_file
    cdef double _max_batch_age
    cdef object _max_batch_age_value
    cdef bint _enqueue_active
    cdef int _ser
    cdef object _custom
    cdef object _serializer
    # Accepted for compatibility with the pure-Python package, which did not act on them either.
    cdef int _num_loaders, _num_queues
    cdef bint _dequeue_active, _processing_hold, _drop_overflow, _remove_invalid

    def __cinit__(self, *args, **kwargs):
        self._queue_name = "example_queue_name"
        self._root_path = "/dc_data"
        self._max_ready_files = 1
        self._max_events_per_file = 80000
        self._max_batch_age = 10.0
        self._max_batch_age_value = 10
        self._num_loaders = self._num_queues = 1
        self._dequeue_active = self._remove_invalid = True
        self._serializer = "json"

    cdef int _configure(self, dict settings) except -1:
        for key, value in settings.items():
            if value is not None:
                setattr(self, key, value)
        return 0

    cdef bytes _folder(self):
        """`root_path/queue_name/` as bytes, created if missing."""
        if self._folder_b is None:
            path = os.path.join(self._root_path, self._queue_name)
            try:
                os.makedirs(path, exist_ok=True)
            except PermissionError as e:
                raise_os(e.errno, "create the queue folder", path)
            self._folder_b = os.fsencode(os.path.join(path, ""))
        return self._folder_b

    @property
    def queue_name(self):
        """The queue: a folder of that name under root_path."""
        return self._queue_name

    @queue_name.setter
    def queue_name(self, value):
        self._queue_name = _check_queue_name(value)
        self._folder_b = None

    @property
    def root_path(self):
        """The folder that holds the queue folders."""
        return self._root_path

    @root_path.setter
    def root_path(self, value):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if type(value) is not str or not value:
            raise ValueError(f"turbo_queue: root_path must be a non-empty string, not {value!r}")
        self._root_path = value
        self._folder_b = None

    @property
    def serializer(self):
        """How events are stored: 'json' (default), 'raw', 'text', 'pickle', 'msgpack', or an object
        with dumps()/loads(). Producers and consumers of one queue must use the same."""
        return self._serializer

    @serializer.setter
    def serializer(self, value):
        self._ser = _serializer_kind(value)
        self._custom = value if self._ser == S_CUSTOM else None
        self._serializer = value

    @property
    def max_ready_files(self):
        """Backpressure: enqueue_active turns False while this many batches wait as ready_."""
        return self._max_ready_files

    @max_ready_files.setter
    def max_ready_files(self, value):
        _check_int("max_ready_files", value, 1)
        self._max_ready_files = value

    @property
    def max_events_per_file(self):
        """Events per batch: a batch is published when it holds this many."""
        return self._max_events_per_file

    @max_events_per_file.setter
    def max_events_per_file(self, value):
        _check_int("max_events_per_file", value, 1)
        self._max_events_per_file = value

    @property
    def max_batch_age(self):
        """Seconds (fractions allowed) after its first event by which a partial batch is published."""
        return self._max_batch_age_value

    @max_batch_age.setter
    def max_batch_age(self, value):
        if type(value) not in (int, float) or not value > 0:
            raise ValueError(f"turbo_queue: max_batch_age must be a number of seconds > 0, not {value!r}")
        self._max_batch_age = value
        self._max_batch_age_value = value
        self._max_batch_age_changed()

    cdef int _max_batch_age_changed(self) except -1:
        return 0

    @property
    def enqueue_active(self):
        """False while the queue holds max_ready_files ready batches (see update_enqueue_active_state)."""
        return self._enqueue_active

    @enqueue_active.setter
    def enqueue_active(self, value):
        _check_bool("enqueue_active", value)
        self._enqueue_active = value

    @property
    def num_loaders(self):
        return self._num_loaders

    @num_loaders.setter
    def num_loaders(self, value):
        _check_int("num_loaders", value, 1)
        self._num_loaders = value

    @property
    def num_queues(self):
        return self._num_queues

    @num_queues.setter
    def num_queues(self, value):
        _check_int("num_queues", value, 1)
        self._num_queues = value

    @property
    def dequeue_active(self):
        return self._dequeue_active

    @dequeue_active.setter
    def dequeue_active(self, value):
        _check_bool("dequeue_active", value)
        self._dequeue_active = value

    @property
    def processing_hold(self):
        return self._processing_hold

    @processing_hold.setter
    def processing_hold(self, value):
        _check_bool("processing_hold", value)
        self._processing_hold = value

    @property
    def drop_overflow(self):
        """Accepted for compatibility; events are never dropped."""
        return self._drop_overflow

    @drop_overflow.setter
    def drop_overflow(self, value):
        _check_bool("drop_overflow", value)
        self._drop_overflow = value

    @property
    def remove_invalid(self):
        """Accepted for compatibility; unreadable batches are always quarantined, never deleted."""
        return self._remove_invalid

    @remove_invalid.setter
    def remove_invalid(self, value):
        _check_bool("remove_invalid", value)
        self._remove_invalid = value

    def get_ready_length(self):
        """Number of ready_ batches in the queue folder."""
        return _count_ready(self._folder(), True)


cdef long _count_ready(bytes folder, bint strict) except -2:
    """ready_ batches in `folder`, counted in C with the GIL released. A folder that cannot be
    listed raises when strict, else counts as -1."""
    cdef const char *cfolder = folder
    cdef long n
    cdef int err
    with nogil:
        n = tq_count(cfolder, b"ready_", b".db")
        err = errno
    if n < 0 and strict:
        raise_os(err, "list the queue folder", folder)
    return n


_live = weakref.WeakSet()


# ----------------------------------------------------------------------------------------------
# Producer.

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
    cdef bytes _ready_path
    cdef bytes _batch_folder
    cdef list _pending
    cdef Py_ssize_t _pending_bytes
    cdef Py_ssize_t _count
    cdef double _batch_started
    cdef int64_t _last_ns
    cdef bint _last_was_small
    # The loading_ file of a batch built in memory (written when published), or -1.
    cdef int _fd
    cdef Py_ssize_t _batch_bytes
    # The buffer batches are built in, kept from one batch to the next (see tq_open_memory_batch).
    cdef unsigned char *_image_buf
    cdef sqlite3_int64 _image_cap
    cdef _Owner _owner
    cdef object _timer
    cdef object _wake
    # When the age thread looks next (tq_now() clock; 1e300: not before it is woken). A new batch
    # wakes it only if the batch is due sooner: waking it (and handing it the GIL) for every batch
    # cost about 10% of a producer's time at 1,000 events per batch.
    cdef double _age_wake_at
    cdef bint _closed
    cdef bint _durable
    cdef object _error
    cdef double _ready_checked_at
    cdef long _ready_count
    cdef readonly long long events_published
    cdef readonly long long batches_published
    # Set by turbo_queue.Queue: an aged batch may keep filling until it is _busy_linger seconds old
    # (0 = publish at max_batch_age regardless) while published batches wait unclaimed, or while
    # events come at _fast_rate per second or more (0 = never on rate alone); see _age_tick.
    cdef public double _busy_linger
    cdef public double _fast_rate
    cdef int64_t _name_ns

    def __cinit__(self, *args, **kwargs):
        self._mutex = PyThread_allocate_lock()
        if self._mutex == NULL:
            raise MemoryError()
        self._pending = []
        self._owner = _Owner()
        self._ready_checked_at = -1e300
        self._fd = -1

    def __init__(self, *, root_path=None, queue_name=None, max_events_per_file=None,
                 max_ready_files=None, max_batch_age=None, serializer=None, durability=None):
        self._configure(dict(root_path=root_path, queue_name=queue_name,
                             max_events_per_file=max_events_per_file,
                             max_ready_files=max_ready_files, max_batch_age=max_batch_age,
                             serializer=serializer, durability=durability))
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
            self._owner.acquire(self._folder())
        finally:
            self._unlock()
        self.update_enqueue_active_state()

    def add(self, data):
        """Add one event. Raises TypeError, with nothing written, if it cannot be serialized."""
        cdef bytes b = _encode(self._ser, data, self._custom)
        self._lock()
        try:
            self._append_locked(b)
        finally:
            self._unlock()

    def add_many(self, events):
        """Add every event of an iterable; returns how many. If one cannot be serialized, the events
        before it are added and TypeError says which one failed."""
        cdef list chunk = []
        cdef Py_ssize_t n = 0
        for event in events:
            try:
                chunk.append(_encode(self._ser, event, self._custom))
            except TypeError as e:
                self._append_chunk(chunk)
                raise TypeError(f"turbo_queue: event #{n} of add_many: {e}") from e
            n += 1
            if len(chunk) == PENDING_MAX:
                self._append_chunk(chunk)
                chunk = []
        self._append_chunk(chunk)
        return n

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
        _step("add")
        # Insert once enough is pending, by count or (for large events) by size.
        if len(self._pending) >= PENDING_MAX or self._pending_bytes >= CHUNK_BYTES:
            self._insert_pending_locked()
        if (self._count >= self._max_events_per_file
                or (self._fd >= 0 and self._batch_bytes >= MAX_MEMORY_BATCH_BYTES)):
            self._publish_locked()
        return 0

    cdef int _open_batch_locked(self) except -1:
        cdef bytes folder = self._folder()
        cdef sqlite3 *db = NULL
        cdef int rc, sys_err, err
        _ensure_exit_hook()
        self._owner.acquire(folder)
        if self._name_ns:  # a batch that must keep another's place in line (see Dequeue)
            ns, self._name_ns = self._name_ns, 0
        else:
            ns = time.time_ns()
            if ns <= self._last_ns:  # keep one producer's batches in order if the clock steps back
                ns = self._last_ns + 1
            self._last_ns = ns
        name = f"{ns // 1000000000}_{ns % 1000000000:09d}-{self._owner.token}.db".encode()
        self._loading_path = folder + b"loading_" + name
        # Published as ready_<epoch>_<ns>-<owner>-n<events>.db: the count in the name lets anyone see
        # how many events wait without opening a file.
        self._ready_path = folder + b"ready_" + name[:-3]
        self._batch_folder = folder
        cdef const char *path = self._loading_path
        cdef bint in_memory = _memory_batches
        cdef int fd = -1
        cdef bytes sql_b = _BATCH_SQL[in_memory, self._last_was_small]
        cdef const char *sql = sql_b
        if in_memory:
            # The loading_ file exists, empty, while the batch fills: the folder shows what is
            # being loaded, as in the original, and a producer's death leaves an empty file.
            with nogil:
                fd = tq_create_excl(path)
                err = errno
            if fd < 0:
                raise_os(err, "create batch", self._loading_path)
        with nogil:
            rc = _create_batch_db(path, in_memory, sql, &db, &self._image_buf, &self._image_cap)
            if rc == SQLITE_OK:
                rc = sqlite3_prepare_v2(db, INSERT_ONE, -1, &self._ins, NULL)
            # The multi-row INSERT is prepared on first use (_insert_pending_locked): parsing it
            # costs more than creating the file, and a small batch never needs it.
            sys_err = sqlite3_system_errno(db) if db != NULL else 0
        if rc != SQLITE_OK:
            try:
                raise_sqlite(rc, db, sys_err, "create batch", self._loading_path)
            finally:
                sqlite3_finalize(self._ins)
                sqlite3_finalize(self._ins_group)
                sqlite3_close_v2(db)
                self._ins = NULL
                self._ins_group = NULL
                if fd >= 0:
                    close(fd)
                try:
                    os.unlink(self._loading_path)
                except OSError:
                    pass
        self._db = db
        self._fd = fd
        self._batch_bytes = 0
        self._count = 0
        self._batch_started = tq_now()
        if self._max_batch_age < 1e18:
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
        _step("insert")
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
        try:
            if rc == SQLITE_OK:  # a system call failed, not SQLite: sys_err is its errno
                raise_os(sys_err, what, path)
            raise_sqlite(rc, self._db, sys_err, what, path)
        finally:
            sqlite3_exec(self._db, b"ROLLBACK", NULL, NULL, NULL)
            sqlite3_finalize(self._ins)
            sqlite3_finalize(self._ins_group)
            if self._fd >= 0:  # in memory: where the buffer is now, before the database goes
                self._take_image_locked(&size)
                close(self._fd)
            sqlite3_close_v2(self._db)
            self._db = NULL
            self._fd = -1
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

    cdef int _write_image_locked(self) except -1:
        """Write the committed in-memory batch into its loading_ file and close it."""
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
            _step("write")  # the test hook's point between the two writes
            with nogil:
                rc = tq_write_image_magic(fd, image, durable)
                err = errno
        if rc == 0:
            with nogil:
                rc = close(fd)
                err = errno
            self._fd = -1  # closed even when close() reports an error
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
        cdef const char *ready
        cdef const char *folder
        cdef bint durable = self._durable
        cdef bint in_memory = self._fd >= 0
        if db == NULL:
            return 0
        self._insert_pending_locked()
        _step("commit")
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
        if self._fd >= 0:
            self._write_image_locked()
        with nogil:
            rc = sqlite3_close_v2(db)
        self._db = NULL
        self._release_image_buffer_locked()
        count = self._count
        self._count = 0
        self._last_was_small = count < SMALL_BATCH_EVENTS
        ready_path = self._ready_path + b"-n%d.db" % count
        loading, ready, folder = self._loading_path, ready_path, self._batch_folder
        if durable and not in_memory:  # an image written from memory was synced by its writer
            with nogil:
                rc = tq_fsync_path(loading, 0)
                err = errno
            if rc != 0:
                raise_os(err, f"fsync batch ({count} events stay in it, unpublished; it is "
                         f"recovered when this process exits)", self._loading_path)
        # The batch is complete and closed: now, and only now, it may be published.
        _step("publish")
        with nogil:
            rc = rename(loading, ready)
            err = errno
        if rc != 0:
            raise_os(err, f"publish batch ({count} events stay in it, unpublished; it is "
                     f"recovered when this process exits)", self._loading_path)
        if durable:
            with nogil:
                rc = tq_fsync_path(folder, 1)
                err = errno
            if rc != 0:
                raise_os(err, "fsync the queue folder", self._batch_folder)
        _step("published")
        self.events_published += count
        self.batches_published += 1
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
        finally:
            self._unlock()
            if self._wake is not None:
                self._wake.set()
        if error is not None:
            raise error

    def update_enqueue_active_state(self):
        """Backpressure: set enqueue_active to False while the queue holds max_ready_files ready
        batches, True otherwise. Cheap enough to call once per event (the folder is counted at most
        every 2 ms, and after each publish)."""
        cdef double now = tq_now()
        if now - self._ready_checked_at >= 0.002:
            self._ready_count = _count_ready(self._folder(), True)
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

    cdef object _age_tick(self):
        """Publish the batch if it is due. Returns seconds until the next deadline, None for no
        deadline, or False when the thread should stop."""
        cdef double now, age
        self._lock()
        try:
            if self._closed:
                return False
            if self._db == NULL or self._count == 0:
                self._age_wake_at = 1e300
                return None
            now = tq_now()
            age = now - self._batch_started
            if (age >= self._max_batch_age and self._busy_linger > 0 and age < self._busy_linger
                    and ((self._fast_rate > 0 and self._count >= self._fast_rate * age)
                         or self._ready_waiting())):
                # Fast puts: a small batch's fixed cost (file, schema, claim) would take a large
                # share of the CPU. Consumers behind: they gain nothing from a batch published now.
                # Look again in a quarter of the linger: each look takes the GIL from a busy
                # producer thread, and a look every millisecond cost more than it saved.
                wait = min(max(self._max_batch_age, self._busy_linger / 4), self._busy_linger - age)
                self._age_wake_at = now + wait
                return wait
            if now >= self._batch_started + self._max_batch_age:
                try:
                    self._publish_locked()
                except BaseException as e:
                    logger.error("turbo_queue: publishing an aged batch failed: %s", e)
                    self._error = e
                self._age_wake_at = 1e300
                return None
            self._age_wake_at = self._batch_started + self._max_batch_age
            return self._age_wake_at - now
        finally:
            self._unlock()

    cdef bint _ready_waiting(self) except -1:
        return _count_ready(self._batch_folder, False) > 0

    cdef void _after_fork_in_child(self) noexcept:
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
    while True:
        producer = ref()
        if producer is None:
            return
        timeout = (<Enqueue>producer)._age_tick()
        del producer
        if timeout is False:
            return
        wake.wait(timeout)
        wake.clear()


# ----------------------------------------------------------------------------------------------
# Consumer.

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
    cdef int _watch_fd
    cdef list _candidates
    cdef Py_ssize_t _next_candidate
    cdef sqlite3 *_db
    cdef sqlite3_stmt *_sel
    cdef bytes _path
    cdef str _name
    cdef str _rest
    cdef bytes _batch_folder
    cdef bint _stmt_done
    cdef object _broken
    cdef _Chunk _chunk
    cdef Py_ssize_t _pos
    cdef long long _total_gets
    cdef long long _total_batch
    cdef public bint _keep_delivered
    cdef bint _busy

    def __cinit__(self, *args, **kwargs):
        self._owner = _Owner()
        self._watch_fd = -1
        self._candidates = []
        self._auto_cleanup = True
        self._wait_timeout = 0.1
        self._reclaim_interval = 5.0
        self._chunk.rows = <_Row *>malloc(CHUNK_ROWS * sizeof(_Row))
        if self._chunk.rows == NULL:
            raise MemoryError()

    def __init__(self, proc_num=None, *, root_path=None, queue_name=None, serializer=None,
                 auto_cleanup=None, wait_timeout=None, reclaim_interval=None):
        self.proc_num = proc_num
        self._configure(dict(root_path=root_path, queue_name=queue_name, serializer=serializer,
                             auto_cleanup=auto_cleanup, wait_timeout=wait_timeout,
                             reclaim_interval=reclaim_interval))
        _live.add(self)

    def __dealloc__(self):
        free(self._chunk.rows)
        free(self._chunk.buf)
        if self._sel != NULL:
            sqlite3_finalize(self._sel)
        if self._db != NULL:
            sqlite3_close_v2(self._db)
        if self._watch_fd >= 0:
            close(self._watch_fd)

    def __del__(self):
        try:
            self.close()
        except Exception:
            logger.exception("turbo_queue: releasing the batch of a discarded dequeue failed")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.roll_back()
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
        when no batch is ready after waiting `timeout` seconds (default wait_timeout)."""
        cdef double wait = self._wait_timeout if timeout is None else timeout
        cdef list out = []
        if n <= 0:
            return out
        if self._ensure_rows(wait) != 1:
            return out
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
        return out

    cdef int _take(self, list out, Py_ssize_t n) except -1:
        cdef Py_ssize_t end
        while len(out) < n:
            end = min(self._chunk.nrows, self._pos + (n - len(out)))
            while self._pos < end:
                self._pos += 1
                self._total_gets += 1
                out.append(self._decode_row(&self._chunk.rows[self._pos - 1]))
            if len(out) >= n or self._stmt_done:
                break
            self._fill()
            if self._chunk.nrows == 0:
                break
        return 0

    def get_batch(self, timeout=None):
        """Every remaining event of the current (or next ready) batch, as a list; [] if none is
        ready after waiting `timeout` seconds. The batch is deleted on the next call."""
        return self.get_many(2 ** 62, timeout)

    cdef object _next(self, object empty):
        if self._pos < self._chunk.nrows:
            self._pos += 1
            self._total_gets += 1
            return self._decode_row(&self._chunk.rows[self._pos - 1])
        if self._ensure_rows(self._wait_timeout) != 1:
            return empty
        self._pos += 1
        self._total_gets += 1
        return self._decode_row(&self._chunk.rows[self._pos - 1])

    cdef object _decode_row(self, _Row *r):
        cdef int kind = r.kind
        cdef bytes b
        _step("read")
        if kind == SQLITE_BLOB or kind == SQLITE_TEXT:
            b = PyBytes_FromStringAndSize(self._chunk.buf + r.offset, r.size)
            try:
                if self._ser == S_JSON:
                    return _json_decode(b)
                return _decode(self._ser, b, self._custom)
            except Exception as e:
                raise DecodeError(
                    f"turbo_queue: event {self._total_gets} of {self.batch_path} cannot be decoded "
                    f"with serializer {self._serializer!r}: {e}. It was skipped; the rest of the "
                    f"batch follows.") from e
        # Values the pure-Python package stored through the json column's NUMERIC affinity.
        if kind == SQLITE_INTEGER:
            value = r.ival
        elif kind == SQLITE_FLOAT:
            value = r.dval
        else:
            return None
        if self._ser == S_JSON:
            return value
        return _decode(self._ser, repr(value).encode(), self._custom)

    cdef int _enter(self) except -1:
        # A consumer is not shared between threads: its SQLite handle is used without a mutex and
        # with the GIL released. Refuse a second thread cleanly instead of corrupting memory.
        if self._busy:
            raise RuntimeError("turbo_queue: this dequeue is in use by another thread; give each "
                               "thread its own dequeue (or use turbo_queue.Queue, which locks)")
        self._busy = True
        return 0

    cdef int _ensure_rows(self, double timeout) except -1:
        """Make rows of a claimed batch available. 1: rows at _pos; 0: nothing ready after waiting;
        2: the batch is exhausted and auto_cleanup is off."""
        self._enter()
        try:
            return self._ensure_rows_entered(timeout)
        finally:
            self._busy = False

    cdef int _ensure_rows_entered(self, double timeout) except -1:
        cdef double deadline = -1.0, left
        while True:
            if self._pos < self._chunk.nrows:
                return 1
            if self._db != NULL:
                if not self._stmt_done:
                    self._fill()
                    continue
                if not self._auto_cleanup:
                    return 2
                self._finish_batch()
            if self._claim():
                continue
            # Nothing ready: sleep until a file lands in the folder (any file: look again, and
            # sleep on for what is left of the timeout if it was not a ready batch).
            if deadline < 0:
                deadline = tq_now() + timeout
            left = deadline - tq_now()
            if left <= 0:
                return 0
            self._wait(left)

    cdef int _fill(self) except -1:
        cdef int rc
        with nogil:
            rc = _read_chunk(self._sel, &self._chunk)
        self._pos = 0
        if rc == SQLITE_ROW:
            return 0
        self._stmt_done = True
        if rc == -1:
            raise MemoryError(f"turbo_queue: out of memory reading {self.batch_path}")
        if rc != SQLITE_DONE:
            self._broken = (sqlite3_errmsg(self._db).decode("utf-8", "replace")
                            + f" (SQLite code {rc}) after {self._total_gets} events")
        return 0

    cdef int _claim(self) except -1:
        """Claim the oldest ready batch with one rename. Returns 1 if one was claimed."""
        cdef bytes folder = self._folder()
        cdef bytes src, dst
        cdef const char *csrc
        cdef const char *cdst
        cdef int rc, err
        cdef bint rescanned = False
        _ensure_exit_hook()
        self._owner.acquire(folder)
        if self._watch_fd == -1:
            # Watch before scanning, so that a batch published between the scan and the wait wakes us.
            self._watch_fd = tq_watch_open(folder)
            if self._watch_fd < 0:
                self._watch_fd = -2
        self._maybe_reclaim(folder)
        while True:
            if self._next_candidate >= len(self._candidates):
                if rescanned:
                    return 0
                self._scan(folder)
                rescanned = True
                continue
            name = <bytes>self._candidates[self._next_candidate]
            self._next_candidate += 1
            rest = name[6:]
            src = folder + name
            dst = folder + b"chosen_" + rest + b"_" + self._owner.token.encode()
            csrc, cdst = src, dst
            with nogil:
                rc = rename(csrc, cdst)
                err = errno
            if rc != 0:
                if err == ENOENT:  # another consumer was first
                    continue
                raise_os(err, "claim batch", src)
            self._batch_folder = folder
            _step("claim")
            if self._open_batch(dst, os.fsdecode(rest)):
                self._total_batch += 1
                return 1

    cdef int _scan(self, bytes folder) except -1:
        cdef tq_names found
        cdef int rc, err
        cdef size_t i
        cdef const char *cfolder = folder
        with nogil:
            rc = tq_scan(cfolder, b"ready_", b".db", 1, &found)
            err = errno
        if rc != 0:
            raise_os(err, "list the queue folder", folder)
        try:
            self._candidates = [found.names[i] for i in range(found.count)]
        finally:
            tq_names_free(&found)
        self._next_candidate = 0
        return 0

    cdef bint _open_batch(self, bytes path, str rest) except -1:
        cdef sqlite3 *db = NULL
        cdef sqlite3_stmt *sel = NULL
        cdef const char *p = path
        cdef int rc, sys_err = 0
        with nogil:
            rc = sqlite3_open_v2(p, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, FAST_VFS)
            if rc == SQLITE_OK:
                rc = sqlite3_prepare_v2(db, b"SELECT log_data FROM logs", -1, &sel, NULL)
            if rc != SQLITE_OK:
                sys_err = tq_write_errno(sqlite3_system_errno(db)) if db != NULL else 0
        if rc == SQLITE_OK:
            self._db, self._sel, self._path, self._rest = db, sel, path, rest
            self._name = os.fsdecode(os.path.basename(path))
            self._stmt_done = False
            self._broken = None
            self._chunk.nrows = 0
            self._pos = 0
            return True
        detail = (sqlite3_errmsg(db) if db != NULL else sqlite3_errstr(rc)).decode("utf-8", "replace")
        try:
            if (rc & 0xFF) in (SQLITE_CANTOPEN, SQLITE_IOERR, SQLITE_PERM, SQLITE_NOMEM):
                # Not the file's fault: give the batch back and report.
                self._path, self._rest, self._db = path, rest, NULL
                self._give_back()
                raise_sqlite(rc, db, sys_err, "open batch", path)
        finally:
            sqlite3_close_v2(db)
        _quarantine(self._batch_folder, os.fsdecode(os.path.basename(path)), detail)
        return False

    cdef int _close_batch(self) except -1:
        sqlite3_finalize(self._sel)
        sqlite3_close_v2(self._db)
        self._sel = NULL
        self._db = NULL
        self._chunk.nrows = 0
        self._pos = 0
        return 0

    cdef int _finish_batch(self) except -1:
        """Every event was handed out and the next one asked for: delete the batch."""
        cdef const char *p = self._path
        cdef int rc, err
        self._close_batch()
        if self._broken is not None:
            _quarantine(self._batch_folder, self._name, self._broken)
            return 0
        _step("delete")
        with nogil:
            rc = unlink(p)
            err = errno
        if rc != 0:
            if err == ENOENT:
                logger.warning("turbo_queue: batch %s vanished while held by this consumer (was "
                               "its owner lock file removed?)", os.fsdecode(self._path))
            else:
                raise_os(err, "delete finished batch", self._path)
        return 0

    cdef int _give_back(self) except -1:
        """Return the held batch to ready_ under its original name, so it keeps its place."""
        cdef bytes dst = self._batch_folder + b"ready_" + os.fsencode(self._rest)
        cdef const char *s = self._path
        cdef const char *d = dst
        cdef int rc, err
        if self._db != NULL:
            self._close_batch()
        with nogil:
            rc = tq_rename_noreplace(s, d)
            err = errno
        if rc != 0 and err != ENOENT:
            raise_os(err, "return batch to the queue", self._path)
        return 0

    cdef int _wait(self, double timeout) except -1:
        cdef int fd = self._watch_fd
        cdef double deadline, step = 0.001
        cdef long n
        cdef bytes folder
        if fd >= 0:
            with nogil:
                tq_watch_wait(fd, timeout, b"ready_")
            return 0
        # No inotify on this platform: poll the folder with a growing interval (at most 10 ms).
        folder = self._folder()
        cdef const char *cfolder = folder
        deadline = tq_now() + timeout
        while True:
            with nogil:
                tq_sleep(min(step, deadline - tq_now()))
                n = tq_count(cfolder, b"ready_", b".db")
            if n != 0 or tq_now() >= deadline:
                return 0
            step = min(step * 2, 0.01)

    cdef int _maybe_reclaim(self, bytes folder) except -1:
        cdef double now = tq_now()
        if now < self._next_reclaim:
            return 0
        self._next_reclaim = now + self._reclaim_interval
        counts = recover_folder(os.fsdecode(folder), legacy=False)
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
        if not (self._stmt_done and self._pos >= self._chunk.nrows):
            logger.warning("turbo_queue: clean_up() dropped %s before all its events were read",
                           self.batch_path)
        self._finish_batch()

    def roll_back(self):
        """Give the current batch back to the queue unfinished, under its original name so it keeps
        its place; every event of it will be delivered again. Returns False if no batch was held."""
        if self._busy:
            self._enter()
        if self._db == NULL:
            return False
        self._give_back()
        return True

    def close(self):
        """Release the held batch (deleted if every event was handed out, else given back) and this
        consumer's files. Idempotent."""
        if self._busy:
            self._enter()
        if self._keep_delivered:
            return self._close_keeping_delivered()
        if self._db != NULL:
            if self._stmt_done and self._pos >= self._chunk.nrows and self._auto_cleanup:
                self._finish_batch()
            else:
                self._give_back()
        self._release()

    cdef int _release(self) except -1:
        self._owner.release()
        if self._watch_fd >= 0:
            close(self._watch_fd)
        self._watch_fd = -1
        return 0

    def _close_keeping_delivered(self):
        """Close without handing out again what was already handed out (multiprocessing.Queue's
        semantics): the events of the held batch not yet handed out are written to a new batch that
        keeps the old one's place in line, then the old batch is deleted. A crash in between
        duplicates them, never loses them."""
        cdef list rest = []
        cdef _Row *r
        cdef Py_ssize_t i
        cdef Enqueue writer
        if self._db != NULL and not (self._stmt_done and self._pos >= self._chunk.nrows):
            while True:
                for i in range(self._pos, self._chunk.nrows):
                    r = &self._chunk.rows[i]
                    if r.kind == SQLITE_BLOB or r.kind == SQLITE_TEXT:
                        rest.append(PyBytes_FromStringAndSize(self._chunk.buf + r.offset, r.size))
                    elif r.kind == SQLITE_INTEGER:
                        rest.append(repr(r.ival).encode())
                    elif r.kind == SQLITE_FLOAT:
                        rest.append(repr(r.dval).encode())
                    else:
                        rest.append(b"null")
                self._pos = self._chunk.nrows
                if self._stmt_done:
                    break
                self._fill()
            if rest and self._broken is None:
                m = re.match(r"^(\d+)_(\d{9})", self._rest)
                writer = Enqueue(root_path=os.path.dirname(os.fsdecode(self._batch_folder[:-1])),
                                 queue_name=os.path.basename(os.fsdecode(self._batch_folder[:-1])),
                                 serializer="raw", max_events_per_file=len(rest) + 1)
                if m:
                    writer._name_ns = int(m.group(1)) * 1000000000 + int(m.group(2))
                writer._append_chunk(rest)
                writer.close()
        if self._db != NULL:
            self._finish_batch()
        self._release()

    def total_gets(self):
        """Events handed out so far."""
        return self._total_gets

    def total_batch(self):
        """Batches claimed so far."""
        return self._total_batch

    cdef void _after_fork_in_child(self) noexcept:
        # The held batch, the inotify descriptor and the lock belong to the parent.
        if self._sel != NULL:
            sqlite3_finalize(self._sel)
        if self._db != NULL:
            sqlite3_close_v2(self._db)
        self._sel = NULL
        self._db = NULL
        self._chunk.nrows = 0
        self._pos = 0
        if self._watch_fd >= 0:
            close(self._watch_fd)
        self._watch_fd = -1
        self._owner.forget()


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


def _after_fork_in_child():
    for obj in list(_live):
        if isinstance(obj, Enqueue):
            (<Enqueue>obj)._after_fork_in_child()
        elif isinstance(obj, Dequeue):
            (<Dequeue>obj)._after_fork_in_child()


def _close_all_at_exit():
    for obj in list(_live):
        try:
            obj.close()
        except Exception:
            logger.exception("turbo_queue: closing %r at exit failed", obj)


cdef long _exit_hook_pid = 0


cdef int _ensure_exit_hook() except -1:
    """Close every live producer and consumer when this process exits: through atexit, and
    through multiprocessing's exit function, which is what runs in its child processes (they leave
    with os._exit, skipping atexit)."""
    global _exit_hook_pid
    cdef long pid = os.getpid()
    if pid != _exit_hook_pid:
        _exit_hook_pid = pid
        from multiprocessing import util
        util.Finalize(None, _close_all_at_exit, exitpriority=100)
    return 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)


# ----------------------------------------------------------------------------------------------
# The reference for benchmarks: what SQLite itself allows. A bare C loop writing and reading the
# same batch files as Enqueue/Dequeue (same pragmas, built in memory or in the file as Enqueue does,
# one single-row prepared INSERT, one transaction per file, create/commit/close/rename per batch),
# with no Python per event.

def _bare_produce(folder, bytes payload, Py_ssize_t n, Py_ssize_t per_file):
    """Write n copies of payload into ready_ batches of per_file rows in `folder`; returns seconds."""
    cdef sqlite3 *db
    cdef sqlite3_stmt *st
    cdef const char *p = payload
    cdef int size = <int>len(payload), rc = SQLITE_OK
    cdef Py_ssize_t done = 0, i, rows
    cdef bytes loading, ready
    cdef const char *cl
    cdef const char *cr
    cdef double t0 = tq_now()
    cdef bint in_memory = _memory_batches
    cdef int fd = -1
    cdef sqlite3_int64 image_size, cap = 0
    cdef unsigned char *image
    cdef unsigned char *buf = NULL
    cdef bytes sql_b = _BATCH_SQL[in_memory, False]
    cdef const char *sql = sql_b
    os.makedirs(folder, exist_ok=True)
    while done < n and rc == SQLITE_OK:
        rows = min(per_file, n - done)
        ns = time.time_ns()
        loading = os.fsencode(os.path.join(folder, f"loading_{ns // 1000000000}_{ns % 1000000000:09d}-bare.db"))
        ready = os.fsencode(os.path.join(folder, f"ready_{ns // 1000000000}_{ns % 1000000000:09d}-bare-n{rows}.db"))
        cl, cr = loading, ready
        with nogil:
            db = NULL
            st = NULL
            if in_memory:
                fd = tq_create_excl(cl)
            rc = _create_batch_db(cl, in_memory, sql, &db, &buf, &cap) if fd >= 0 or not in_memory else SQLITE_CANTOPEN
            if rc == SQLITE_OK:
                rc = sqlite3_prepare_v2(db, INSERT_ONE, -1, &st, NULL)
            i = 0
            while rc == SQLITE_OK and i < rows:
                sqlite3_bind_blob(st, 1, p, size, SQLITE_STATIC)
                if sqlite3_step(st) != SQLITE_DONE:
                    rc = SQLITE_ERROR
                sqlite3_reset(st)
                i += 1
            sqlite3_finalize(st)
            if rc == SQLITE_OK:
                rc = sqlite3_exec(db, b"COMMIT", NULL, NULL, NULL)
            if in_memory and db != NULL:
                image = tq_memory_batch_image(db, &image_size, &cap)
                if image != NULL:
                    buf = image
                if rc == SQLITE_OK and (image == NULL or tq_write_image_body(fd, image, image_size) != 0
                                        or tq_write_image_magic(fd, image, 0) != 0):
                    rc = SQLITE_IOERR
            if fd >= 0:
                close(fd)
                fd = -1
            sqlite3_close_v2(db)
            if rc == SQLITE_OK and rename(cl, cr) != 0:
                rc = SQLITE_ERROR
        done += rows
    sqlite3_free(buf)
    if rc != SQLITE_OK:
        raise SQLiteError(f"bare produce failed in {folder} (SQLite code {rc})", rc, folder)
    return tq_now() - t0


def _bare_consume(folder):
    """Read every row of every ready_ batch in `folder` (touching each value), deleting each file;
    returns (rows, seconds)."""
    cdef sqlite3 *db
    cdef sqlite3_stmt *st
    cdef long long rows = 0
    cdef size_t touched = 0
    cdef const char *cp
    cdef const unsigned char *v
    cdef double t0 = tq_now()
    for name in sorted(os.listdir(folder)):
        if not (name.startswith("ready_") and name.endswith(".db")):
            continue
        path = os.fsencode(os.path.join(folder, name))
        cp = path
        with nogil:
            db = NULL
            st = NULL
            if sqlite3_open_v2(cp, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, FAST_VFS) == SQLITE_OK:
                if sqlite3_prepare_v2(db, b"SELECT log_data FROM logs", -1, &st, NULL) == SQLITE_OK:
                    while sqlite3_step(st) == SQLITE_ROW:
                        v = <const unsigned char *>sqlite3_column_blob(st, 0)
                        touched += v[0] + <size_t>sqlite3_column_bytes(st, 0)
                        rows += 1
            sqlite3_finalize(st)
            sqlite3_close_v2(db)
            unlink(cp)
    return rows, tq_now() - t0
