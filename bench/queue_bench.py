"""turbo_queue.Queue against multiprocessing.Queue, in one run.

1. Latency of put -> get across processes at a low rate (default 1,000 events/s): p50, p99.
2. Throughput, 1 producer -> K consumer processes (default 4), the dict event of the original's
   use case, counted end to end (process start included). turbo_queue.Queue runs with its default
   serializer ("auto": this event travels as JSON) unless --serializer names another.

    python bench/queue_bench.py --rate 1000 --events 400000 --consumers 4
"""

import argparse
import json
import multiprocessing as mp
import statistics
import time

import turbo_queue

EVENT = {"id": 123456, "host": "web-17.example.net", "path": "/api/v1/items/42?expand=true",
         "status": 200, "bytes": 5123, "ts": 1764312000.123, "agent": "Mozilla/5.0 (X11; Linux)"}


SERIALIZER = None  # turbo_queue.Queue's default ("auto") unless --serializer says otherwise


def make(kind, ctx):
    if kind == "multiprocessing.Queue":
        return ctx.Queue()
    return turbo_queue.Queue() if SERIALIZER is None else turbo_queue.Queue(serializer=SERIALIZER)


def lat_consumer(q, n, out):
    lat = []
    for _ in range(n):
        sent = q.get()
        lat.append(time.perf_counter() - sent)
    out.put(lat)


def latency(kind, ctx, rate, n):
    q = make(kind, ctx)
    out = ctx.Queue()
    c = ctx.Process(target=lat_consumer, args=(q, n, out))
    c.start()
    q.put(time.perf_counter())  # warm up: the consumer is up and waiting
    n -= 1
    next_at = time.perf_counter()
    for _ in range(n):
        next_at += 1.0 / rate
        while time.perf_counter() < next_at:
            time.sleep(max(0.0, min(0.0005, next_at - time.perf_counter())))
        q.put(time.perf_counter())  # perf_counter is CLOCK_MONOTONIC: comparable across processes
    lat = sorted(x * 1000 for x in out.get()[1:])
    c.join()
    return {"p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)], "max_ms": lat[-1]}


def tp_consumer(q, out):
    n = 0
    while True:
        ev = q.get()
        if ev is None:
            break
        n += 1
    out.put(n)


def tp_producer(q, n, k):
    for _ in range(n):
        q.put(EVENT)
    for _ in range(k):
        q.put(None)
    q.close()


def throughput(kind, ctx, n, k):
    t0 = time.perf_counter()
    q = make(kind, ctx)
    out = ctx.Queue()
    procs = [ctx.Process(target=tp_consumer, args=(q, out)) for _ in range(k)]
    procs.append(ctx.Process(target=tp_producer, args=(q, n, k)))
    for p in procs:
        p.start()
    got = sum(out.get() for _ in range(k))
    for p in procs:
        p.join()
    assert got == n, (got, n)
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--latency-events", type=int, default=3000)
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--consumers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2, help="throughput rounds (each runs both queues)")
    ap.add_argument("--serializer", help="turbo_queue.Queue's serializer (default: its own, auto)")
    ap.add_argument("--json")
    args = ap.parse_args()
    global SERIALIZER
    SERIALIZER = args.serializer
    ctx = mp.get_context("fork")
    kinds = ("turbo_queue.Queue", "multiprocessing.Queue")
    lats = {kind: latency(kind, ctx, args.rate, args.latency_events) for kind in kinds}
    # Throughput in rounds, every kind once per round, so that a drifting machine weighs on both
    # alike; the ratio is also taken within each round (paired).
    runs = {kind: [] for kind in kinds}
    for r in range(args.repeat):
        for kind in kinds:
            runs[kind].append(throughput(kind, ctx, args.events, args.consumers))
    results = {}
    for kind in kinds:
        lat, rs = lats[kind], runs[kind]
        results[kind] = dict(lat, events_per_s=max(rs), median_events_per_s=statistics.median(rs), runs=rs)
        print(f"{kind:22s} latency at {args.rate:g}/s: p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms "
              f"(max {lat['max_ms']:.1f});  throughput 1 -> {args.consumers}: best {max(rs):,.0f}, "
              f"median {statistics.median(rs):,.0f} events/s (runs: {', '.join(f'{x:,.0f}' for x in rs)})",
              flush=True)
    ours, theirs = results["turbo_queue.Queue"], results["multiprocessing.Queue"]
    ratio = ours["events_per_s"] / theirs["events_per_s"]
    median_ratio = ours["median_events_per_s"] / theirs["median_events_per_s"]
    paired = [a / b for a, b in zip(ours["runs"], theirs["runs"])]
    print(f"throughput ratio: best {ratio:.1f}x, median {median_ratio:.1f}x, median of paired rounds "
          f"{statistics.median(paired):.1f}x (rounds: {', '.join(f'{x:.1f}' for x in paired)})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "ratio": ratio, "median_ratio": median_ratio,
                       "paired_ratios": paired, "args": vars(args)}, f, indent=2)

if __name__ == "__main__":
    main()
