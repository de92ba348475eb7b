# The one error translator: SQLite result codes and errno values to our exceptions, each naming the file,
# the operation and what the user can do.
#
# Like uvloop's convert_error, os_error() and sqlite_error() *return* the exception: a caller reads what
# it needs while its handles are open, cleans up, then raises. sqlite_fault() says, from one table, whose
# fault a failed SQLite call was, so that every reader decides alike between "give the batch back and
# report" and "quarantine the file".

cdef enum Fault:
    # The environment failed (disk, permissions, memory, a descriptor limit): the file may be fine,
    # so it is left as it is and the error is raised.
    FAULT_ENVIRONMENT = 1
    # The file is not a readable batch (corrupt, not SQLite, another schema): it is quarantined.
    FAULT_BATCH = 2
    # A value is over SQLite's size limit (writes only).
    FAULT_TOO_BIG = 3

# SQLite primary result code -> Fault. A code not listed is the file's fault.
cdef dict _SQLITE_FAULTS = {
    SQLITE_CANTOPEN: FAULT_ENVIRONMENT,
    SQLITE_IOERR: FAULT_ENVIRONMENT,
    SQLITE_PERM: FAULT_ENVIRONMENT,
    SQLITE_READONLY: FAULT_ENVIRONMENT,
    SQLITE_FULL: FAULT_ENVIRONMENT,
    SQLITE_NOMEM: FAULT_ENVIRONMENT,
    SQLITE_TOOBIG: FAULT_TOO_BIG,
}

# errno -> what the user can do about it.
cdef dict _HINTS = {
    ENOSPC: "the file system holding the queue is full: free space or point root_path elsewhere",
    EACCES: "check the folder's owner and permissions, or choose another root_path",
    EPERM: "check the folder's owner and permissions, or choose another root_path",
    EROFS: "the file system is read-only: choose another root_path",
    EDQUOT: "the disk quota is exhausted: free space or raise the quota",
    EMFILE: "too many open files: raise the limit (ulimit -n)",
}


cdef Fault sqlite_fault(int rc) except *:
    return _SQLITE_FAULTS.get(rc & 0xFF, FAULT_BATCH)


cdef object os_error(int err, str action, object path):
    """The OSError (its errno subclass: PermissionError, FileNotFoundError, ...) for `err`."""
    cdef str where = os.fsdecode(path) if path is not None else "?"
    cdef str msg = f"turbo_queue: cannot {action} {where}: {os.strerror(err)}"
    hint = _HINTS.get(err)
    if hint:
        msg += f" ({hint})"
    return OSError(err, msg, where)


cdef object sqlite_error(int rc, sqlite3 *db, int sys_err, str action, object path):
    """The exception for SQLite result `rc`. Call while `db` is still open (its message is read)."""
    cdef Fault fault = sqlite_fault(rc)
    cdef int primary = rc & 0xFF
    cdef str where = os.fsdecode(path) if path is not None else "?"
    detail = (sqlite3_errmsg(db) if db != NULL else sqlite3_errstr(rc)).decode("utf-8", "replace")
    if primary == SQLITE_FULL and sys_err == 0:
        sys_err = ENOSPC
    if fault == FAULT_ENVIRONMENT and sys_err:
        return os_error(sys_err, f"{action} (SQLite: {detail})", path)
    if primary == SQLITE_CORRUPT or primary == SQLITE_NOTADB:
        return CorruptBatchError(
            f"turbo_queue: {where} is not a readable batch ({action}: {detail})", rc, where)
    if fault == FAULT_TOO_BIG:
        return EventTooLargeError(f"turbo_queue: {action} {where}: {detail}")
    return SQLiteError(f"turbo_queue: cannot {action} {where}: {detail} (SQLite code {rc})", rc, where)
