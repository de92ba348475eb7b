# The compiled core, turbo_queue._core: the module that includes every unit of the core, in order.
# cython: language_level=3, embedsignature=True, auto_pickle=False, autotestdict=False
"""The compiled core of turbo_queue: one extension built from one include file per unit.

A queue is a folder of SQLite files, one batch of events each. Processes coordinate only through
file names and rename(2); the protocol unit spells every name and makes every move. Units, lowest
first (each includes only what is above it in this list, and says in its first line what it owns):

    _capi.pxd         the C functions called: SQLite's API, the POSIX helpers of _tq_os.h and
                      the JSON value walk of _tq_json.h
    _errors.pxi       SQLite codes and errno to exceptions (the one error translator)
    _crash.pxi        crash points, the test hook of the crash tests
    _batchfile.pxi    the batch file: schema, pragmas, creating, writing and reading one
    _wakeup.pxi       waking consumers: the folder's doorbell and its watcher role
    _protocol.pxi     the folder: names of every state, and the transitions between states
    _loopwatch.pxi    a watch of the folder that an event loop can wait on (turbo_queue.aio)
    _owner.pxi        owner locks: who is alive
    _serializers.pxi  events to bytes and back
    _settings.pxi     the settings every class shares
    _recovery.pxi     batches of dead processes back to ready_ (recover_folder, Startup)
    _producer.pxi     Enqueue
    _waiting.pxi      how a consumer waits: as the watcher, on the doorbell, or on its own watch
    _consumer.pxi     Dequeue
    _lifecycle.pxi    closing at exit, forgetting the parent's files after fork()

docs/design.md describes the protocol, its crash points, and where to change what.
"""

import atexit
import gc
import json as _stdjson
import logging
import math
import os
import pickle as _pickle
import re
import secrets
import signal
import stat as stat_module
import sys
import threading
import time
import weakref

import orjson

from turbo_queue.errors import (
    CorruptBatchError,
    DecodeError,
    EncodeError,
    EventTooLargeError,
    SQLiteError,
    TurboQueueError,
)

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_Next
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.object cimport PyObject
from cpython.pythread cimport (
    NOWAIT_LOCK,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
    PyThread_type_lock,
)
from libc.errno cimport (EACCES, EDQUOT, EEXIST, EIO, EISDIR, ELOOP, EMFILE, EMLINK, ENAMETOOLONG, ENFILE,
                         ENOENT, ENOMEM, ENOSPC, ENOSYS, ENOTDIR, ENXIO, EPERM, EROFS, errno)
from libc.math cimport isfinite
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdio cimport rename
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, strcmp, strncmp
from posix.stat cimport S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISREG, S_ISSOCK, struct_stat
from posix.unistd cimport close, pread, rmdir, unlink

from turbo_queue._capi cimport *

logger = logging.getLogger("turbo_queue")

include "_errors.pxi"
include "_crash.pxi"
include "_batchfile.pxi"
include "_wakeup.pxi"
include "_protocol.pxi"
include "_loopwatch.pxi"
include "_owner.pxi"
include "_serializers.pxi"
include "_settings.pxi"
include "_recovery.pxi"
include "_producer.pxi"
include "_waiting.pxi"
include "_consumer.pxi"
include "_lifecycle.pxi"
