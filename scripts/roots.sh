# Shell helpers of the build scripts (sourced): the pinned SQLite amalgamation, and a Debian root
# to run tests in (mounted with what a test needs, unmounted on the way out).

# shellcheck source=sqlite.env
. "$(dirname "${BASH_SOURCE[0]}")/sqlite.env"

# TURBO_QUEUE_SQLITE_AMALGAMATION as given, or built into $1 from Debian's source package.
use_amalgamation() {
    echo "== SQLite $SQLITE_VERSION amalgamation"
    if [ -z "${TURBO_QUEUE_SQLITE_AMALGAMATION:-}" ]; then
        "$(dirname "${BASH_SOURCE[0]}")/sqlite-amalgamation.sh" debian "$1"
        TURBO_QUEUE_SQLITE_AMALGAMATION=$1
    fi
    export TURBO_QUEUE_SQLITE_AMALGAMATION
}

# Mount /proc, /dev and fresh tmpfs /dev/shm and /tmp into the root $1, with the host's name server
# and certificates (those the registries are reached through); unmount_root undoes it.
mount_root() {
    cp /etc/resolv.conf "$1/etc/resolv.conf"
    cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"
    mount -t proc proc "$1/proc"
    mount --bind /dev "$1/dev"
    mount --bind /dev/pts "$1/dev/pts"
    mount -t tmpfs -o size=2g tmpfs "$1/dev/shm"
    mount -t tmpfs -o size=4g tmpfs "$1/tmp"
}

unmount_root() {
    local m
    for m in tmp dev/shm dev/pts dev proc; do
        if mountpoint -q "$1/$m"; then umount -l "$1/$m"; fi
    done
}
