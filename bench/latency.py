"""Latency from add() in one process to the event reaching a consumer in another, at a low rate.

The producer adds one event every --interval seconds (each stamped with time.time()); the batch is
published by max_batch_age, and one of --consumers consumers waiting in get() is woken (the watcher,
or one woken by the doorbell). Reports p50/p99 over every event.

    python bench/latency.py --events 500 --interval 0.01 --max-batch-age 0.01 --consumers 120
"""

import argparse
import json
import multiprocessing as mp
import statistics
import tempfile
import time

import turbo_queue


def producer(root, n, interval, age):
    with turbo_queue.enqueue(root_path=root, queue_name="lat", max_batch_age=age,
                             max_events_per_file=10**6) as e:
        next_at = time.perf_counter()
        for i in range(n):
            next_at += interval
            while time.perf_counter() < next_at:
                time.sleep(max(0.0, next_at - time.perf_counter()))
            e.add({"i": i, "t": time.time()})


def consumer(root, done, out, wait_timeout):
    d = turbo_queue.dequeue(root_path=root, queue_name="lat", wait_timeout=wait_timeout)
    g = d.get()
    lat = []
    while True:
        ev = next(g)
        if ev is not None:
            lat.append(time.time() - ev["t"])
        elif done.is_set():
            break
    d.close()
    out.put(lat)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=500)
    ap.add_argument("--interval", type=float, default=0.01, help="seconds between events")
    ap.add_argument("--max-batch-age", type=float, default=0.01)
    ap.add_argument("--consumers", type=int, default=1)
    ap.add_argument("--wait-timeout", type=float, default=0.1, help="the consumers' wait_timeout")
    ap.add_argument("--json")
    args = ap.parse_args()
    ctx = mp.get_context("fork")
    root = tempfile.mkdtemp(prefix="tq-lat-")
    out = ctx.Queue()
    done = ctx.Event()
    cons = [ctx.Process(target=consumer, args=(root, done, out, args.wait_timeout))
            for _ in range(args.consumers)]
    for c in cons:
        c.start()
    time.sleep(0.5 + args.consumers * 0.01)
    p = ctx.Process(target=producer, args=(root, args.events, args.interval, args.max_batch_age))
    p.start()
    p.join()
    done.set()
    lat = [x for _ in cons for x in out.get()]
    for c in cons:
        c.join()
    if len(lat) != args.events:
        raise SystemExit(f"{len(lat)} events arrived of {args.events}")
    ms = [x * 1000 for x in lat]
    result = {"events": args.events, "consumers": args.consumers, "wait_timeout_s": args.wait_timeout,
              "interval_s": args.interval, "max_batch_age_s": args.max_batch_age,
              "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": max(ms),
              "mean_ms": statistics.mean(ms)}
    print(f"{args.events} events, one every {args.interval * 1000:g} ms, max_batch_age={args.max_batch_age:g} s, "
          f"{args.consumers} consumers: "
          f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, max {result['max_ms']:.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
