"""Drain a queue into an HTTP API from one asyncio process, with many requests in flight.

Each worker task holds one batch (an AsyncDequeue of its own) and posts every event of it as a JSON
body, all workers together keeping at most --in-flight requests open. A batch is acknowledged (the
next get_batch() deletes it) only once every event of it was accepted: a 2xx answer. A failure
(a connection error, a timeout, 408, 429 or 5xx) is retried with exponential backoff and jitter; an
event refused for good (any other 4xx) or still failing after --max-retries goes to the queue's dead
letters (see `turbo-queue dead`, and `turbo-queue requeue` to send it again), so nothing is lost
and nothing stalls the queue. SIGINT or SIGTERM stops the workers: batches not finished go back to
the queue whole, to be delivered again.

    pip install aiohttp    # (and uvloop for --uvloop)
    python examples/http_sink.py --root /tmp/tq --queue events --url http://127.0.0.1:8080/events
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import orjson

import turbo_queue
from turbo_queue.aio import AsyncDequeue

RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


@dataclass
class Settings:
    root: str
    queue: str
    url: str
    workers: int = 8
    in_flight: int = 256
    max_retries: int = 8
    backoff_s: float = 0.05
    max_backoff_s: float = 5.0
    request_timeout_s: float = 10.0
    exit_when_idle_s: float | None = None  # stop once the queue was empty this long (None: never)


@dataclass
class Stats:
    accepted: int = 0
    retries: int = 0
    dead_lettered: int = 0
    batches: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # why events went to the dead letters


class Refused(Exception):
    """An event the endpoint refused for good, or that failed max_retries times."""


async def post(session: aiohttp.ClientSession, settings: Settings, event: Any, stats: Stats) -> None:
    """POST one event until it is accepted; Refused when it never will be."""
    body = orjson.dumps(event)
    for attempt in range(settings.max_retries + 1):
        try:
            async with session.post(settings.url, data=body,
                                    headers={"content-type": "application/json"}) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return
                reason = f"HTTP {response.status}"
                if response.status not in RETRY_STATUSES:
                    raise Refused(reason)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            reason = type(e).__name__
        if attempt < settings.max_retries:
            stats.retries += 1
            # Full jitter: retries of many events that failed together do not come back together.
            delay = min(settings.max_backoff_s, settings.backoff_s * 2 ** attempt)
            await asyncio.sleep(random.uniform(0, delay))
    raise Refused(f"{reason}, {settings.max_retries} retries")


async def worker(settings: Settings, session: aiohttp.ClientSession, requests: asyncio.Semaphore,
                 dead: turbo_queue.Enqueue, stats: Stats, idle: dict[str, float]) -> None:
    async def send(event: Any) -> str | None:
        async with requests:
            try:
                await post(session, settings, event, stats)
                return None
            except Refused as e:
                return str(e)

    async with AsyncDequeue(root_path=settings.root, queue_name=settings.queue, wait_timeout=0.5) as batches:
        while True:
            batch = await batches.get_batch()  # (deletes the batch before: every event of it accepted)
            if not batch:
                if settings.exit_when_idle_s is not None and \
                        time.monotonic() - idle["since"] >= settings.exit_when_idle_s:
                    return
                continue
            idle["since"] = time.monotonic() + 3600
            outcomes = await asyncio.gather(*(send(event) for event in batch))
            refused = [(event, why) for event, why in zip(batch, outcomes) if why is not None]
            if refused:
                # Written before the batch is acknowledged: a crash in between repeats, never loses.
                await asyncio.get_running_loop().run_in_executor(
                    None, dead.add_dead_letters, [event for event, _ in refused])
                for _, why in refused:
                    stats.refused[why] = stats.refused.get(why, 0) + 1
                stats.dead_lettered += len(refused)
            stats.accepted += len(batch) - len(refused)
            stats.batches += 1
            idle["since"] = time.monotonic()


async def run(settings: Settings) -> Stats:
    """Drain the queue into the endpoint until stopped (SIGINT, SIGTERM, or idle: see Settings)."""
    stats = Stats()
    idle = {"since": time.monotonic()}
    requests = asyncio.Semaphore(settings.in_flight)
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout_s)
    connector = aiohttp.TCPConnector(limit=settings.in_flight)
    dead = turbo_queue.Enqueue(root_path=settings.root, queue_name=settings.queue)
    loop = asyncio.get_running_loop()
    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            workers = [asyncio.create_task(worker(settings, session, requests, dead, stats, idle))
                       for _ in range(settings.workers)]
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, lambda: [w.cancel() for w in workers])
            try:
                # The first failure stops them all (its batch, and theirs, go back to the queue).
                for done in asyncio.as_completed(workers):
                    await done
            except asyncio.CancelledError:
                pass
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
    finally:
        dead.close()
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="the queue's root_path")
    ap.add_argument("--queue", required=True, help="the queue's queue_name")
    ap.add_argument("--url", required=True, help="where to POST each event")
    ap.add_argument("--workers", type=int, default=8, help="batches in hand at once (default 8)")
    ap.add_argument("--in-flight", type=int, default=256, help="requests open at once (default 256)")
    ap.add_argument("--max-retries", type=int, default=8, help="retries before an event is dead-lettered")
    ap.add_argument("--exit-when-idle", type=float, default=None, metavar="S",
                    help="exit once the queue was empty for S seconds")
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = ap.parse_args(argv)
    settings = Settings(root=args.root, queue=args.queue, url=args.url, workers=args.workers,
                        in_flight=args.in_flight, max_retries=args.max_retries,
                        exit_when_idle_s=args.exit_when_idle)
    if args.uvloop:
        import uvloop

        stats = uvloop.run(run(settings))
    else:
        stats = asyncio.run(run(settings))
    print(json.dumps(asdict(stats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
