# The C functions the core calls: the part of the SQLite C API it uses, and the POSIX helpers of _tq_os.h.
# cython: language_level=3
# Everything here is callable without the GIL.

from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
from posix.stat cimport struct_stat


cdef extern from "sqlite3.h" nogil:
    ctypedef struct sqlite3
    ctypedef struct sqlite3_stmt
    ctypedef struct sqlite3_vfs:
        int mxPathname
    ctypedef void (*sqlite3_destructor_type)(void*)
    ctypedef long long sqlite3_int64

    int SQLITE_OK, SQLITE_ROW, SQLITE_DONE, SQLITE_ERROR, SQLITE_PERM, SQLITE_BUSY
    int SQLITE_LOCKED, SQLITE_NOMEM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT
    int SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_TOOBIG, SQLITE_NOTADB
    int SQLITE_OPEN_READONLY, SQLITE_OPEN_READWRITE, SQLITE_OPEN_CREATE, SQLITE_OPEN_NOMUTEX
    int SQLITE_OPEN_URI
    int SQLITE_INTEGER, SQLITE_FLOAT, SQLITE_TEXT, SQLITE_BLOB, SQLITE_NULL
    int SQLITE_LIMIT_LENGTH
    sqlite3_destructor_type SQLITE_STATIC

    const char *sqlite3_libversion()
    const char *sqlite3_compileoption_get(int n)
    int sqlite3_open_v2(const char *filename, sqlite3 **db, int flags, const char *vfs)
    int sqlite3_close_v2(sqlite3 *db)
    int sqlite3_exec(sqlite3 *db, const char *sql, void *callback, void *arg, char **errmsg)
    int sqlite3_prepare_v2(sqlite3 *db, const char *sql, int nbyte, sqlite3_stmt **stmt,
                           const char **tail)
    int sqlite3_step(sqlite3_stmt *stmt)
    int sqlite3_reset(sqlite3_stmt *stmt)
    int sqlite3_finalize(sqlite3_stmt *stmt)
    int sqlite3_bind_blob(sqlite3_stmt *stmt, int i, const void *data, int n,
                          sqlite3_destructor_type destructor)
    int sqlite3_column_type(sqlite3_stmt *stmt, int col)
    const void *sqlite3_column_blob(sqlite3_stmt *stmt, int col)
    const unsigned char *sqlite3_column_text(sqlite3_stmt *stmt, int col)
    int sqlite3_column_bytes(sqlite3_stmt *stmt, int col)
    int64_t sqlite3_column_int64(sqlite3_stmt *stmt, int col)
    double sqlite3_column_double(sqlite3_stmt *stmt, int col)
    const char *sqlite3_errmsg(sqlite3 *db)
    const char *sqlite3_errstr(int rc)
    int sqlite3_extended_errcode(sqlite3 *db)
    int sqlite3_system_errno(sqlite3 *db)
    int sqlite3_limit(sqlite3 *db, int id, int new_value)
    sqlite3_vfs *sqlite3_vfs_find(const char *name)
    void sqlite3_free(void *p)


cdef extern from "_tq_os.h" nogil:
    int SQLITE_OPEN_NOFOLLOW  # 0 where SQLite is older than 3.31 (see _tq_os.h)
    ctypedef struct tq_names:
        char **names
        size_t count
        long holding
        long loading

    void tq_names_free(tq_names *n)
    int tq_scan(const char *dir, const char *prefix, const char *suffix, int sort, tq_names *out)
    long tq_count(const char *dir, const char *prefix, const char *suffix)
    double tq_now()
    void tq_sleep(double seconds)
    int TQ_ERROR, TQ_LOCK_HELD, TQ_NOT_REGULAR
    int tq_flock_nb(int fd)
    void tq_funlock(int fd)
    int tq_open_regular(const char *path, int writable, struct_stat *st)
    int tq_same_file(const char *path, int fd)
    int tq_create_locked(const char *path, int mode, int exact)
    int tq_lock_existing(const char *path, struct_stat *st)
    int tq_fsync_fd(int fd)
    int tq_fsync_path(const char *path, int is_dir)
    int tq_rename_noreplace(const char *src, const char *dst)
    int tq_write_errno(int sqlite_errno)
    int tq_watch_open(const char *dir)
    int tq_watch_open_for(const char *dir, int departures)
    int tq_watch_wait(int fd, double timeout, const char *prefix)
    int TQ_BELL_SIZE, TQ_BELL_TIMED_OUT, TQ_BELL_RUNG, TQ_BELL_MOVED
    uint64_t tq_now_ns()
    int TQ_WATCH_LEASE_NS
    bint tq_lease_runs(uint64_t until_ns, uint64_t now_ns)
    int tq_bell_lease(int fd, uint64_t until_ns)
    int tq_bell_quiet(int fd, uint32_t seen)
    uint32_t *tq_bell_map(int fd)
    void tq_bell_unmap(uint32_t *word)
    int tq_bell_ring(uint32_t *word)
    int tq_bell_read(int fd, uint32_t *value)
    ctypedef struct tq_busy:
        uint32_t at_ms
        uint16_t holding
        uint16_t loading
    ctypedef struct tq_bell_view:
        uint32_t word
        uint64_t lease_until_ns
        tq_busy busy
    int tq_bell_view_read(int fd, tq_bell_view *v)
    uint32_t tq_now_ms()
    int tq_bell_report_busy(int fd, uint32_t at_ms, long holding, long loading)
    long tq_running_now(int fd)
    int tq_bell_tally(uint32_t *word)
    int tq_bell_wait(uint32_t *word, uint32_t seen, double timeout, uint32_t tier)
    uint32_t TQ_BELL_WARM, TQ_BELL_COLD
    int tq_has_digit_run(const char *p, size_t n, size_t limit)
    int TQ_HAVE_MEMDB
    int tq_open_memory_batch(sqlite3 **db, unsigned char **buf, sqlite3_int64 *cap)
    unsigned char *tq_memory_batch_image(sqlite3 *db, sqlite3_int64 *size, sqlite3_int64 *cap)
    int tq_write_image_body(int fd, const unsigned char *p, sqlite3_int64 n)
    int tq_write_image_magic(int fd, const unsigned char *p, int durable)


cdef extern from "_tq_json.h":
    bint tq_json_plain(object v)
