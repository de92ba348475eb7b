"""A multi-process pipeline: one reader process feeds N worker processes doing CPU work, which feed
one writer process, through two queues on disk.

    python examples/pipeline.py --events 100000 --workers 4
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import tempfile
from typing import Any

import turbo_queue


def reader(root: str, events: int) -> None:
    """Stands in for a Kafka consumer: produces raw events."""
    with turbo_queue.enqueue(root_path=root, queue_name="incoming", max_events_per_file=5000,
                             max_batch_age=0.1) as out:
        for i in range(events):
            out.add({"id": i, "payload": f"event-{i}"})


def worker(root: str, stop: Any) -> None:
    """CPU-heavy work per event; results go to a second queue."""
    inbox = turbo_queue.dequeue(root_path=root, queue_name="incoming", wait_timeout=0.2)
    with turbo_queue.enqueue(root_path=root, queue_name="results", max_events_per_file=5000,
                             max_batch_age=0.1) as out:
        while True:
            batch = inbox.get_batch()
            if not batch:
                if stop.is_set():
                    break
                continue
            out.add_many({"id": ev["id"], "digest": hashlib.sha256(ev["payload"].encode()).hexdigest()}
                         for ev in batch)
    inbox.close()


def writer(root: str, events: int, result: Any) -> None:
    """Stands in for a Kafka producer or an API client."""
    seen: set[int] = set()
    with turbo_queue.dequeue(root_path=root, queue_name="results", wait_timeout=0.2) as inbox:
        while len(seen) < events:
            seen.update(ev["id"] for ev in inbox.get_batch())
    result.value = len(seen)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=max(2, (os.cpu_count() or 2)))
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="turbo-queue-pipeline-")
    for name in ("incoming", "results"):  # recover what a previous run left behind
        turbo_queue.startup(root_path=root, queue_name=name).on_start_cleanup()
    stop = mp.Event()
    result = mp.Value("q", 0)
    workers = [mp.Process(target=worker, args=(root, stop)) for _ in range(args.workers)]
    procs = [mp.Process(target=reader, args=(root, args.events)),
             mp.Process(target=writer, args=(root, args.events, result)), *workers]
    for p in procs:
        p.start()
    procs[0].join()
    procs[1].join()
    stop.set()
    for p in workers:
        p.join()
    print(f"{result.value} of {args.events} events went reader -> {args.workers} workers -> writer")


if __name__ == "__main__":
    main()
