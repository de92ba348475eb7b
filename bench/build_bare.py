"""Builds bench/_bare.pyx, the bare C reference loops, in place: `python bench/build_bare.py`.

load() builds it when missing or older than its sources, and imports it.
"""

import glob
import importlib
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORE = os.path.join(HERE, "..", "src", "turbo_queue")


def _stale():
    built = glob.glob(os.path.join(HERE, "_bare.*.so"))
    if not built:
        return True
    sources = [os.path.join(HERE, "_bare.pyx"), *glob.glob(os.path.join(CORE, "*.pxi")),
               *glob.glob(os.path.join(CORE, "*.h")), os.path.join(CORE, "_capi.pxd")]
    return max(map(os.path.getmtime, sources)) > min(map(os.path.getmtime, built))


def load():
    """The bare loops' module (bench/_bare.pyx), built first if needed."""
    if _stale():
        built = subprocess.run([sys.executable, os.path.abspath(__file__), "build_ext", "--inplace"],
                               cwd=HERE, capture_output=True, text=True)
        if built.returncode != 0:
            raise SystemExit(f"building bench/_bare.pyx failed:\n{built.stdout}{built.stderr}")
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    return importlib.import_module("_bare")


if __name__ == "__main__":
    from Cython.Build import cythonize
    from setuptools import Extension, setup

    src = os.path.join(HERE, "..", "src")
    setup(ext_modules=cythonize(
        [Extension("_bare", ["_bare.pyx"], include_dirs=[CORE], libraries=["sqlite3"],
                   extra_compile_args=["-O2"])],
        include_path=[src, CORE], quiet=True))
