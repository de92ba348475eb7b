"""Programs of the asyncio tests (test_aio.py), run as real processes: a bursty producer, an async
consumer that drains a queue while a ticker measures how long the loop went without a turn, and
async consumers that record the batches they take or hold one until they are killed.

`python tests/aio_programs.py drain --events 1000000` runs the drain on its own and prints its
figures (the figures in docs/design.md come from it)."""

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time

import turbo_queue
from turbo_queue.aio import AsyncDequeue

ctx = mp.get_context("fork")


def bursty_producer(root, events, burst, pause, per_file):
    """Publish events 0..events-1 ({"i": n}) to queue q in bursts of `burst`, `pause` s apart."""
    with turbo_queue.Enqueue(root_path=str(root), queue_name="q", max_events_per_file=per_file,
                             max_batch_age=0.05) as q:
        for start in range(0, events, burst):
            q.add_many({"i": i} for i in range(start, min(start + burst, events)))
            q.flush()
            time.sleep(pause)


async def _ticker(stalls, stop):
    """Measure, until `stop` is set, the longest time between two turns of the loop: in wall time
    and in the CPU time of the loop's thread (what the loop ran without yielding, whoever else
    shares the machine)."""
    wall, cpu = time.monotonic(), time.thread_time()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now_wall, now_cpu = time.monotonic(), time.thread_time()
        stalls["wall_s"] = max(stalls["wall_s"], now_wall - wall - 0.001)
        stalls["cpu_s"] = max(stalls["cpu_s"], now_cpu - cpu)
        stalls["ticks"] += 1
        wall, cpu = now_wall, now_cpu


async def drain(root, events, style, loop_name="asyncio"):
    """Take `events` events from queue q with an AsyncDequeue (`style`: "iter" for async for,
    "batch" for get_batch()), ticker running; returns what was seen and the loop's longest stalls."""
    stalls = {"wall_s": 0.0, "cpu_s": 0.0, "ticks": 0}
    stop = asyncio.Event()
    ticker = asyncio.create_task(_ticker(stalls, stop))
    seen = bytearray(events)
    duplicates = 0
    started = time.monotonic()
    async with AsyncDequeue(root_path=str(root), queue_name="q", wait_timeout=30) as c:
        got = 0
        if style == "iter":
            async for ev in c:
                duplicates += seen[ev["i"]]
                seen[ev["i"]] = 1
                got += 1
                if got == events:
                    break
        else:
            while got < events:
                batch = await c.get_batch()
                if not batch:
                    break
                for ev in batch:
                    duplicates += seen[ev["i"]]
                    seen[ev["i"]] = 1
                got += len(batch)
        await c.get_batch(timeout=0)  # (asks past the last batch: it is deleted)
    elapsed = time.monotonic() - started
    stop.set()
    await ticker
    return {"events": events, "style": style, "loop": loop_name, "received": got,
            "missing": events - sum(seen), "duplicates": duplicates, "seconds": elapsed,
            "longest_stall_wall_ms": stalls["wall_s"] * 1000,
            "longest_stall_cpu_ms": stalls["cpu_s"] * 1000, "ticks": stalls["ticks"]}


def run_drain(root, events, style, loop_name="asyncio", burst=50_000, pause=0.05, per_file=20_000):
    """The drain against a bursty producer process; the drain's figures."""
    producer = ctx.Process(target=bursty_producer, args=(root, events, burst, pause, per_file))
    producer.start()
    try:
        return _run(drain(root, events, style, loop_name), loop_name)
    finally:
        producer.join(60)


def _run(coro, loop_name):
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def batch_taker(root, out, loop_name="asyncio", consumers=1):
    """`consumers` async consumers in one loop each take batches (get_batch) of queue q until it is
    empty for 1 s; writes one JSON line per batch taken to `out`: [consumer, [event ids]]."""

    async def one(who, log):
        async with AsyncDequeue(root_path=str(root), queue_name="q", wait_timeout=1.0) as c:
            while True:
                batch = await c.get_batch()
                if not batch:
                    return
                log.write(json.dumps([f"{os.getpid()}-{who}", [ev["i"] for ev in batch]]) + "\n")
                await asyncio.sleep(0)  # (another consumer's turn, mid-work)

    async def main():
        with open(out, "a", buffering=1) as log:
            await asyncio.gather(*(one(who, log) for who in range(consumers)))

    _run(main(), loop_name)


def holder(root, take, ready_file):
    """Take `take` events with an async consumer, say so in `ready_file`, then wait to be killed."""

    async def main():
        c = AsyncDequeue(root_path=str(root), queue_name="q", wait_timeout=10)
        got = [await c.get() for _ in range(take)]
        with open(ready_file + ".part", "w") as f:
            json.dump({"got": got, "batch": c.batch_path}, f)
        os.rename(ready_file + ".part", ready_file)  # (whole when it appears)
        await asyncio.sleep(3600)

    asyncio.run(main())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    d = sub.add_parser("drain", help="drain a bursty producer's events, print the loop's longest stall")
    d.add_argument("--events", type=int, default=1_000_000)
    d.add_argument("--style", choices=("iter", "batch"), default="iter")
    d.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    d.add_argument("--root", required=True)
    args = ap.parse_args(argv)
    print(json.dumps(run_drain(args.root, args.events, args.style, args.loop)))


if __name__ == "__main__":
    sys.exit(main())
