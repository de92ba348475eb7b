"""Which SQLite the installed package carries: with TURBO_QUEUE_EXPECT_SQLITE=<version> (set by the
wheel builds), the pinned amalgamation compiled into the extension with its tuned options."""

import os
import subprocess
import sys

import pytest

import turbo_queue
from turbo_queue import _core

EXPECTED = os.environ.get("TURBO_QUEUE_EXPECT_SQLITE")
TUNED = {"THREADSAFE=2", "DEFAULT_MEMSTATUS=0", "DQS=0", "OMIT_DEPRECATED", "OMIT_LOAD_EXTENSION",
         "OMIT_SHARED_CACHE"}


def test_the_options_of_the_sqlite_in_use_are_told():
    assert _core.SQLITE_OPTIONS and all(isinstance(o, str) for o in _core.SQLITE_OPTIONS)
    assert any(o.startswith("THREADSAFE=") for o in _core.SQLITE_OPTIONS)


@pytest.mark.skipif(not EXPECTED, reason="not a wheel build (TURBO_QUEUE_EXPECT_SQLITE unset): "
                                         "a checkout links the system's SQLite")
def test_the_wheel_carries_the_pinned_sqlite_compiled_in_and_tuned():
    assert turbo_queue.SQLITE_VERSION == EXPECTED
    assert TUNED <= set(_core.SQLITE_OPTIONS), sorted(TUNED - set(_core.SQLITE_OPTIONS))
    assert _core.MEMDB_AVAILABLE and _core.batch_build() == "memory"
    # No shared SQLite is loaded with the package: it is inside the extension, its symbols hidden.
    code = ("import turbo_queue; maps = open('/proc/self/maps').read(); "
            "print('libsqlite3' in maps)")
    if sys.platform.startswith("linux"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.split() == ["False"]
