"""Builds the Cython extension; everything else is in pyproject.toml.

Environment switches:
  TURBO_QUEUE_DEBUG=1        -O0 -g, Cython line tracing and annotated HTML (for profiling).
  TURBO_QUEUE_SQLITE_PREFIX  a folder with include/sqlite3.h and lib/libsqlite3.* to build against
                             instead of the system's SQLite.
  TURBO_QUEUE_SQLITE_AMALGAMATION
                             a folder with SQLite's amalgamation (sqlite3.c, sqlite3.h): compiled
                             into the extension with the options below, no shared library linked.
                             What every wheel does (scripts/sqlite-amalgamation.sh makes the folder).
"""

import glob
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("TURBO_QUEUE_DEBUG") == "1"
prefix = os.environ.get("TURBO_QUEUE_SQLITE_PREFIX")
amalgamation = os.environ.get("TURBO_QUEUE_SQLITE_AMALGAMATION")

# SQLite compiled in: the options its documentation recommends for speed, where they fit how the
# core uses it (https://sqlite.org/compile.html), and its symbols hidden inside the extension so
# that they never meet another SQLite in the process (Python's own sqlite3 module's, say).
AMALGAMATION_OPTIONS = [
    ("SQLITE_THREADSAFE", "2"),  # a connection is never used by two threads at once (NOMUTEX too)
    ("SQLITE_DEFAULT_MEMSTATUS", "0"),  # no memory accounting: a mutex and counters per malloc
    ("SQLITE_DQS", "0"),  # a string in double quotes is never taken for a name
    ("SQLITE_OMIT_DEPRECATED", None),
    ("SQLITE_OMIT_SHARED_CACHE", None),
    ("SQLITE_OMIT_LOAD_EXTENSION", None),  # no dlopen(): batch files are data, never code
    ("SQLITE_OMIT_PROGRESS_CALLBACK", None),
    ("SQLITE_LIKE_DOESNT_MATCH_BLOBS", None),
    ("SQLITE_MAX_EXPR_DEPTH", "0"),
    ("SQLITE_USE_ALLOCA", None),
    ("SQLITE_STRICT_SUBTYPE", "1"),
    ("HAVE_USLEEP", "1"),  # (without it a busy wait sleeps whole seconds)
    ("HAVE_LOCALTIME_R", "1"),
    ("SQLITE_API", '__attribute__((visibility("hidden")))'),
] + ([("HAVE_FDATASYNC", "1")] if sys.platform.startswith("linux") else [])

extension = Extension(
    "turbo_queue._core",
    sources=["src/turbo_queue/_core.pyx"] + ([os.path.join(amalgamation, "sqlite3.c")] if amalgamation else []),
    # The include files of its units and the C helpers: a change to any rebuilds it.
    depends=sorted(glob.glob("src/turbo_queue/*.pxi") + glob.glob("src/turbo_queue/*.h")
                   + ["src/turbo_queue/_capi.pxd"]),
    include_dirs=["src/turbo_queue"] + ([amalgamation] if amalgamation else [])
    + ([os.path.join(prefix, "include")] if prefix and not amalgamation else []),
    library_dirs=[os.path.join(prefix, "lib")] if prefix and not amalgamation else [],
    libraries=[] if amalgamation else ["sqlite3"],
    extra_compile_args=["-O0", "-g"] if debug else ["-O2"],
    define_macros=([("CYTHON_TRACE_NOGIL", "1")] if debug else [])
    + (AMALGAMATION_OPTIONS if amalgamation else []),
)

# The Kafka connectors' record packer: plain C, no SQLite.
kafka_codec = Extension(
    "turbo_queue._kafka_codec",
    sources=["src/turbo_queue/_kafka_codec.pyx"],
    extra_compile_args=["-O0", "-g"] if debug else ["-O2"],
)

setup(
    ext_modules=cythonize(
        [extension, kafka_codec],
        compiler_directives={"linetrace": debug},
        annotate=debug,
    ),
)
