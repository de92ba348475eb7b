# A watch of a queue's folder that an event loop can wait on: the wake-up of async consumers.
#
# A blocking consumer sleeps in the kernel (_waiting.pxi); a coroutine cannot, and a futex has no
# descriptor for a loop to poll. So an async consumer watches the folder itself: one inotify
# descriptor per consumer, registered with the loop (add_reader), read without waiting here.


cdef class FolderWatch:
    """A watch of one queue folder: fileno() turns readable when a ready_ batch may have landed in
    it (or, with `departures`, left it: a producer waiting for backpressure to lift). moved() reads
    what the watch saw without waiting. Where the platform has no inotify, fileno() is -1 and
    moved() is always True: the caller polls."""
    cdef int fd
    cdef readonly bytes folder
    cdef readonly bint departures

    def __cinit__(self):
        self.fd = -1

    def __init__(self, folder, bint departures=False):
        cdef int fd, err = 0
        cdef bytes path = os.fsencode(folder)
        cdef const char *p = path
        with nogil:
            fd = tq_watch_open_for(p, departures)
            if fd < 0:
                err = errno
        if fd < 0 and err != ENOSYS:
            raise os_error(err, "watch the queue folder", path)
        self.fd, self.folder, self.departures = fd, path, departures

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)

    def fileno(self):
        """The descriptor to wait on (readable: call moved()), or -1: none on this platform."""
        return self.fd

    def moved(self):
        """Whether a ready_ batch arrived (or, with departures, left) since the last call, or the
        watch overflowed and cannot say: then look at the folder. Never waits."""
        cdef int rc, err = 0, fd = self.fd
        if self.folder is None:
            raise ValueError("turbo_queue: this folder watch is closed")
        if fd < 0:
            return True
        with nogil:
            rc = wait_for_ready(fd, 0.0)
            if rc < 0:
                err = errno
        if rc < 0:
            raise os_error(err, "read the watch of", self.folder)
        return rc != 0

    def close(self):
        """Stop watching. Idempotent."""
        if self.fd >= 0:
            close(self.fd)
        self.fd = -1
        self.folder = None
