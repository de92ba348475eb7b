# Owner locks: the flock()ed .owner_<token>.lock file each producer and consumer holds while it lives.
#
# Its token is in the names of the files it owns, so any process can tell a dead owner (the kernel
# dropped its lock, even on SIGKILL) from a slow or stopped one (the lock is still held).

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
            path = _owner_lock_path(folder, token)
            cpath = path
            with nogil:
                fd = tq_lock_file(cpath, 1)
                err = errno
            if fd >= 0:
                break
            if fd == -1:
                raise os_error(err, "create the owner lock file", path)
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


# tq_lock_file()'s answer when another open file holds the lock.
cdef enum:
    LOCK_HELD = -2

# What _lock_dead_owner() answers when the owner's lock file is gone.
cdef int NO_LOCK_FILE = -1


cdef object _lock_dead_owner(bytes folder, str token):
    """An open descriptor holding `token`'s lock if its owner is dead, NO_LOCK_FILE if no lock file
    is left (its owner is dead and was cleaned up), or None while the owner is alive."""
    cdef bytes path = _owner_lock_path(folder, token)
    cdef int fd, err
    cdef const char *cpath = path
    with nogil:
        fd = tq_lock_file(cpath, 0)
        err = errno
    if fd >= 0:
        return fd
    if fd == LOCK_HELD:
        return None
    if err == ENOENT:
        return NO_LOCK_FILE
    raise os_error(err, "check the owner lock file", path)

