"""Instructions per event of add() and next(get()) under callgrind: a run of N events minus a run of 0.

    python bench/instructions.py [--events 100000] [--per-batch 1000 10000] [--json OUT]

Exact and independent of the machine's load: the guard for "the hot path did not get slower".
The consumer reads a folder filled beforehand (outside valgrind); the producer writes to a fresh one.
Needs valgrind. Both runs start the same interpreter and import the package, so their difference is
the work per event (batch creation, publication, claiming and deletion included).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

EVENT = {"id": 123456, "host": "web-17.example.net", "path": "/api/v1/items/42?expand=true",
         "status": 200, "bytes": 5123, "ts": 1764312000.123, "agent": "Mozilla/5.0 (X11; Linux)"}


def produce(root, n, per_batch):
    import turbo_queue

    e = turbo_queue.enqueue(root_path=root, queue_name="q", max_events_per_file=per_batch,
                            max_ready_files=10**9, max_batch_age=3600)
    e.start()
    add = e.add
    for _ in range(n):
        add(EVENT)
    e.close()


def consume(root, n):
    import turbo_queue

    d = turbo_queue.dequeue(root_path=root, queue_name="q", wait_timeout=0)
    g = d.get()
    got = 0
    while next(g) is not None:
        got += 1
    d.close()
    if got != n:
        raise SystemExit(f"consumed {got} events, expected {n}")


def callgrind(args):
    """Instructions executed by `python bench/instructions.py --run ARGS` under callgrind."""
    out = tempfile.mktemp(prefix="callgrind.", dir="/tmp")
    proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                           sys.executable, os.path.abspath(__file__), "--run", *map(str, args)],
                          capture_output=True, text=True)
    try:
        if proc.returncode != 0:
            raise SystemExit(f"valgrind failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        m = re.search(r"Collected\s*:\s*(\d+)", proc.stderr)
        if not m:
            raise SystemExit(f"no instruction count in valgrind's output:\n{proc.stderr[-2000:]}")
        return int(m.group(1))
    finally:
        if os.path.exists(out):
            os.unlink(out)


def measure(n, per_batch):
    root = tempfile.mkdtemp(prefix="tq-instr-")
    try:
        p0 = callgrind(["produce", root + "/p0", 0, per_batch])
        pn = callgrind(["produce", root + "/pn", n, per_batch])
        produce(root + "/c", n, per_batch)  # the consumer's folder, filled outside valgrind
        os.makedirs(root + "/c0/q")
        c0 = callgrind(["consume", root + "/c0", 0])
        cn = callgrind(["consume", root + "/c", n])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"per_batch": per_batch, "events": n, "add": round((pn - p0) / n),
            "next_get": round((cn - c0) / n)}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--run":
        what, root, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
        if what == "produce":
            produce(root, n, int(sys.argv[5]))
        else:
            consume(root, n)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--per-batch", type=int, nargs="+", default=[1000, 10_000])
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    import turbo_queue

    results = []
    for per_batch in args.per_batch:
        r = measure(args.events, per_batch)
        results.append(r)
        print(f"{per_batch:>6} events per batch: add() {r['add']:,} instructions per event, "
              f"next(get()) {r['next_get']:,}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sqlite": turbo_queue.SQLITE_VERSION, "python": sys.version.split()[0],
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
