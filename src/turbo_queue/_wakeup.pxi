# Waking consumers: the folder's doorbell (wake one waiting consumer per batch put in ready_) and its watcher role.
#
# One consumer of the pool at a time, the watcher (it holds .watch.lock with flock, until it ends),
# watches the folder with inotify and takes what lands there itself while it sleeps: batches of
# producers that ring nothing (the pure-Python package) are found at once, and a pool that keeps up
# keeps its work on one warm consumer. While it sleeps it holds a lease in .doorbell; whoever puts a
# batch in ready_ while no lease runs rings the doorbell, a futex word every process of the queue
# maps (see _tq_os.h), which wakes one of the other consumers, however many sleep there. The kernel
# takes a sleeper that is killed or stopped off the word's queue, and drops the lock of a watcher
# that dies; a lease is at most WATCH_LEASE_S long, so a watcher stopped while it sleeps leaves the
# ringing to the others within that (a lease that says it runs longer, left by another boot or
# never written by a watcher, is taken as over); and no consumer sleeps on the doorbell longer than
# BELL_SLEEP_S without looking at the folder.
#
# A batch is worth waking a consumer for only where a CPU can run it. Each consumer that lists the
# folder writes what it saw into the doorbell: how many consumers hold a batch (chosen_) and how
# many producers fill one (loading_). A ringer wakes no one (it only moves the word) while those
# are as many as the CPUs this process may use and no CPU of the machine is idle (/proc/loadavg's
# runnable count): the consumers already busy take the batch when they finish theirs, and an extra
# one would only share their CPUs. For the same reason a consumer that was not rung leaves the
# batches it finds to the others while another consumer's report is fresh (the pool is moving and
# takes them in their turn) and no CPU is free for it, or the watcher sleeps on the folder (it
# wakes for them). A report older than BUSY_FRESH_MS is not used: where the consumers stopped or
# are slow, or none listed the folder lately, every batch rings and every look claims.
#
# Both files are only an economy, like .reclaim.lock: where one cannot be used (a symlink, hard
# link, FIFO or another user's file planted there, a read-only folder, no futexes on this platform)
# a consumer watches the folder itself, as every consumer once did. A doorbell truncated, removed or replaced
# under us is reopened.

cdef bytes DOORBELL_B = b".doorbell"
cdef bytes WATCH_LOCK_B = b".watch.lock"
cdef double BELL_RECHECK_S = 1.0  # how often a ringer checks that the name still is its doorbell
cdef double WATCH_LEASE_S = TQ_WATCH_LEASE_NS / 1e9  # the longest lease the watcher takes at a time
cdef double BELL_SLEEP_S = 2.0    # the longest sleep on the doorbell before looking at the folder
cdef double WARM_S = 0.02         # how long after a batch a consumer sleeps among the warm ones
cdef uint32_t BUSY_FRESH_MS = 50  # how long a listing's report of the busy processes is used

# try_watch()'s answers besides 0 (this consumer is the watcher now).
cdef enum:
    WATCH_TAKEN = -1     # another consumer is the watcher
    WATCH_UNUSABLE = -2  # the lock file cannot be used: watch the folder yourself


cdef int _cpus_allowed = 0   # CPUs this process may run on (0: not read yet in this process)
cdef int _cpus_online = 0    # CPUs of the machine
cdef int _loadavg_fd = -1    # /proc/loadavg, open (-2: cannot be read here)


cdef int _read_cpus() except -1:
    global _cpus_allowed, _cpus_online, _loadavg_fd
    try:
        _cpus_allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        _cpus_allowed = os.cpu_count() or 1
    _cpus_online = max(os.cpu_count() or 1, _cpus_allowed)
    try:
        _loadavg_fd = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        _loadavg_fd = -2
    return 0


cdef void forget_cpus() noexcept:
    """In a forked child: read its CPUs again, through its own /proc/loadavg (a shared one would
    serialize the processes' reads)."""
    global _cpus_allowed, _loadavg_fd
    if _loadavg_fd >= 0:
        close(_loadavg_fd)
    _loadavg_fd = -1
    _cpus_allowed = 0


cdef bint cpu_free(long holding, long loading, bint for_self) except -1:
    """Whether one more busy process of the queue would get a CPU of its own: fewer of them are
    busy (`holding` consumers, `loading` producers, the caller among them when it is busy) than this
    process may use CPUs, or the machine has one idle now. `for_self`: the caller itself would be
    the one more (it runs now, so a CPU is free where the runnable ones are no more than the CPUs).
    True where the machine cannot say."""
    cdef long running
    cdef int fd
    if _cpus_allowed == 0:
        _read_cpus()
    if holding + loading < _cpus_allowed:
        return True
    fd = _loadavg_fd
    with nogil:
        running = tq_running_now(fd)
    if running < 0:
        return True
    return running <= _cpus_online if for_self else running < _cpus_online


def _cpu_free(long holding, long loading, bint for_self):
    """cpu_free() for the tests, with this process's view of its CPUs: (answer, CPUs allowed,
    CPUs online)."""
    answer = cpu_free(holding, loading, for_self)
    return answer, _cpus_allowed, _cpus_online


cdef class _Bell:
    """One process's mapping of one folder's doorbell, shared by the producers and consumers of the
    process that use it, and closed when the last of them lets it go."""
    cdef int fd
    cdef uint32_t *word
    cdef bytes path
    cdef bytes folder
    cdef double checked_at
    cdef object __weakref__

    def __cinit__(self):
        self.fd = -1

    def __dealloc__(self):
        self.close()

    cdef void close(self) noexcept:
        tq_bell_unmap(self.word)
        self.word = NULL
        if self.fd >= 0:
            close(self.fd)
        self.fd = -1

    cdef bint still_named(self) noexcept:
        """Whether the doorbell's name still refers to this file (not removed or replaced); looked
        at once a BELL_RECHECK_S at most (True in between)."""
        cdef const char *p = self.path
        cdef bint same
        cdef double now = tq_now()
        if now - self.checked_at < BELL_RECHECK_S:
            return True
        self.checked_at = now
        with nogil:
            same = tq_same_file(p, self.fd)
        return same


# folder -> _Bell in use in this process (forked children inherit the mappings, which stay shared).
_bells = weakref.WeakValueDictionary()
cdef set _shared_reported = set()  # paths of unusable shared files, logged once


cdef tuple open_shared_file(bytes path, int mode, bint exact, bint create, str without_it):
    """Open a small file of the folder that processes share (the doorbell, the watch lock, the
    reclaim lock): never through a symlink or a hard link, never blocking on a FIFO, made with
    `mode` if missing and `create`. Returns (descriptor, os.stat_result, whether this call made
    it); the descriptor is -1 when the file does not exist and `create` is false, -2 when it cannot
    be used (logged once per process, with `without_it`: what is done instead)."""
    cdef int flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    cdef int fd = -1
    cdef bint created = False
    try:
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            if not create:
                return -1, None, False
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
                created = True
                if exact:
                    os.fchmod(fd, mode)
            except FileExistsError:  # another process made it first
                fd = os.open(path, flags)
        st = os.fstat(fd)
        if not stat_module.S_ISREG(st.st_mode):
            raise OSError(EISDIR, "not a regular file")
        if st.st_nlink > 1:  # (written or touched through, it would change a file outside the folder)
            raise OSError(EMLINK, "a hard link: another file's name too")
    except OSError as e:
        if fd >= 0:
            close(fd)
        if path not in _shared_reported:
            _shared_reported.add(path)
            logger.warning("turbo_queue: cannot use %s (%s): %s. No event is affected; remove it if "
                           "it is not the queue's own.", os.fsdecode(path), e.strerror or e, without_it)
        return -2, None, False
    return fd, st, created


cdef _Bell open_bell(bytes folder, int mode, bint exact, bint create):
    """The folder's doorbell, opened once per process; None where it does not exist (and `create`
    is false) or cannot be used."""
    cdef _Bell bell = _bells.get(folder)
    cdef int fd
    if bell is not None:
        return bell
    fd, st, _ = open_shared_file(folder + DOORBELL_B, mode, exact, create,
                                 "its consumers watch the folder themselves")
    if fd < 0:
        return None
    try:
        if st.st_size < TQ_BELL_SIZE:
            os.ftruncate(fd, TQ_BELL_SIZE)  # (only ever grows it)
    except OSError:
        if st.st_size < 4:
            close(fd)
            return None
    bell = _Bell.__new__(_Bell)
    bell.fd = fd
    bell.folder = folder
    bell.path = folder + DOORBELL_B
    bell.word = tq_bell_map(fd)
    bell.checked_at = tq_now()
    if bell.word == NULL:
        bell.close()
        return None
    _bells[folder] = bell
    return bell


cdef int forget_bell(_Bell bell) except -1:
    """This doorbell was truncated, removed or replaced: the next open_bell() of its folder opens
    the file the name refers to now (whoever holds this one still lets it go on their own)."""
    if _bells.get(bell.folder) is bell:
        del _bells[bell.folder]
    return 0


cdef _Bell ring_bell(bytes folder, _Bell bell=None, bint unless_watched=True, long holding=-1,
                     long loading=0):
    """A batch was put in ready_ in `folder`: wake one consumer sleeping on its doorbell, unless
    (`unless_watched`) the watcher sleeps on the folder and takes it, or no CPU could run one more
    consumer (see cpu_free; `holding`, `loading`: what the caller's own listing saw, the caller
    among them; -1: use what the last listing reported). Returns the doorbell rung, for the caller
    to keep and pass again (None: there is none). Never fails the move it follows: a doorbell that
    cannot be rung only costs the sleepers their timeout."""
    cdef int rc, fd
    cdef tq_bell_view view
    if bell is None or not bell.still_named():
        if bell is not None:
            forget_bell(bell)
        bell = open_bell(folder, 0, False, False)
        if bell is None:
            return None
    fd = bell.fd
    with nogil:
        rc = tq_bell_view_read(fd, &view)
    if rc == 0:
        if unless_watched and tq_lease_runs(view.lease_until_ns, tq_now_ns()):
            return bell
        if holding < 0 and <uint32_t>(tq_now_ms() - view.busy.at_ms) < BUSY_FRESH_MS:
            holding, loading = view.busy.holding, max(<long>view.busy.loading, 1)  # (the caller is busy)
        if holding >= 0 and not cpu_free(holding, loading, False):
            with nogil:
                rc = tq_bell_tally(bell.word)
            if rc != 0:
                forget_bell(bell)
                return None
            return bell
    with nogil:
        rc = tq_bell_ring(bell.word)
    if rc != 0:
        forget_bell(bell)
        return None
    return bell


cdef int open_watch_lock(bytes folder, int mode, bint exact) except -3:
    """.watch.lock, opened (made if missing) to try for the watcher role with try_watch() as often
    as needed; WATCH_UNUSABLE when it cannot be used."""
    fd, _, _ = open_shared_file(folder + WATCH_LOCK_B, mode, exact, True,
                                "its consumers watch the folder themselves")
    return fd if fd >= 0 else WATCH_UNUSABLE


cdef int try_watch(int lock_fd) noexcept:
    """Become the folder's watcher if none is (the kernel drops the lock when its holder dies):
    0, WATCH_TAKEN, or WATCH_UNUSABLE."""
    cdef int rc
    with nogil:
        rc = tq_flock_nb(lock_fd)
    if rc == 0:
        return 0
    return WATCH_TAKEN if rc == TQ_LOCK_HELD else WATCH_UNUSABLE
