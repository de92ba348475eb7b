#!/usr/bin/env bash
# Put the pinned SQLite amalgamation (sqlite3.c, sqlite3.h; scripts/sqlite.env) into OUTDIR, for
# builds that compile it into the extension (TURBO_QUEUE_SQLITE_AMALGAMATION=OUTDIR).
#   scripts/sqlite-amalgamation.sh download OUTDIR   sqlite.org's zip, its SHA3-256 checked (CI)
#   scripts/sqlite-amalgamation.sh debian OUTDIR     built with tclsh from Debian's source package
#                                                    of the same version, unpatched (here: no
#                                                    sqlite.org); needs root for apt
# Either way the result is checked: the version in sqlite3.h and the check-in in SQLITE_SOURCE_ID.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=sqlite.env
. "$here/sqlite.env"
how=${1:?download or debian}
out=${2:?OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

case "$how" in
download)
    # (TURBO_QUEUE_SQLITE_URL: a mirror of the same file; the checksum decides)
    url=${TURBO_QUEUE_SQLITE_URL:-https://www.sqlite.org/$SQLITE_RELEASE_YEAR/$SQLITE_AMALGAMATION.zip}
    curl --fail --silent --show-error --location --retry 3 -o "$work/a.zip" "$url"
    if command -v python3 >/dev/null; then
        got=$(python3 -c 'import hashlib, sys; print(hashlib.sha3_256(open(sys.argv[1], "rb").read()).hexdigest())' "$work/a.zip")
    else
        got=$(openssl dgst -sha3-256 -r "$work/a.zip" | cut -d' ' -f1)
    fi
    [ "$got" = "$SQLITE_AMALGAMATION_SHA3_256" ] || {
        echo "SQLite amalgamation $url: SHA3-256 $got, pinned $SQLITE_AMALGAMATION_SHA3_256: refusing it" >&2
        exit 1
    }
    if command -v python3 >/dev/null; then
        (cd "$work" && python3 -m zipfile -e a.zip .)
    else
        (cd "$work" && unzip -q a.zip)
    fi
    cp "$work/$SQLITE_AMALGAMATION/sqlite3.c" "$work/$SQLITE_AMALGAMATION/sqlite3.h" "$out/"
    ;;
debian)
    if ! apt-cache showsrc sqlite3 2>/dev/null | grep -q "^Version: $SQLITE_VERSION-"; then
        # Debian's suites with sources, for `apt-get source` (the newest SQLite is in sid).
        cat > /etc/apt/sources.list.d/turbo-queue-src.sources <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm trixie sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        apt-get update -qq
    fi
    command -v tclsh >/dev/null && command -v dpkg-source >/dev/null \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tcl dpkg-dev >/dev/null
    version=$(apt-cache showsrc sqlite3 | sed -n "s/^Version: \($SQLITE_VERSION-.*\)/\1/p" | head -1)
    [ -n "$version" ] || { echo "Debian has no source package of SQLite $SQLITE_VERSION" >&2; exit 1; }
    (cd "$work" && apt-get source -qq --download-only "sqlite3=$version" 2>/dev/null \
        && dpkg-source -q -x --skip-patches sqlite3_*.dsc tree >/dev/null 2>&1)
    [ "$(cat "$work/tree/manifest.uuid")" = "$SQLITE_CHECKIN" ] \
        || { echo "Debian's sqlite3 $version is not check-in $SQLITE_CHECKIN" >&2; exit 1; }
    mkdir "$work/build"
    (cd "$work/build" && ../tree/configure >/dev/null && make -s sqlite3.c >/dev/null)
    cp "$work/build/sqlite3.c" "$work/build/sqlite3.h" "$out/"
    ;;
*)
    echo "usage: $0 download|debian OUTDIR" >&2
    exit 2
    ;;
esac

grep -q "^#define SQLITE_VERSION  *\"$SQLITE_VERSION\"" "$out/sqlite3.h" \
    || { echo "$out/sqlite3.h is not SQLite $SQLITE_VERSION" >&2; exit 1; }
grep -q "^#define SQLITE_SOURCE_ID .* $SQLITE_CHECKIN\"" "$out/sqlite3.h" \
    || { echo "$out/sqlite3.h is not check-in $SQLITE_CHECKIN" >&2; exit 1; }
echo "SQLite $SQLITE_VERSION amalgamation in $out ($how)"
