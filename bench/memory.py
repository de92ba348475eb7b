"""Consumer memory while draining a long queue: RSS sampled every million events.

    python bench/memory.py --events 10000000 --dir /dev/shm
"""

import argparse
import multiprocessing as mp
import os
import shutil
import tempfile

import turbo_queue

EVENT = {"id": 123456, "host": "web-17.example.net", "path": "/api/v1/items/42?expand=true",
         "status": 200, "bytes": 5123, "ts": 1764312000.123, "agent": "Mozilla/5.0 (X11; Linux)"}


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def produce(root, n):
    with turbo_queue.enqueue(root_path=root, queue_name="m", max_events_per_file=10_000,
                             max_ready_files=10**9) as e:
        chunk = [EVENT] * 1000
        for _ in range(n // 1000):
            e.add_many(chunk)


def consume(root, n, out):
    d = turbo_queue.dequeue(root_path=root, queue_name="m", wait_timeout=0)
    g = d.get()
    samples = []
    for i in range(n):
        next(g)
        if i == 100_000 or (i + 1) % 1_000_000 == 0:
            samples.append((i + 1, rss_mb()))
    d.close()
    out.put(samples)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="tq-mem-", dir=args.dir)
    try:
        ctx = mp.get_context("spawn")  # a clean process: its RSS is the consumer's alone
        p = ctx.Process(target=produce, args=(root, args.events))
        p.start()
        p.join()
        out = ctx.Queue()
        c = ctx.Process(target=consume, args=(root, args.events, out))
        c.start()
        samples = out.get()
        c.join()
    finally:
        shutil.rmtree(root)
    for n, mb in samples:
        print(f"{n:>11,d} events: RSS {mb:7.1f} MB")
    print(f"growth from 100k to {samples[-1][0]:,d} events: {samples[-1][1] - samples[0][1]:+.1f} MB")


if __name__ == "__main__":
    main()
