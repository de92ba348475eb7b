# Settings shared by every class, with the checks that name a bad value (the original package kept
# them all on one base class), and the folder a queue lives in.

DURABILITY = ("process", "os")

cdef inline int _check_int(str name, object value, long minimum) except -1:
    if type(value) is not int or value < minimum:
        raise ValueError(f"turbo_queue: {name} must be an integer >= {minimum}, not {value!r}")
    return 0


cdef inline int _check_bool(str name, object value) except -1:
    if type(value) is not bool:
        raise ValueError(f"turbo_queue: {name} must be True or False, not {value!r}")
    return 0


# The longest name we give a file, past the folder's path (chosen_ with two tokens, a count, the
# attempts and the events in hand, +h<i>, "-journal" beside it), for the check against SQLite's
# limit on a path.
cdef Py_ssize_t LONGEST_BATCH_NAME = 140
# What a file system allows for one name (NAME_MAX on Linux and macOS).
cdef Py_ssize_t NAME_MAX = 255
# SQLite's limit on a path (its default VFS's mxPathname; 512 unless built otherwise).
cdef Py_ssize_t SQLITE_MAX_PATH = sqlite3_vfs_find(NULL).mxPathname if sqlite3_vfs_find(NULL) != NULL else 512


cdef bytes _encoded_name(str setting, str value):
    try:
        return os.fsencode(value)
    except UnicodeEncodeError as e:
        raise ValueError(f"turbo_queue: {setting} {value!r} cannot be a file name on this system "
                         f"({e.reason} at position {e.start})") from None


cdef str _check_queue_name(object value):
    if type(value) is not str:
        raise ValueError(f"turbo_queue: queue_name must be a string, not {value!r}")
    name = <str>value
    if len(_encoded_name("queue_name", name)) > NAME_MAX:
        raise ValueError(f"turbo_queue: queue_name is {len(_encoded_name('queue_name', name))} bytes "
                         f"long; a folder name can have at most {NAME_MAX}")
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
    # False when max_batch_age is infinite: batches are published only when full, on flush() or
    # close(), and no age thread is started.
    cdef bint _ages_batches
    cdef bint _enqueue_active
    cdef int _file_mode
    cdef bint _exact_mode
    cdef int _ser
    cdef object _custom
    cdef object _serializer
    # Accepted for compatibility with the pure-Python package, which did not act on them either.
    cdef int _num_loaders, _num_queues
    cdef bint _dequeue_active, _processing_hold, _drop_overflow, _remove_invalid
    # Its counters were added to this process's totals of closed ones (see _lifecycle.pxi).
    cdef bint _counted_out

    def __cinit__(self, *args, **kwargs):
        self._queue_name = "example_queue_name"
        self._root_path = "/dc_data"
        self._max_ready_files = 1
        self._max_events_per_file = 80000
        self._max_batch_age = 10.0
        self._max_batch_age_value = 10
        self._ages_batches = True
        self._num_loaders = self._num_queues = 1
        self._dequeue_active = self._remove_invalid = True
        self._serializer = "json"
        self._file_mode = 0o644

    cdef int _configure(self, dict settings) except -1:
        for key, value in settings.items():
            if value is not None:
                setattr(self, key, value)
        return 0

    cdef bytes _folder(self):
        """`root_path/queue_name/` as bytes, created if missing (with the search bits that match
        `mode`, when it is set, in every folder made)."""
        if self._folder_b is None:
            path = os.path.join(self._root_path, self._queue_name)
            folder = os.fsencode(os.path.join(path, ""))
            if len(os.path.abspath(folder)) + LONGEST_BATCH_NAME > SQLITE_MAX_PATH:
                raise ValueError(
                    f"turbo_queue: the queue folder {path!r} is too long a path: SQLite opens files by "
                    f"paths of at most {SQLITE_MAX_PATH} bytes, and batch names take up to "
                    f"{LONGEST_BATCH_NAME}; choose a shorter root_path or queue_name")
            _make_folders(path, self._folder_mode(), self._exact_mode)
            self._folder_b = folder
        return self._folder_b

    def folder_watch(self, departures=False):
        """A FolderWatch of this queue's folder (created if missing), for an event loop to wait on."""
        return FolderWatch(self._folder(), departures)

    cdef int _folder_mode(self):
        # Search (x) bits wherever the file mode gives read bits: 0o600 -> 0o700, 0o640 -> 0o750.
        return self._file_mode | ((self._file_mode & 0o444) >> 2) if self._exact_mode else 0o777

    @property
    def mode(self):
        """Permission bits of every file and folder this queue creates (folders get the search bits
        that match: 0o600 makes 0o700 folders), applied exactly, whatever the umask. None (default):
        0o644 files and 0o777 folders, less the umask. Existing files and folders keep theirs."""
        return self._file_mode if self._exact_mode else None

    @mode.setter
    def mode(self, value):
        if value is None:
            self._file_mode, self._exact_mode = 0o644, False
            return
        if type(value) is not int or not 0 <= value <= 0o777:
            raise ValueError(f"turbo_queue: mode must be permission bits from 0 to 0o777 (such as "
                             f"0o600), or None, not {value!r}")
        self._file_mode, self._exact_mode = value, True

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
        _encoded_name("root_path", value)
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
        """Seconds (fractions allowed) after its first event by which a partial batch is published;
        math.inf: never by age (no background thread), only when full, on flush() or close()."""
        return self._max_batch_age_value

    @max_batch_age.setter
    def max_batch_age(self, value):
        if type(value) not in (int, float) or not value > 0:
            raise ValueError(f"turbo_queue: max_batch_age must be a number of seconds > 0, not {value!r}")
        self._max_batch_age = value
        self._max_batch_age_value = value
        self._ages_batches = isfinite(self._max_batch_age)
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
        return count_ready(self._folder(), True)


cdef int _make_folders(str path, int mode, bint exact) except -1:
    """Make `path` and the folders above it that are missing, each with `mode` (exactly if
    `exact`). A path that exists and is no folder raises ValueError naming it."""
    missing = []
    p = path
    while not os.path.isdir(p):
        if os.path.lexists(p) and not os.path.isdir(p):  # (made meanwhile by another process: fine)
            raise ValueError(f"turbo_queue: {p!r} is not a folder, so the queue folder {path!r} "
                             f"cannot be made there: check root_path and queue_name")
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for p in reversed(missing):
        try:
            os.mkdir(p, mode)
        except FileExistsError:
            if not os.path.isdir(p):
                raise ValueError(f"turbo_queue: {p!r} is not a folder: check root_path") from None
            continue
        except OSError as e:
            raise os_error(e.errno, "create the queue folder", p) from None
        if exact:
            os.chmod(p, mode)
    return 0


# The counters of this process's producers and consumers that closed, per (role, queue folder), so
# that the totals process_counters() reports only grow.
cdef dict _retired_counters = {}


cdef int _count_out(_QueueBase q, str role) except -1:
    """Add a closing producer's or consumer's counters to the totals of closed ones, once. (Under the
    GIL, with no Python code between, so that process_counters() sees it live or retired, never
    both or neither.)"""
    if q._counted_out:
        return 0
    q._counted_out = True
    total = _retired_counters.setdefault((role, os.path.join(q._root_path, q._queue_name)), {})
    for k, v in q.counters().items():
        total[k] = total.get(k, 0) + v
    return 0
