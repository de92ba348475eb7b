#!/usr/bin/env bash
# The many-core runs for a 16-core `device` machine (see ../shared/reference/device.md): builds the
# extension there against its runtime libsqlite3 with a carried sqlite3.h, unpacks the carried
# wheels, then runs the benchmarks most important first, each time-boxed, leaving JSON, PNG and logs
# as each one ends, so a lease cut short still returns what finished.
#
# Prepare here once (all ignored by git), then run with carry [".sqlite-dev", ".whl", ".side/tq0.5.2"]:
#   mkdir -p .sqlite-dev && (cd .sqlite-dev && apt-get download libsqlite3-dev && dpkg -x libsqlite3-dev_*.deb .)
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl orjson
#   pip download --no-deps --only-binary=:all: -d .whl "setuptools>=77"    # the build's, if older there
#   pip download --no-deps --no-binary=:all: -d .whl faster-fifo           # built there when g++ can
# Needs no pip and no network there: wheels are unzipped, extensions built in place.
# QUICK=1 shrinks every run to a smoke test (to try this script anywhere before spending a lease).
# bench/e2e.py is not run here: its 2,000,000-event rounds per system take longer than a lease gives.
set -uo pipefail
# With $OUT (the device tool's), results go to one $OUT/results.tgz, rewritten after each step: it
# returns only a few files per run.
if [ -n "${OUT:-}" ]; then out=/tmp/tq-results; rm -rf "$out"; else out=docs; fi
mkdir -p "$out" && out=$(cd "$out" && pwd)
pack() {
    [ -n "${OUT:-}" ] && tar czf "$OUT/results.tgz.part" -C "$out" . && mv "$OUT/results.tgz.part" "$OUT/results.tgz"
    return 0
}
py=${PYTHON:-python3}
repo=$PWD
site=/tmp/tq-site
rm -rf "$site" /tmp/tq-sqlite && mkdir -p "$site" /tmp/tq-sqlite/include /tmp/tq-sqlite/lib
cp .sqlite-dev/usr/include/sqlite3.h /tmp/tq-sqlite/include/
for lib in /usr/lib/x86_64-linux-gnu/libsqlite3.so.0 /usr/lib/x86_64-linux-gnu/libsqlite3.so; do
    [ -e "$lib" ] && ln -sf "$lib" /tmp/tq-sqlite/lib/libsqlite3.so && break
done
for w in .whl/*.whl; do "$py" -m zipfile -e "$w" "$site"; done
export PYTHONPATH="$repo/src:$site"
{ date -u; nproc; "$py" -VV; grep -m1 'model name' /proc/cpuinfo; free -g | head -2; } > "$out/host.txt" 2>&1

t0=$SECONDS
TURBO_QUEUE_SQLITE_PREFIX=/tmp/tq-sqlite "$py" setup.py -q build_ext --inplace > "$out/build.log" 2>&1 \
    || { echo "build failed:"; tail -30 "$out/build.log"; pack; exit 1; }
"$py" -c "import turbo_queue; print('turbo_queue', turbo_queue.__file__, 'SQLite', turbo_queue.SQLITE_VERSION)" \
    | tee -a "$out/host.txt"
echo "built in $((SECONDS - t0)) s"
# faster-fifo from its sdist, beside the first benchmark's start; left out if it does not build.
ffq_dir=$(mktemp -d)
( for s in .whl/faster_fifo-*.tar.gz; do [ -e "$s" ] || exit 0
    tar -xzf "$s" -C "$ffq_dir" && cd "$ffq_dir"/faster_fifo-* \
    && timeout 150 "$py" setup.py -q build_ext --inplace > "$out/ffq-build.log" 2>&1 \
    && echo "$PWD" > "$ffq_dir/ok"; done ) &
ffq_build=$!

if [ "${QUICK:-0}" = 1 ]; then ev=20000; pev=5000; rep=1; secs=0.2; big=8; else ev=1000000; pev=200000; rep=3; secs=1; big=120; fi
step() {  # step NAME SECONDS COMMAND...: one benchmark, its log in $out/NAME.log, cut off after SECONDS
    local name=$1 limit=$2; shift 2
    local t=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: status $rc in $((SECONDS - t)) s"
    sed -n '/^medians:/,$p' "$out/$name.log" | head -60
    pack
}
# Issue 16's acceptance 1 on this host: K=1 against K=120, paired rounds, with the sleepers' floor.
step many-k120-16core 200 "$py" bench/many.py --systems tq floor --kinds raw dict --per-file 1000 10000 \
    --consumers 1 "$big" --events "$ev" --repeat "$rep" --out "$out/many-k120-16core"
wait "$ffq_build"
[ -e "$ffq_dir/ok" ] && export PYTHONPATH="$PYTHONPATH:$(cat "$ffq_dir/ok")"
"$py" -c "import faster_fifo" 2>/dev/null && echo "faster-fifo built" || echo "faster-fifo left out"
step many-16core 170 "$py" bench/many.py --systems tq mpq ffq --per-file 1000 --consumers 1 8 32 "$big" \
    --events "$((ev / 2))" --peer-events "$((pev / 2))" --repeat "$rep" --out "$out/many-16core"
step many-producers-16core 90 "$py" bench/many.py --systems tq mpq --kinds dict --per-file 1000 \
    --consumers 8 --producers 1 4 8 16 --events "$((ev / 2))" --peer-events "$((pev / 2))" --repeat "$rep" \
    --out "$out/many-producers-16core"
step scaling-16core 100 "$py" bench/scaling.py --work-us 50 --consumers 1 2 4 8 14 16 --seconds "$secs" \
    --legacy-path .side/tq0.5.2 --out "$out/scaling-16core"
echo "all steps done in $SECONDS s"
