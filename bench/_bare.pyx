# cython: language_level=3
"""The reference for benchmarks, kept out of the shipped package: what SQLite itself allows.

A bare C loop writing and reading the same batch files as Enqueue/Dequeue (the core's own batch-file
unit is included: same pragmas, built in memory or in the file as Enqueue does), with one single-row
prepared INSERT, one transaction per file, create/commit/close/rename per batch, and no Python per
event. Built by bench/build_bare.py (bench/limits.py runs it when needed).
"""

import os
import time

from turbo_queue.errors import CorruptBatchError, EventTooLargeError, SQLiteError

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport EACCES, EDQUOT, EEXIST, EIO, ELOOP, EMFILE, ENOENT, ENOSPC, ENXIO, EPERM, EROFS, errno
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, strcmp, strncmp
from posix.stat cimport struct_stat
from posix.unistd cimport close, pread, unlink
from libc.stdio cimport rename

from turbo_queue._capi cimport *

include "_errors.pxi"
include "_batchfile.pxi"


def produce(folder, bytes payload, Py_ssize_t n, Py_ssize_t per_file):
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
                fd = tq_create_locked(cl, 0o644, 0)
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


def consume(folder):
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
