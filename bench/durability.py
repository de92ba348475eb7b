"""What durability="os" (fsync of each batch before publishing, and of the folder after) costs.

    python bench/durability.py --events 200000 --per-file 1000 10000
"""

import argparse
import shutil
import tempfile
import time

import turbo_queue

EVENT = {"id": 123456, "host": "web-17.example.net", "path": "/api/v1/items/42?expand=true",
         "status": 200, "bytes": 5123, "ts": 1764312000.123, "agent": "Mozilla/5.0 (X11; Linux)"}


def produce(n, per_file, durability, folder):
    root = tempfile.mkdtemp(dir=folder)
    try:
        t = time.perf_counter()
        with turbo_queue.enqueue(root_path=root, queue_name="d", max_events_per_file=per_file,
                                 max_ready_files=10**9, durability=durability) as e:
            e.add_many(EVENT for _ in range(n))
        return n / (time.perf_counter() - t)
    finally:
        shutil.rmtree(root)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--per-file", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--dir", default=None, help="folder for the queue (default: the temp folder)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for per_file in args.per_file:
        rates = {d: max(produce(args.events, per_file, d, args.dir) for _ in range(args.repeat))
                 for d in ("process", "os")}
        print(f"{per_file:>6} events/batch: durability='process' {rates['process']:>10,.0f} events/s, "
              f"'os' {rates['os']:>10,.0f} events/s ({rates['os'] / rates['process']:.0%})")


if __name__ == "__main__":
    main()
