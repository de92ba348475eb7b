#!/usr/bin/env bash
# The scaling runs for a 16-core `device` machine (see ../shared/reference/device.md): build the
# extension there against its runtime libsqlite3 with a carried sqlite3.h, install the carried
# wheels, run bench/scaling.py for K = 1 .. 16 and 120, and leave JSON + PNG in $OUT.
#
# Prepare here once (ignored by git), then run with carry: [".side", ".whl", ".sqlite-dev"]:
#   mkdir -p .sqlite-dev && (cd .sqlite-dev && apt-get download libsqlite3-dev && dpkg -x libsqlite3-dev_*.deb .)
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl orjson
#   (faster-fifo has no wheels: it is built there if gcc finds Python.h, else left out)
set -euo pipefail
out=${OUT:-docs}
mkdir -p /tmp/sqlite-lib
ln -sf /usr/lib/x86_64-linux-gnu/libsqlite3.so.0 /tmp/sqlite-lib/libsqlite3.so
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site
CFLAGS="-I$PWD/.sqlite-dev/usr/include" LDFLAGS="-L/tmp/sqlite-lib" \
    python3 -m pip install -q --no-build-isolation --no-deps --target /tmp/site .
python3 -c "import turbo_queue; print('turbo_queue', turbo_queue.__file__, turbo_queue.SQLITE_VERSION)"
python3 bench/scaling.py --work-us 50 --consumers 1 2 4 8 12 14 16 32 120 --seconds 2 \
    --legacy-path .side/tq0.5.2 --out "$out/scaling-16core"
python3 bench/e2e.py --events 2000000 --repeat 3 --legacy-path .side/tq0.5.2 --json "$out/e2e-16core.json"
# Many processes (issue 16): CPU per event and events/s of P producers -> K consumers, beside
# multiprocessing.Queue (faster-fifo too where it could be built).
python3 bench/many.py --consumers 1 8 32 120 --producers 1 --repeat 3 --out "$out/many-16core"
python3 bench/many.py --consumers 8 --producers 1 4 8 16 --systems tq mpq --repeat 3 --out "$out/many-producers-16core"
