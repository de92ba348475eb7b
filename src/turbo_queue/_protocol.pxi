# The batch-folder protocol: the only code that spells the names of a queue folder (every state, the
# pure-Python package's names, owner locks) and that moves a batch from one state to the next.
#
#   loading_<s>_<ns>-<owner>.db -> ready_<s>_<ns>-<owner>-n<events>.db -> chosen_<rest>_<owner> -> deleted
#   any unreadable batch -> invalid_<name>
#   a consumer died holding it: chosen_<rest>_<owner>[+h<i>[-<j>]] -> ready_<base>+a<n>+e<i>[-<j>],...db
#   the events in hand at max_attempts deaths -> dead_<base>-e<i>[-<j>]+a<n>.db (requeue: -> ready_)
#
# <s>_<ns> is the creation time (seconds, then nanoseconds in 9 digits): sorting names sorts batches
# oldest first, one producer's in publish order. <owner> is the 12-hex-digit token of the process
# that holds the batch, whose flock()ed .owner_<owner>.lock says whether it lives. The transitions
# return a Moved code and leave errno in *err; callers turn a failure into an exception with
# os_error() (the errors unit). docs/design.md says who may make which move, and where it can crash.

# -- States: the prefixes, spelled here and nowhere else -------------------------------------------

STATE_PREFIXES = {"loading": "loading_", "ready": "ready_", "chosen": "chosen_", "invalid": "invalid_",
                  "dead": "dead_"}
# What parse_name() can answer: the states above and "legacy", a name of an older pure-Python
# version (load_, unload_, avail_, assigned_, or 0.5.2's ready_<rest>_temp_hold claim in
# progress), which only startup recovery (recover_folder(legacy=True)) returns to ready_.
STATES = ("loading", "ready", "chosen", "invalid", "dead", "legacy")
_LEGACY_PREFIXES = ("load_", "unload_", "avail_", "assigned_")
_LEGACY_CLAIM_SUFFIX = "_temp_hold"
# SQLite's side files go with their batch, never on their own.
_SIDE_FILE_SUFFIXES = ("-journal", "-wal", "-shm")

cdef bytes LOADING_B = b"loading_"
cdef bytes READY_B = b"ready_"
cdef bytes CHOSEN_B = b"chosen_"
cdef bytes BATCH_SUFFIX_B = b".db"
cdef bytes OWNER_LOCK_B = b".owner_"
cdef bytes OWNER_LOCK_SUFFIX_B = b".lock"

# The rest of a name we write (after the state prefix): <s>_<ns>-<owner>.db while loading, then with
# -n<events> before .db once published; chosen_ adds _<owner of the claim>, and +h<i> while a
# consumer careful with a batch that killed one hands out its events i to j (+h<i> when i == j; see
# Dequeue._hold).
_OWN_BATCH = re.compile(r"^(\d+_\d{9}-([0-9a-f]{12})\.db)$")
_OWN_CHOSEN = re.compile(r"^(\d+_.+\.db)_([0-9a-f]{12})(?:\+h(\d+)(?:-(\d+))?)?$")
_BATCH_REST = re.compile(r"^\d+_.+\.db$")
# A batch's attempts, last before .db: +a<consumers that died holding it>, then +e<the events each
# had in hand, where known, oldest first: i, or i-j for a batch call's>. "+" appears in no name the
# pure-Python package writes.
_ATTEMPTS = re.compile(r"\+a(\d+)(?:\+e(\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*))?\.db$")
_EVENT_COUNT = re.compile(r"-n(\d+)(?:\+a\d+(?:\+e[\d,-]+)?)?\.db$")
# A dead letter of ours: events <i> to <j> of the batch <base>, set aside after <attempts> deaths.
_DEAD_LETTER = re.compile(r"-e(\d+)(?:-(\d+))?\+a(\d+)\.db$")
_EPOCH = re.compile(r"^(\d+)_")
# The events in hand a name remembers (the latest ones): names stay short.
cdef int MAX_IN_HAND_KEPT = 3


cdef class BatchName:
    """What a file name in a queue folder says: `state` (one of STATES), `rest` (the name after its
    state prefix, as `<epoch>_<id>.db`), `owner` (the token of the process that holds it, or None for
    names of the pure-Python package), `events` (the event count a published or claimed name or a
    dead letter carries, or None), `epoch` (its creation time in seconds, or None), `attempts` (how many
    consumers died holding it, or for a dead letter before it was set aside), `in_hand` (the events
    each of the latest of them had in hand, where known, oldest first, as (first, last) indexes),
    `holding` (chosen_: the (first, last) events its careful consumer hands out now, or None) and
    `index` (a dead letter: the index of its first event in the batch it came from, or None), and
    `base` (the rest without attempts and .db: the same for a batch in every state it goes through)."""
    cdef readonly str name, state, rest, base
    cdef readonly object owner, events, epoch, holding, index
    cdef readonly int attempts
    cdef readonly tuple in_hand

    def __repr__(self):
        return (f"BatchName({self.name!r}, state={self.state!r}, owner={self.owner!r}, "
                f"events={self.events!r}, attempts={self.attempts!r})")


cdef BatchName _batch_name(str name, str state, str rest, object owner, object holding=None):
    cdef BatchName b = BatchName.__new__(BatchName)
    b.name, b.state, b.rest, b.owner, b.holding = name, state, rest, owner, holding
    b.events = b.index = None
    b.attempts, b.in_hand = 0, ()
    b.base = _base_of(rest) if rest.endswith(".db") else rest
    if state == "dead":
        m = _DEAD_LETTER.search(rest)
        if m:
            b.index, b.attempts = int(m.group(1)), int(m.group(3))
            b.events = int(m.group(2)) - b.index + 1 if m.group(2) else 1
        else:
            m = _EVENT_COUNT.search(rest)
            b.events = int(m.group(1)) if m else None
    else:
        if state == "ready" or state == "chosen":
            m = _EVENT_COUNT.search(rest)
            b.events = int(m.group(1)) if m else None
        if "+a" in rest:
            b.attempts, b.in_hand = _attempts_of(rest)
    m = _EPOCH.match(rest)
    b.epoch = int(m.group(1)) if m else None
    return b


cdef tuple _span(str text):
    first, _, last = text.partition("-")
    return (int(first), int(last or first))


cdef str _span_text(tuple span):
    return str(span[0]) if span[0] == span[1] else f"{span[0]}-{span[1]}"


cdef tuple _attempts_of(str rest):
    """(attempts, in_hand) of a batch's rest."""
    m = _ATTEMPTS.search(rest)
    if m is None:
        return 0, ()
    return int(m.group(1)), tuple(_span(t) for t in m.group(2).split(",")) if m.group(2) else ()


cdef str _base_of(str rest):
    """A batch's rest without its attempts and .db: what names derived from it start with."""
    m = _ATTEMPTS.search(rest)
    return rest[:m.start()] if m else rest[:-3]


cdef str _died_rest(str rest, object holding):
    """The rest of a batch given back after its consumer died holding it (or failed with it): one
    more attempt, and the events it had in hand (`holding`: (first, last), or None when unknown)
    remembered last."""
    cdef int attempts
    cdef tuple in_hand
    attempts, in_hand = _attempts_of(rest)
    kept = [span for span in in_hand if span != holding]
    if holding is not None:
        kept.append(holding)
    kept = kept[-MAX_IN_HAND_KEPT:]
    tail = f"+a{attempts + 1}" + ("+e" + ",".join(_span_text(span) for span in kept) if kept else "")
    return _base_of(rest) + tail + ".db"


cdef str _with_suffix(str rest, str suffix):
    """The rest with `suffix` added before its attempts (so that they are kept)."""
    m = _ATTEMPTS.search(rest)
    if m is None:
        return rest[:-3] + suffix + ".db"
    return rest[:m.start()] + suffix + rest[m.start():]


def parse_name(name):
    """The BatchName of a file name of a queue folder, or None for a name that is no batch (owner
    locks, SQLite's side files, anything else)."""
    name = os.fsdecode(name)
    if name.startswith(".") or name.endswith(_SIDE_FILE_SUFFIXES):
        return None
    if name.startswith("loading_"):
        rest = name[8:]
        m = _OWN_BATCH.match(rest)
        return _batch_name(name, "loading", rest, m.group(2) if m else None)
    if name.startswith("ready_"):
        if name.endswith(_LEGACY_CLAIM_SUFFIX):
            return _batch_name(name, "legacy", name[6:-len(_LEGACY_CLAIM_SUFFIX)], None)
        if not name.endswith(".db"):
            return None
        return _batch_name(name, "ready", name[6:], None)
    if name.startswith("chosen_"):
        rest = name[7:]
        m = _OWN_CHOSEN.match(rest)
        if m:
            return _batch_name(name, "chosen", m.group(1), m.group(2),
                               (int(m.group(3)), int(m.group(4) or m.group(3))) if m.group(3) else None)
        return _batch_name(name, "chosen", rest, None)
    if name.startswith("invalid_"):
        return _batch_name(name, "invalid", name[8:], None)
    if name.startswith("dead_"):
        if not name.endswith(".db"):
            return None
        return _batch_name(name, "dead", name[5:], None)
    for prefix in _LEGACY_PREFIXES:
        if name.startswith(prefix):
            return _batch_name(name, "legacy", name[len(prefix):], None)
    return None


def dead_letter_source(name):
    """The ready_ name of the batch a dead letter of ours came from (without its attempts), or None."""
    cdef BatchName b = parse_name(name)
    if b is None or b.state != "dead" or b.index is None:
        return None
    m = _DEAD_LETTER.search(b.rest)
    return "ready_" + b.rest[:m.start()] + ".db"


def events_in_name(name):
    """The event count a ready_ name carries (ours do), or None."""
    m = _EVENT_COUNT.search(os.fsdecode(name))
    return int(m.group(1)) if m else None


def owner_lock_name(str token):
    """The name of the lock file that the process with this owner token holds while it lives."""
    return (OWNER_LOCK_B + token.encode() + OWNER_LOCK_SUFFIX_B).decode()


def owner_of_lock_name(name):
    """The owner token of an owner lock file's name, or None for any other name."""
    cdef bytes b = os.fsencode(name)
    if b.startswith(OWNER_LOCK_B) and b.endswith(OWNER_LOCK_SUFFIX_B):
        return os.fsdecode(b[len(OWNER_LOCK_B):-len(OWNER_LOCK_SUFFIX_B)])
    return None


cdef inline bytes _owner_lock_path(bytes folder, str token):
    return folder + OWNER_LOCK_B + token.encode() + OWNER_LOCK_SUFFIX_B


# -- Names we build ---------------------------------------------------------------------------------

cdef bytes _new_batch_rest(int64_t ns, str token):
    """`<s>_<ns>-<owner>.db`: the name of a new batch after its state prefix."""
    return f"{ns // 1000000000}_{ns % 1000000000:09d}-{token}.db".encode()


cdef inline bytes _loading_path(bytes folder, bytes rest):
    return folder + LOADING_B + rest


cdef inline bytes _published_path(bytes folder, bytes rest, Py_ssize_t events):
    # The event count in the name lets anyone see how many events wait without opening a file.
    return folder + READY_B + rest[:-3] + b"-n%d.db" % events


cdef inline bytes _ready_path(bytes folder, bytes rest):
    return folder + READY_B + rest


cdef inline bytes _chosen_path(bytes folder, bytes rest, bytes token):
    return folder + CHOSEN_B + rest + b"_" + token


cdef inline bytes _holding_path(bytes folder, bytes rest, bytes token, tuple span):
    # A careful consumer's claim with the events it is about to hand out: what recovery reads.
    return folder + CHOSEN_B + rest + b"_" + token + b"+h" + _span_text(span).encode()


cdef str _dead_prefix(str rest, tuple span):
    # dead_<the batch's base>-e<first>[-<last>]+a: the name of a dead letter, up to its attempts.
    return f"dead_{_base_of(rest)}-e{_span_text(span)}+a"


cdef bytes _dead_path(bytes folder, str rest, tuple span, int attempts):
    # ...+a<attempts>.db: events that consumers had in hand when `attempts` of them died.
    return folder + f"{_dead_prefix(rest, span)}{attempts}.db".encode()


cdef inline bytes _dead_batch_path(bytes folder, bytes rest, Py_ssize_t events):
    # dead_<s>_<ns>-<owner>-n<events>.db: events a consumer gave up on (add_dead_letters).
    return folder + b"dead_" + rest[:-3] + b"-n%d.db" % events


cdef inline bytes _set_aside_path(bytes folder, bytes rest, Py_ssize_t index):
    # invalid_<the batch's rest>-e<index>.db: one event that could not be decoded, set aside.
    return folder + b"invalid_" + rest[:-3] + b"-e%d.db" % index


cdef inline bytes _rest_of_ready(bytes name):
    return name[6:]


cdef int64_t _ns_of_rest(str rest):
    """The creation time (ns) a batch name carries, or 0: a batch written to keep another's place in
    line takes its time."""
    m = re.match(r"^(\d+)_(\d{9})", rest)
    return int(m.group(1)) * 1000000000 + int(m.group(2)) if m else 0


cdef str _recovered_rest(str rest, str state, Py_ssize_t events):
    """The rest of the ready_ name a recovered batch is published under."""
    if not _BATCH_REST.match(rest):  # a name that orders nowhere: it goes last, as new
        return f"{int(time.time())}_{secrets.token_hex(8)}.db"
    if state == "loading" and _OWN_BATCH.match(rest):
        return f"{rest[:-3]}-n{events}.db"
    return rest


cdef bint _is_own_loading(str rest):
    return _OWN_BATCH.match(rest) is not None


# -- Holding a batch ----------------------------------------------------------------------------------
#
# Whoever may move a batch holds an flock on the file itself for as long as it may: a producer from
# creating its loading_ file until it is ready_, a consumer from before its claim until the batch is
# deleted or given back, recovery while it checks and moves a leftover. The lock belongs to the
# file, not to its name, so no cleaner can take it away; a batch is taken from an owner only when
# its file's lock is free (and its owner lock file, where there is one, says the owner is dead).

# Files already reported as left alone, so that every pass does not log them again.
cdef set _reported = set()


cdef void _report_once(bytes path, str why) except *:
    if path in _reported:
        return
    if len(_reported) > 10000:
        _reported.clear()
    _reported.add(path)
    logger.warning("turbo_queue: left %s alone: %s", os.fsdecode(path), why)


cdef str _file_kind(int mode):
    if S_ISDIR(mode):
        return "a directory"
    if S_ISFIFO(mode):
        return "a FIFO"
    if S_ISSOCK(mode):
        return "a socket"
    if S_ISCHR(mode) or S_ISBLK(mode):
        return "a device"
    return "not a regular file"


# lock_batch()'s answers besides a descriptor.
cdef enum:
    BATCH_GONE = -1          # removed or moved meanwhile
    BATCH_HELD = -2          # a live process holds it
    BATCH_QUARANTINED = -3   # no regular file: renamed invalid_..., never opened
    BATCH_LEFT_ALONE = -4    # cannot be opened by this user: another user's batch?


cdef int lock_batch(bytes folder, bytes name, struct_stat *st) except -100:
    """Open and lock a batch file of the folder before moving it, without following a symlink or
    blocking on a FIFO. Returns the locked descriptor, or one of the answers above: a name that is
    no regular file at all (FIFO, socket, device, directory, symlink) is quarantined."""
    cdef bytes path = folder + name
    cdef const char *cpath = path
    cdef int fd, err
    with nogil:
        fd = tq_lock_existing(cpath, st)
        err = errno
    if fd >= 0:
        return fd
    if fd == TQ_LOCK_HELD:
        return BATCH_HELD
    if fd == TQ_ERROR and err == ENOENT:
        return BATCH_GONE
    if fd == TQ_NOT_REGULAR or (fd == TQ_ERROR and err in (ELOOP, ENXIO)):
        what = (_file_kind(st.st_mode) if fd == TQ_NOT_REGULAR else
                "a symbolic link" if err == ELOOP else "a socket")
        if quarantine(folder, os.fsdecode(name), f"{what}, not a batch: never opened or followed"):
            return BATCH_QUARANTINED
        return BATCH_GONE
    if fd == TQ_ERROR and err in (EACCES, EPERM):
        _report_once(path, f"it cannot be opened ({os.strerror(err)}): another user's batch?")
        return BATCH_LEFT_ALONE
    raise os_error(err, "open batch", path)


# -- Transitions --------------------------------------------------------------------------------------

cdef enum Moved:
    MOVED = 0    # done
    GONE = 1     # the source is not there: another process moved it first, or it was removed
    TAKEN = 2    # the target exists (moves that must not replace)
    FAILED = 3   # *err says why


cdef Moved _move(bytes src, bytes dst, bint replace, int *err) noexcept:
    cdef const char *s = src
    cdef const char *d = dst
    cdef int rc
    with nogil:
        rc = rename(s, d) if replace else tq_rename_noreplace(s, d)
        err[0] = errno
    if rc == 0:
        return MOVED
    if err[0] == ENOENT:
        return GONE
    return TAKEN if err[0] == EEXIST else FAILED


cdef inline Moved publish_batch(bytes loading, bytes ready, int *err) noexcept:
    """loading_ -> ready_: the batch is complete and closed, and safe from here on."""
    return _move(loading, ready, True, err)


cdef inline Moved claim_batch(bytes ready, bytes chosen, int *err) noexcept:
    """ready_ -> chosen_: of the consumers renaming one batch, exactly one gets MOVED."""
    return _move(ready, chosen, True, err)


cdef inline Moved give_back_batch(bytes chosen, bytes ready, int *err) noexcept:
    """chosen_ -> ready_ under its original name, so that it keeps its place in line."""
    return _move(chosen, ready, False, err)


cdef inline Moved hold_event(bytes chosen, bytes holding, int *err) noexcept:
    """chosen_... -> chosen_...+h<i>: a careful consumer says which event it is about to hand out,
    so that if it dies with it, recovery knows (its lock is on the file and goes with it)."""
    return _move(chosen, holding, True, err)


cdef Moved finish_batch(bytes chosen, int *err) noexcept:
    """Delete a batch whose every event was handed out."""
    cdef const char *p = chosen
    cdef int rc
    with nogil:
        rc = unlink(p)
        err[0] = errno
    if rc == 0:
        return MOVED
    return GONE if err[0] == ENOENT else FAILED


cdef str quarantine(bytes folder, str name, str reason):
    """Rename a batch that cannot be read to invalid_<name> (without opening it) and log why; never
    delete it. Returns the new name, or None if the file was gone."""
    cdef bytes src = folder + os.fsencode(name)
    cdef str target = "invalid_" + name
    cdef int err = 0
    cdef Moved moved
    for attempt in range(100):
        moved = _move(src, folder + os.fsencode(target), False, &err)
        if moved == MOVED:
            logger.error("turbo_queue: quarantined %s as %s: %s. Its events were not delivered; "
                         "inspect it with the sqlite3 tool, or delete it.", os.fsdecode(src),
                         target, reason)
            return target
        if moved == GONE:
            return None
        if moved == FAILED:
            raise os_error(err, "quarantine unreadable batch", src)
        target = f"invalid_{attempt}_{name}"
    raise os_error(EEXIST, "quarantine unreadable batch", src)


cdef str publish_leftover(bytes folder, str name, str rest, str state, Py_ssize_t events):
    """Recovery's move: a leftover batch of a dead process -> ready_, never replacing another batch.
    Returns "published" or "gone"."""
    cdef bytes src = folder + os.fsencode(name)
    cdef bytes dst
    cdef int err = 0
    cdef Moved moved
    rest = _recovered_rest(rest, state, events)
    _crash_point("recover")
    for attempt in range(100):
        dst = folder + os.fsencode("ready_" + rest)
        moved = _move(src, dst, False, &err)
        if moved == MOVED:
            logger.info("turbo_queue: recovered %s (%d events) as %s", os.fsdecode(src), events,
                        "ready_" + rest)
            ring_bell(folder)
            return "published"
        if moved == GONE:
            return "gone"
        if moved == FAILED:
            raise os_error(err, "publish recovered batch", src)
        if os.path.samefile(src, dst):
            # An earlier recovery died between link() and unlink(): the batch is already ready_.
            os.unlink(src)
            return "published"
        rest = _with_suffix(rest, f"-r{attempt}")
    raise os_error(EEXIST, "publish recovered batch", src)


cdef bytes _requeued_name(BatchName b, Py_ssize_t events):
    """ready_<s>_<ns>-<new id>-n<events>.db: a dead letter back in line at the place of the batch it
    came from, with no attempts."""
    cdef int64_t ns = _ns_of_rest(b.rest)
    if ns == 0 and b.epoch is not None:
        ns = <int64_t>b.epoch * 1000000000
    count = f"-n{events}" if events >= 0 else ""  # (unknown: consumers and stats count the rows)
    return f"ready_{ns // 1000000000}_{ns % 1000000000:09d}-{secrets.token_hex(6)}{count}.db".encode()


def requeue_dead_letter(folder, name, Py_ssize_t events):
    """Return the dead letter `name` of `folder` (holding `events` events, or -1: unknown) to ready_,
    in line where its batch was, with its attempts reset, without opening it (what is no batch is
    quarantined by the consumer that claims it). Returns the new name, or None if it was gone."""
    cdef BatchName b = parse_name(name)
    cdef bytes folder_b = os.fsencode(os.path.join(os.fspath(folder), ""))
    cdef bytes target
    cdef int err = 0
    cdef Moved moved
    if b is None or b.state != "dead":
        raise ValueError(f"turbo_queue: {name!r} is not a dead letter (dead_...db)")
    _crash_point("requeue")
    for attempt in range(100):
        target = _requeued_name(b, events)
        moved = _move(folder_b + os.fsencode(b.name), folder_b + target, False, &err)
        if moved == MOVED:
            ring_bell(folder_b)
            logger.warning("turbo_queue: requeued dead letter %s%s as %s", os.fsdecode(folder_b), b.name,
                           os.fsdecode(target))
            return os.fsdecode(target)
        if moved == GONE:
            return None
        if moved == FAILED:
            raise os_error(err, "requeue dead letter", folder_b + os.fsencode(b.name))
    raise os_error(EEXIST, "requeue dead letter", folder_b + os.fsencode(b.name))


# -- Looking at the folder -----------------------------------------------------------------------------

cdef list scan_ready(bytes folder, long *holding=NULL, long *loading=NULL):
    """The ready_ batch names of `folder`, oldest first (listed and sorted in C, without the GIL);
    with, where asked, how many chosen_ and loading_ names the listing saw."""
    cdef tq_names found
    cdef int rc, err
    cdef size_t i
    cdef const char *cfolder = folder
    with nogil:
        rc = tq_scan(cfolder, b"ready_", b".db", 1, &found)
        err = errno
    if rc != 0:
        raise os_error(err, "list the queue folder", folder)
    if holding != NULL:
        holding[0], loading[0] = found.holding, found.loading
    try:
        return [found.names[i] for i in range(found.count)]
    finally:
        tq_names_free(&found)


cdef long count_ready(bytes folder, bint strict) except -2:
    """ready_ batches in `folder`, counted in C with the GIL released. A folder that cannot be
    listed raises when strict, else counts as -1."""
    cdef const char *cfolder = folder
    cdef long n
    cdef int err
    with nogil:
        n = tq_count(cfolder, b"ready_", b".db")
        err = errno
    if n < 0 and strict:
        raise os_error(err, "list the queue folder", folder)
    return n


cdef int wait_for_ready(int watch_fd, double timeout) noexcept nogil:
    """Sleep on the folder's inotify watch until a ready_ name lands or `timeout` passes."""
    return tq_watch_wait(watch_fd, timeout, b"ready_")
