# How a consumer waits for a batch: as its folder's watcher, asleep on the doorbell, or on its own watch.
#
# The roles and the files are _wakeup.pxi's; this unit is one consumer's side of them: which way it
# waits, when it may skip looking at the folder, and what it rings.

cdef enum WakeBy:
    WAKE_UNSET = 0       # not chosen yet (or to choose again: the doorbell broke)
    WAKE_BELL = 1        # the folder's doorbell, or its watch while this consumer is the watcher
    WAKE_OWN_WATCH = 2   # this consumer's own watch of the folder (no usable doorbell or watch lock)


cdef enum Waited:
    WAITED_QUIET = 0     # timed out, and nothing can have arrived unseen: no need to look again
    WAITED_LOOK = 1      # woken, or cannot say: look at the folder again


cdef class _Waiter:
    """One consumer's way of waiting on one folder."""
    cdef WakeBy wake_by
    cdef bytes folder
    cdef _Bell bell
    cdef uint32_t seen        # the doorbell's word, read before the last look at the folder
    cdef int watch_fd         # an inotify watch of the folder (-2: none can be made; poll)
    cdef int watch_lock_fd    # .watch.lock, open to try for the watcher role
    cdef bint watcher         # this consumer holds .watch.lock's lock: it is the folder's watcher
    cdef bint watcher_seen    # another consumer held it at the last try
    cdef bint quiet           # the last sleep on the doorbell timed out with nothing to look at
    cdef bint saw_held        # the last look found a batch locked for longer than a moment
    cdef double claimed_at    # when this consumer last claimed a batch (it sleeps warm for a while)
    cdef uint64_t watched_until  # the watcher's lease at the last look
    cdef tq_busy report          # the busy report at the last look
    cdef bint rung            # the last wait ended by a ring: a ringer found a CPU free for it
    cdef bint sleeps_on_bell  # this consumer waits on the doorbell (an asyncio one waits on its own)
    cdef bint left            # its last look left ready batches to others: its wait's end looks again
    cdef long reported_holding, reported_loading  # the last busy report this consumer wrote
    cdef uint32_t reported_ms
    cdef bint reported
    cdef int mode             # the consumer's file mode, for the files it makes
    cdef bint exact

    def __cinit__(self):
        self.watch_fd = -1
        self.watch_lock_fd = -1

    def __dealloc__(self):
        if self.watch_fd >= 0:
            close(self.watch_fd)
        if self.watch_lock_fd >= 0:
            close(self.watch_lock_fd)  # (drops the watcher's lock too)

    cdef bint attached_to(self, bytes folder):
        return self.wake_by != WAKE_UNSET and self.folder == folder

    cdef int attach(self, bytes folder, int mode, bint exact) except -1:
        """Wait on `folder` from now on: on its doorbell (or as its watcher), else with an own watch."""
        self.release()
        self.folder, self.mode, self.exact = folder, mode, exact
        self.bell = open_bell(folder, mode, exact, True)
        if self.bell is not None:
            self.watch_lock_fd = open_watch_lock(folder, mode, exact)
            if self.watch_lock_fd >= 0:
                self.wake_by = WAKE_BELL
                return 0
        return self._own_watch()

    cdef int _own_watch(self) except -1:
        self._stop_watching()
        self.wake_by = WAKE_OWN_WATCH
        # Watch before scanning, so that a batch published between the scan and the wait wakes us.
        self.watch_fd = tq_watch_open(self.folder)
        if self.watch_fd < 0:
            self.watch_fd = -2
        return 0

    cdef bint nothing_to_look_at(self) except -1:
        """After a sleep on the doorbell that timed out quietly: whether the folder can be left
        unlisted, because the doorbell was not rung since and the watcher sleeps on the folder
        now (it takes whatever lands, whoever put it there)."""
        cdef int fd, quiet
        cdef uint32_t seen = self.seen
        if not self.quiet or self.wake_by != WAKE_BELL:
            return False
        fd = self.bell.fd
        with nogil:
            quiet = tq_bell_quiet(fd, seen)
        return quiet != 0

    cdef int before_look(self) except -1:
        """Read the doorbell's word before looking at the folder, so that a ring after the look
        wakes the sleep that follows it; with the watcher's lease and the busy report."""
        cdef int rc, fd
        cdef tq_bell_view view
        self.quiet = False
        self.saw_held = False
        self.left = False
        if self.wake_by != WAKE_BELL:
            return 0
        fd = self.bell.fd
        with nogil:
            rc = tq_bell_view_read(fd, &view)
        if rc != 0:  # truncated under us: open what the name is now, or watch the folder
            forget_bell(self.bell)
            self.attach(self.folder, self.mode, self.exact)
            return 0
        self.seen = view.word
        self.watched_until = view.lease_until_ns
        self.report = view.busy
        return 0

    cdef bint leaves_kept_list(self) except -1:
        """Before a claim from the names an earlier listing found: whether this consumer leaves them
        (see leaves_to_busy), judged by the report in the doorbell now."""
        cdef int rc, fd
        cdef tq_bell_view view
        if self.wake_by != WAKE_BELL or not self.sleeps_on_bell or self.rung or self.watcher:
            return False
        fd = self.bell.fd
        with nogil:
            rc = tq_bell_view_read(fd, &view)
        if rc != 0:
            return False  # (the next look finds what happened to the doorbell)
        self.watched_until, self.report = view.lease_until_ns, view.busy
        if not self._leaves(view.busy.holding, view.busy.loading):
            return False
        self.seen = view.word  # (it sleeps from here)
        self.quiet, self.left = False, True
        return True

    cdef bint leaves_unlisted(self) except -1:
        """Before a look: whether this consumer leaves whatever is ready to others without listing
        the folder (see leaves_to_busy), judged by the report the look found."""
        self.left = self._leaves(self.report.holding, self.report.loading)
        return self.left

    cdef bint leaves_to_busy(self, long holding, long loading) except -1:
        """After a look that found batches: whether this consumer (not the watcher, and not rung for
        them) leaves them to others, because another consumer listed the folder a moment ago (the
        pool is moving: it takes them in their turn) and either the watcher sleeps on the folder
        (it wakes for them) or no CPU is free for this consumer (the busy ones take them when they
        finish theirs). Where the others stop, their reports age, and the next look claims."""
        cdef int rc, fd
        if not self._leaves(holding, loading):
            return False
        fd = self.bell.fd
        with nogil:
            rc = tq_bell_read(fd, &self.seen)  # (sleep from here: what was tallied is seen)
        self.left = True
        return True

    cdef bint _leaves(self, long holding, long loading) except -1:
        if (self.wake_by != WAKE_BELL or not self.sleeps_on_bell or self.rung or self.watcher
                or <uint32_t>(tq_now_ms() - self.report.at_ms) >= BUSY_FRESH_MS
                or (self.reported and self.report.at_ms == self.reported_ms)):  # (its own report)
            return False
        return tq_lease_runs(self.watched_until, tq_now_ns()) or not cpu_free(holding, loading, True)

    cdef int after_listing(self, long holding, long loading, bint claimed) except -1:
        """After a claim, or a look that found nothing: report what the listing saw, this
        consumer among the holders when it claimed. A report that would say what the last one
        said is written once a BUSY_FRESH_MS / 5 at most."""
        cdef int fd
        cdef uint32_t now
        if claimed:
            holding += 1
            self.rung = False
        elif self.watcher:
            holding += 1  # (about to sleep on the folder: it takes the next batch, so none is rung for it)
        if self.wake_by != WAKE_BELL:
            return 0
        fd = self.bell.fd
        now = tq_now_ms()
        if (not self.reported or holding != self.reported_holding or loading != self.reported_loading
                or <uint32_t>(now - self.reported_ms) >= BUSY_FRESH_MS // 5):
            self.reported_holding, self.reported_loading = holding, loading
            self.reported_ms, self.reported = now, True
            with nogil:
                tq_bell_report_busy(fd, now, holding, loading)
        return 0

    cdef int ring(self, bytes folder, bint unless_watched, long holding=-1, long loading=0) except -1:
        """Ring `folder`'s doorbell with the one this consumer holds (see ring_bell)."""
        ring_bell(folder, self.bell if folder == self.folder else None, unless_watched, holding, loading)
        return 0

    cdef int _stop_watching(self) except -1:
        """Close the watch of the folder; as the watcher, give the role up."""
        if self.watch_fd >= 0:
            close(self.watch_fd)
        self.watch_fd = -1
        if self.watcher:
            self.watcher = False
            tq_funlock(self.watch_lock_fd)
        return 0

    cdef int release(self) except -1:
        """Stop waiting on the folder: the watch, the role, and this consumer's hold on the
        doorbell (the process's closes with its last user)."""
        self._stop_watching()
        if self.watch_lock_fd >= 0:
            close(self.watch_lock_fd)
        self.watch_lock_fd = -1
        self.wake_by = WAKE_UNSET
        self.bell = None
        return 0

    cdef void forget_after_fork(self) noexcept:
        """In a forked child: the watch and the role are the parent's."""
        if self.watch_fd >= 0:
            close(self.watch_fd)
        self.watch_fd = -1
        if self.watch_lock_fd >= 0:
            close(self.watch_lock_fd)  # (the child's copy, never unlocked: the parent stays the watcher)
        self.watch_lock_fd = -1
        self.watcher = False
        self.wake_by = WAKE_UNSET

    cdef Waited wait(self, double timeout) except *:
        """Sleep until a batch may have landed or `timeout` passed."""
        cdef int fd, rc
        cdef double deadline, step = 0.001
        if self.wake_by == WAKE_BELL:
            return self._wait_on_bell(timeout)
        fd = self.watch_fd
        if fd >= 0:
            with nogil:
                rc = wait_for_ready(fd, timeout)
            return WAITED_QUIET if rc == 0 else WAITED_LOOK
        # No inotify on this platform: poll the folder with a growing interval (at most 10 ms).
        deadline = tq_now() + timeout
        while True:
            with nogil:
                tq_sleep(min(step, deadline - tq_now()))
            if count_ready(self.folder, False) != 0 or tq_now() >= deadline:
                return WAITED_LOOK
            step = min(step * 2, 0.01)

    cdef Waited _wait_on_bell(self, double timeout) except *:
        """Wait as the folder's watcher (taking the role when it is free) or on its doorbell."""
        cdef int fd, rc
        self.sleeps_on_bell = True
        if not self.watcher and not self.quiet:  # (quiet: a watcher sleeps on the folder now)
            rc = try_watch(self.watch_lock_fd)
            self.watcher_seen = rc == WATCH_TAKEN
            if rc == WATCH_UNUSABLE:
                self._own_watch()
                return WAITED_LOOK
            if rc == 0:
                fd = tq_watch_open(self.folder)
                if fd < 0:
                    tq_funlock(self.watch_lock_fd)  # (no inotify: sleep on the doorbell, the role stays free)
                else:
                    self.watcher = True
                    self.watch_fd = fd
                    _crash_point("watch")
                    return WAITED_LOOK  # look first: a batch may have landed before the watch began
        if self.saw_held:
            # A batch is locked for longer than a moment (a slow give-back): its unlocking lands no
            # name to wake anyone, so look again soon.
            with nogil:
                tq_sleep(min(timeout, 0.005))
            return WAITED_LOOK
        if self.watcher:
            return self._watch(timeout)
        return self._sleep_on_bell(timeout)

    cdef Waited _watch(self, double timeout) except *:
        """The watcher's wait: on its watch of the folder, under leases that tell ringers it takes
        what lands (renewed every WATCH_LEASE_S, so that a stopped watcher's lease soon ends)."""
        cdef int fd = self.watch_fd, bell_fd = self.bell.fd, rc
        cdef double deadline = tq_now() + timeout, step
        while True:
            step = min(deadline - tq_now(), WATCH_LEASE_S)
            if step <= 0:
                return WAITED_QUIET  # (the watch saw every ready_ name that landed; the lease is over)
            with nogil:
                tq_bell_lease(bell_fd, tq_now_ns() + <uint64_t>(step * 1e9))
                rc = wait_for_ready(fd, step)
            if rc != 0:
                with nogil:
                    tq_bell_lease(bell_fd, 0)  # awake: from here on ringers wake another consumer
                _crash_point("watched")
                return WAITED_LOOK

    cdef Waited _sleep_on_bell(self, double timeout) except *:
        cdef uint32_t *word = self.bell.word
        cdef uint32_t seen = self.seen
        cdef double step = min(timeout, BELL_SLEEP_S)
        cdef double warm = min(step, self.claimed_at + WARM_S - tq_now())
        cdef int rc = TQ_BELL_TIMED_OUT
        _crash_point("wait")
        with nogil:
            if warm > 0:  # woken first for a moment after a batch, while its caches hold it
                rc = tq_bell_wait(word, seen, warm, TQ_BELL_WARM)
            if rc == TQ_BELL_TIMED_OUT and step > warm:
                rc = tq_bell_wait(word, seen, step - max(warm, 0), TQ_BELL_COLD)
        if rc == TQ_BELL_RUNG:
            self.rung = True
            _crash_point("woken")
            return WAITED_LOOK
        self.rung = False
        if rc == TQ_BELL_MOVED:  # (a ring, or a batch no one was woken for: look, as at a timeout)
            return WAITED_LOOK
        if rc != TQ_BELL_TIMED_OUT or not self.bell.still_named():
            # Truncated, removed or replaced: open what the name refers to now at the next claim.
            forget_bell(self.bell)
            self.release()
            return WAITED_LOOK
        # Not rung: no batch came that a ringer did not leave to a sleeping watcher, and one whose
        # producer rings nothing was seen by the watcher. Look again only if there was no watcher
        # to see it, or after a sleep cut short at BELL_SLEEP_S (a watcher stopped mid-lease).
        self.quiet = self.watcher_seen and step >= timeout and not self.left
        return WAITED_QUIET if self.quiet else WAITED_LOOK
