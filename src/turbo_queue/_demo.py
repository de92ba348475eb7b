"""`python -m turbo_queue demo`: one producer feeding many consumer processes, live, side by side
with multiprocessing.Queue on the same machine."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from typing import Any, TextIO

import turbo_queue

EVENT = {"id": 123456, "host": "web-17.example.net", "path": "/api/v1/items/42?expand=true",
         "status": 200, "bytes": 5123, "ts": 1764312000.123, "agent": "Mozilla/5.0 (X11; Linux)"}


def _burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _handled(work: float, counter: Any, done: int) -> int:
    """One event consumed: do its work, count it (the shared counter in steps of 1000)."""
    if work:
        _burn(work)
    done += 1
    if done == 1000:
        with counter.get_lock():
            counter.value += 1000
        return 0
    return done


def _tq_producer(root: str, n: int) -> None:
    with turbo_queue.enqueue(root_path=root, queue_name="demo", max_events_per_file=5000,
                             max_ready_files=10**6, max_batch_age=0.05) as e:
        for _ in range(n):
            e.add(EVENT)


def _tq_consumer(root: str, work: float, counter: Any) -> None:
    d = turbo_queue.dequeue(root_path=root, queue_name="demo", wait_timeout=0.05)
    done = 0
    g = d.get()
    while True:
        ev = next(g)
        if ev is None:
            if done:  # idle: count what the last batch left below a step of 1000
                with counter.get_lock():
                    counter.value += done
                done = 0
            if counter.value < 0:  # the driver says every event was counted
                break
            continue
        done = _handled(work, counter, done)
    d.close()


def _mpq_producer(q: Any, n: int, consumers: int) -> None:
    for _ in range(n):
        q.put(EVENT)
    for _ in range(consumers):
        q.put(None)


def _mpq_consumer(q: Any, work: float, counter: Any) -> None:
    done = 0
    while True:
        ev = q.get()
        if ev is None:
            break
        done = _handled(work, counter, done)
    with counter.get_lock():
        counter.value += done


def _progress(label: str, counter: Any, n: int, t0: float, out: TextIO) -> float:
    """Show a live progress bar until `counter` reaches n; returns events/s."""
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        have_rich = True
    except ImportError:
        have_rich = False
    if have_rich and out is sys.stdout:
        columns = (TextColumn(f"{label:22s}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]:>11,.0f} events/s"), TimeElapsedColumn())
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task(label, total=n, rate=0.0)
            while True:
                value = min(counter.value, n)
                elapsed = time.perf_counter() - t0
                progress.update(task, completed=value, rate=value / elapsed if elapsed > 0 else 0.0)
                if value >= n:
                    return n / elapsed
                time.sleep(0.1)
    while True:  # plain text: no rich, or not a terminal we own
        value = counter.value
        elapsed = time.perf_counter() - t0
        if value >= n:
            rate = n / elapsed
            out.write(f"  {label:24s} {n:>10,d} events  {rate:>11,.0f} events/s\n")
            return rate
        time.sleep(0.1)


def run_demo(events: int = 500_000, consumers: int | None = None, work_us: float = 0.0,
             out: TextIO = sys.stdout) -> dict[str, float]:
    consumers = consumers or max(2, min(8, os.cpu_count() or 2))
    ctx: Any = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    work = work_us / 1e6
    out.write(f"turbo-queue demo: 1 producer -> {consumers} consumer processes, {events:,d} dict events, "
              f"{work_us:g} us of CPU work per event, {os.cpu_count()} CPUs\n")
    results = {}

    root = tempfile.mkdtemp(prefix="turbo-queue-demo-")
    try:
        counter = ctx.Value("q", 0)
        t0 = time.perf_counter()
        procs = [ctx.Process(target=_tq_consumer, args=(root, work, counter)) for _ in range(consumers)]
        procs.append(ctx.Process(target=_tq_producer, args=(root, events)))
        for p in procs:
            p.start()
        results["turbo_queue"] = _progress("turbo-queue", counter, events, t0, out)
        counter.value = -1
        for p in procs:
            p.join()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    counter = ctx.Value("q", 0)
    q = ctx.Queue()
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_mpq_consumer, args=(q, work, counter)) for _ in range(consumers)]
    procs.append(ctx.Process(target=_mpq_producer, args=(q, events, consumers)))
    for p in procs:
        p.start()
    results["multiprocessing.Queue"] = _progress("multiprocessing.Queue", counter, events, t0, out)
    for p in procs:
        p.join()

    ratio = results["turbo_queue"] / results["multiprocessing.Queue"]
    out.write(f"\n  turbo-queue moved {results['turbo_queue']:,.0f} events/s, multiprocessing.Queue "
              f"{results['multiprocessing.Queue']:,.0f} events/s: {ratio:.1f}x\n")
    return results
