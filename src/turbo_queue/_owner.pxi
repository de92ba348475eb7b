# Owner locks: the flock()ed .owner_<token>.lock file each producer and consumer holds while it lives.
#
# Its token is in the names of the files it owns, so that stats can tell a dead owner (the kernel
# dropped its lock, even on SIGKILL) from a slow or stopped one. Recovery needs more than this file,
# which anyone who may write the folder can delete or replace: each owner also holds an flock on
# every batch file it owns (see the protocol unit), and a batch is taken from its owner only when
# both locks are free. A missing, replaced or unreadable lock file is never proof of death.

cdef class _Owner:
    """An flock()ed `.owner_<token>.lock` file in one queue folder, held while its owner lives."""
    cdef readonly str token
    cdef int fd
    cdef bytes path
    cdef bytes folder
    cdef bint gave_up  # the lock file could not be made again: not tried again

    def __cinit__(self):
        self.fd = -1

    cdef int acquire(self, bytes folder, int mode, bint exact) except -1:
        """Hold a lock file in `folder` (made with permission bits `mode`, exactly if `exact`); made
        again, under the same token, if someone removed or replaced it."""
        cdef int fd, err
        cdef bytes path
        cdef const char *cpath
        if self.fd >= 0:
            if folder == self.folder:
                cpath = self.path
                if not tq_same_file(cpath, self.fd):
                    self._remake(mode, exact)
                return 0
            self.release()
        while True:
            token = secrets.token_hex(6)
            path = _owner_lock_path(folder, token)
            cpath = path
            with nogil:
                fd = tq_create_locked(cpath, mode, exact)
                err = errno
            if fd >= 0:
                break
            if fd == TQ_ERROR and err != EEXIST:
                raise os_error(err, "create the owner lock file", path)
        self.fd, self.path, self.folder, self.token = fd, path, folder, token
        self.gave_up = False
        return 0

    cdef int _remake(self, int mode, bint exact) except -1:
        cdef const char *cpath = self.path
        cdef int fd = -1, err = 0
        if self.gave_up:
            return 0
        for attempt in range(3):
            with nogil:
                if tq_same_file(cpath, self.fd) == 0 and unlink(cpath) != 0 and errno == EISDIR:
                    rmdir(cpath)  # someone put a folder there (an empty one can go)
                fd = tq_create_locked(cpath, mode, exact)
                err = errno
            if fd >= 0:
                close(self.fd)
                self.fd = fd
                logger.warning("turbo_queue: the owner lock file %s was removed or replaced; made it "
                               "again (do not let cleaners remove .owner_*.lock files of live "
                               "processes)", os.fsdecode(self.path))
                return 0
        # Said once: this process's batches stay protected by the locks on the batch files.
        self.gave_up = True
        logger.warning("turbo_queue: cannot make the owner lock file %s again (%s); this process's "
                       "batches stay protected by their own locks", os.fsdecode(self.path),
                       os.strerror(err) if err else "it keeps being taken")
        return 0

    cdef void release(self) noexcept:
        cdef const char *cpath
        if self.fd >= 0:
            cpath = self.path
            if tq_same_file(cpath, self.fd):
                unlink(cpath)
            close(self.fd)
            self.fd = -1
            self.token = None

    cdef void forget(self) noexcept:
        # After fork(): the lock belongs to the parent; the child only drops its copy of the fd.
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1
            self.token = None


# What an owner's lock file says.
cdef enum OwnerState:
    OWNER_ALIVE = 0     # its lock is held
    OWNER_DEAD = 1      # its lock was free and is now held by the caller (fd)
    OWNER_MISSING = 2   # no lock file: no proof either way; the batch file's own lock decides
    OWNER_UNKNOWN = 3   # not a regular file, or cannot be opened (another user's): no proof either


cdef OwnerState _owner_state(bytes folder, str token, int *fd) except *:
    """Take `token`'s lock file if its owner is dead (the descriptor in *fd, to close or remove)."""
    cdef bytes path = _owner_lock_path(folder, token)
    cdef const char *cpath = path
    cdef struct_stat st
    cdef int got, err
    with nogil:
        got = tq_lock_existing(cpath, &st)
        err = errno
    fd[0] = got
    if got >= 0:
        return OWNER_DEAD
    if got == TQ_LOCK_HELD:
        return OWNER_ALIVE
    if got == TQ_ERROR and err == ENOENT:
        return OWNER_MISSING
    if got == TQ_ERROR and err in (EMFILE, ENFILE, ENOMEM):
        raise os_error(err, "check the owner lock file", path)
    _report_once(path, f"{'not a regular file' if got == TQ_NOT_REGULAR else os.strerror(err)}: "
                       f"the owner lock file of {token} (its batches' own locks decide)")
    return OWNER_UNKNOWN
