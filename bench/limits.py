"""Producer alone and consumer alone, as a ratio to what SQLite itself allows: a bare C loop
(bench/_bare.pyx, built by bench/build_bare.py) writing and reading the same batch files.

    python bench/limits.py --events 1000000 --dir /dev/shm
"""

import argparse
import os
import shutil
import tempfile
import time

import turbo_queue

import build_bare

EVENT = {"id": 123456, "host": "web-17.example.net", "path": "/api/v1/items/42?expand=true",
         "status": 200, "bytes": 5123, "ts": 1764312000.123, "agent": "Mozilla/5.0 (X11; Linux)"}


def produce(root, n, per_file, how, payload):
    ser = "json" if how.endswith("dict") else "raw"
    e = turbo_queue.enqueue(root_path=root, queue_name="q", max_events_per_file=per_file,
                            max_ready_files=10**9, serializer=ser)
    t = time.perf_counter()
    if how.startswith("add_many"):
        chunk = [payload] * 1000
        for _ in range(n // 1000):
            e.add_many(chunk)
    else:
        add = e.add
        for _ in range(n):
            add(payload)
    e.close()
    return time.perf_counter() - t


def consume(root, n, how):
    ser = "json" if how.endswith("dict") else "raw"
    d = turbo_queue.dequeue(root_path=root, queue_name="q", wait_timeout=0, serializer=ser)
    t = time.perf_counter()
    got = 0
    if how.startswith("get_batch"):
        while got < n:
            got += len(d.get_batch())
    else:
        g = d.get()
        while got < n:
            next(g)
            got += 1
    d.close()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--per-file", type=int, default=10_000)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n, per = args.events, args.per_file
    raw = b"x" * 100
    bare = build_bare.load()

    def fresh():
        return tempfile.mkdtemp(prefix="tq-limits-", dir=args.dir)

    def best(fn):
        return min(fn() for _ in range(args.repeat))

    def bare_p():
        root = fresh()
        try:
            return bare.produce(os.path.join(root, "q"), raw, n, per)
        finally:
            shutil.rmtree(root)

    def bare_c():
        root = fresh()
        try:
            bare.produce(os.path.join(root, "q"), raw, n, per)
            return bare.consume(os.path.join(root, "q"))[1]
        finally:
            shutil.rmtree(root)

    bp, bc = best(bare_p), best(bare_c)
    print(f"bare C loop, raw 100 B: produce {n / bp:>12,.0f} events/s, consume {n / bc:>12,.0f} events/s")
    for how, payload in (("add_many raw", raw), ("add raw", raw), ("add_many dict", EVENT), ("add dict", EVENT)):
        def run_p():
            root = fresh()
            try:
                return produce(root, n, per, how, payload)
            finally:
                shutil.rmtree(root)
        t = best(run_p)
        print(f"producer {how:14s} {n / t:>12,.0f} events/s = {bp / t:4.0%} of the bare loop")
    for how, payload in (("get_batch raw", raw), ("next(get()) raw", raw), ("get_batch dict", EVENT), ("next(get()) dict", EVENT)):
        def run_c():
            root = fresh()
            try:
                produce(root, n, per, "add_many " + how.split()[-1], payload)
                return consume(root, n, how)
            finally:
                shutil.rmtree(root)
        t = best(run_c)
        print(f"consumer {how:16s} {n / t:>12,.0f} events/s = {bc / t:4.0%} of the bare loop")


if __name__ == "__main__":
    main()
