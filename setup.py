"""Builds the Cython extension; everything else is in pyproject.toml.

Environment switches:
  TURBO_QUEUE_DEBUG=1        -O0 -g, Cython line tracing and annotated HTML (for profiling).
  TURBO_QUEUE_SQLITE_PREFIX  a folder with include/sqlite3.h and lib/libsqlite3.* to build against
                             instead of the system's SQLite.
"""

import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("TURBO_QUEUE_DEBUG") == "1"
prefix = os.environ.get("TURBO_QUEUE_SQLITE_PREFIX")

extension = Extension(
    "turbo_queue._core",
    sources=["src/turbo_queue/_core.pyx"],
    # The include files of its units and the C helpers: a change to any rebuilds it.
    depends=sorted(glob.glob("src/turbo_queue/*.pxi") + glob.glob("src/turbo_queue/*.h")
                   + ["src/turbo_queue/_capi.pxd"]),
    include_dirs=["src/turbo_queue"] + ([os.path.join(prefix, "include")] if prefix else []),
    library_dirs=[os.path.join(prefix, "lib")] if prefix else [],
    libraries=["sqlite3"],
    extra_compile_args=["-O0", "-g"] if debug else ["-O2"],
    define_macros=[("CYTHON_TRACE_NOGIL", "1")] if debug else [],
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
