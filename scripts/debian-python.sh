#!/usr/bin/env bash
# Build and test turbo-queue on a CPython newer than this host's: Debian's, in a Debian root of the
# suite that offers it (unstable has the newest), with the pinned SQLite compiled in. Needs root
# (debootstrap, chroot).
#   scripts/debian-python.sh [VERSION [SUITE [PYTEST ARGS...]]]   (default: 3.15 sid, the whole suite)
# DEBIAN_ROOT: where the root is made, kept between runs (default /var/cache/turbo-queue/<suite>).
set -euo pipefail
cd "$(dirname "$0")/.."
pyver=${1:-3.15}
suite=${2:-sid}
shift 2 || shift $# || true
root=${DEBIAN_ROOT:-/var/cache/turbo-queue/$suite}
work=$(mktemp -d)
# shellcheck source=roots.sh
. scripts/roots.sh
cleanup() { unmount_root "$root"; rm -rf "$work"; }
trap cleanup EXIT

command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
if [ ! -x "$root/usr/bin/python$pyver" ]; then
    rm -rf "$root"
    debootstrap --variant=minbase \
        --include="python$pyver,python$pyver-venv,python$pyver-dev,gcc,libc6-dev,ca-certificates" \
        "$suite" "$root" http://deb.debian.org/debian >/dev/null
fi

use_amalgamation "$work/sqlite"
amalgamation=$TURBO_QUEUE_SQLITE_AMALGAMATION
unset TURBO_QUEUE_SQLITE_AMALGAMATION  # (the root's own path to it is set below)

mount_root "$root"
rm -rf "$root/tq"
mkdir -p "$root/tq/src" "$root/tq/sqlite"
git ls-files -z | xargs -0 cp --parents -t "$root/tq/src"
cp "$amalgamation/sqlite3.c" "$amalgamation/sqlite3.h" "$root/tq/sqlite/"
run() { chroot "$root" /usr/bin/env -i PATH=/tq/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TURBO_QUEUE_SQLITE_AMALGAMATION=/tq/sqlite TURBO_QUEUE_EXPECT_SQLITE="$SQLITE_VERSION" "$@"; }

echo "== Debian $suite's Python: $(run "/usr/bin/python$pyver" -c 'import sys; print(sys.version)')"
run "/usr/bin/python$pyver" -m venv /tq/venv
run sh -c 'cd /tq/src && pip wheel -q --no-deps -w /tq/dist . && set -- /tq/dist/*.whl \
    && pip install -q "$1[http,metrics,msgpack]" pytest hypothesis rich'
run python -c "import sys, turbo_queue as t, turbo_queue._core as c; \
print('turbo_queue on Python', sys.version.split()[0], 'carries SQLite', t.SQLITE_VERSION, 'batches built in', c.batch_build())"

echo "== tests on Python $pyver"
[ $# -gt 0 ] || set -- tests
started=$(date +%s)
set +e
run sh -c 'cd /tq/src && rm -rf src && exec python -m pytest -q -p no:cacheprovider "$@"' pytest "$@"
status=$?
set -e
echo "== tests on Debian $suite's Python $pyver: exit $status after $(( $(date +%s) - started )) s"
exit "$status"
