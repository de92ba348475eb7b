"""End to end: P producer processes (default 1) -> K consumer processes, side by side in one run.

Systems: this package through the original's API (enqueue.add / next(dequeue.get())) and through the batch API (add_many / get_batch), the pure-Python turbo-queue
0.5.2 (from a side folder, since both are named turbo_queue), and multiprocessing.Queue.

Each measurement runs in a fresh interpreter that imports the system under test and forks the
producer and the consumers, timed from the fork to the last exit (process start included, the same
way for every system), with the same number of events for every system.

Both turbo-queues get the same calls: `add` per event, and `update_enqueue_active_state()` every
--update-every events (default 0: never; the pure-Python version's one lists the folder each time).

    python bench/e2e.py --events 1000000 --consumers 1 --json out.json
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

EVENT = {"id": 123456, "host": "web-17.example.net", "path": "/api/v1/items/42?expand=true",
         "status": 200, "bytes": 5123, "ts": 1764312000.123, "agent": "Mozilla/5.0 (X11; Linux)"}
RAW = b"x" * 100
UPDATE_EVERY = int(os.environ.get("TQ_BENCH_UPDATE_EVERY", "0"))


def burn(us):
    if us:
        end = time.perf_counter() + us / 1e6
        while time.perf_counter() < end:
            pass


# -- roles, run in processes forked from a runner that imported the system under test ------------

def tq_producer(root, n, per_file, api):
    import turbo_queue
    e = turbo_queue.enqueue(root_path=root, queue_name="b", max_events_per_file=per_file,
                            max_ready_files=10**9, serializer="raw" if api == "raw" else "json")
    e.start()
    if api == "original":
        for i in range(n):
            e.add(EVENT)
            if UPDATE_EVERY and i % UPDATE_EVERY == 0:
                e.update_enqueue_active_state()
    else:
        chunk = [RAW if api == "raw" else EVENT] * 1000
        for _ in range(n // 1000):
            e.add_many(chunk)
    e.close()


def tq_consumer(root, n, api, work_us):
    import turbo_queue
    d = turbo_queue.dequeue(1, root_path=root, queue_name="b", wait_timeout=0.05,
                            serializer="raw" if api == "raw" else "json")
    got = 0
    if api == "original":
        g = d.get()
        while got < n:
            ev = next(g)
            if ev is not None:
                got += 1
                if work_us:
                    burn(work_us)
    else:
        while got < n:
            batch = d.get_batch()
            got += len(batch)
            if work_us:
                for _ in batch:
                    burn(work_us)
    d.close()


def legacy_producer(root, n, per_file):
    import turbo_queue
    e = turbo_queue.enqueue()
    e.setup_logging(log_file=os.path.join(root, "legacy.log"))
    e.root_path, e.queue_name = root, "b"
    e.max_events_per_file, e.max_ready_files = per_file, 10**9
    e.start()
    for i in range(n):
        e.add(EVENT)
        if UPDATE_EVERY and i % UPDATE_EVERY == 0:
            e.update_enqueue_active_state()


def legacy_consumer(root, n, work_us):
    import turbo_queue
    d = turbo_queue.dequeue(1)
    d.setup_logging(log_file=os.path.join(root, "legacy.log"))
    d.root_path, d.queue_name = root, "b"
    got = 0
    while got < n:
        for ev in d.get():
            if ev is None:
                break
            got += 1
            if work_us:
                burn(work_us)


def mpq_producer(q, n, k):
    for _ in range(n):
        q.put(EVENT)


def mpq_consumer(q, n, work_us):
    for _ in range(n):
        q.get()
        if work_us:
            burn(work_us)


def split(n, k):
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def runner(system, n, k, per_file, api, work_us, producers=1):
    """In a fresh interpreter that imported the system under test: fork 1 producer and k consumers
    and time them from the fork to the last consumer's exit. Every system is started the same way."""
    ctx = mp.get_context("fork")
    if system in ("mpq", "ffq"):
        if system == "ffq":
            from faster_fifo import Queue as FasterFifoQueue
            q = FasterFifoQueue(max_size_bytes=64 * 1024 * 1024)
        else:
            q = ctx.Queue()
        cons = [ctx.Process(target=mpq_consumer, args=(q, c, work_us)) for c in split(n, k)]
        prods = [ctx.Process(target=mpq_producer, args=(q, m, k)) for m in split(n, producers)]
    else:
        import turbo_queue  # noqa: F401  (imported once, before forking, like multiprocessing's own)
        root = tempfile.mkdtemp(prefix="tq-bench-")
        if system == "legacy":
            cons = [ctx.Process(target=legacy_consumer, args=(root, c, work_us)) for c in split(n, k)]
            prods = [ctx.Process(target=legacy_producer, args=(root, m, per_file)) for m in split(n, producers)]
        else:
            cons = [ctx.Process(target=tq_consumer, args=(root, c, api, work_us)) for c in split(n, k)]
            prods = [ctx.Process(target=tq_producer, args=(root, m, per_file, api)) for m in split(n, producers)]
    t0 = time.perf_counter()
    for p in cons + prods:
        p.start()
    for p in cons + prods:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"{system}: a process exited {p.exitcode}")
    elapsed = time.perf_counter() - t0
    if system not in ("mpq", "ffq"):
        shutil.rmtree(root)
    print(json.dumps({"events_per_s": n / elapsed}))


def run_system(system, n, k, per_file, api, work_us, legacy_path, producers=1):
    env = dict(os.environ)
    if system == "legacy":
        env["PYTHONPATH"] = legacy_path
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--runner", system, "--n", str(n),
                          "--consumers", str(k), "--per-file", str(per_file), "--api", api,
                          "--work-us", str(work_us), "--producers", str(producers)],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{system} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])["events_per_s"]


def ensure_legacy(path):
    if not os.path.exists(os.path.join(path, "turbo_queue", "_turbo_queue.py")):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", path,
                        "turbo-queue==0.5.2"], check=True)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runner")
    ap.add_argument("--n", type=int)
    ap.add_argument("--api", default="original")
    ap.add_argument("--per-file", type=int, default=1000)
    ap.add_argument("--work-us", type=float, default=0)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--consumers", type=int, default=1)
    ap.add_argument("--producers", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds (each runs every system once); best, median and paired ratios are reported")
    ap.add_argument("--legacy-path", default=os.path.join(os.path.dirname(__file__), "..", ".side", "tq0.5.2"))
    ap.add_argument("--update-every", type=int, default=0,
                    help="call update_enqueue_active_state() every N events in both turbo-queues")
    ap.add_argument("--json")
    args = ap.parse_args()
    os.environ["TQ_BENCH_UPDATE_EVERY"] = str(args.update_every)
    if args.runner:
        return runner(args.runner, args.n, args.consumers, args.per_file, args.api, args.work_us,
                      args.producers)

    legacy = ensure_legacy(os.path.abspath(args.legacy_path))
    n, k, w = args.events, args.consumers, args.work_us
    systems = {
        "turbo-queue (original API, 1000/file)": ("tq", 1000, "original"),
        "turbo-queue (original API, 10000/file)": ("tq", 10000, "original"),
        "turbo-queue (add_many/get_batch, 10000/file)": ("tq", 10000, "batch"),
        "turbo-queue (raw 100 B, add_many/get_batch)": ("tq", 10000, "raw"),
        "turbo-queue 0.5.2 (pure Python, 1000/file)": ("legacy", 1000, "original"),
        "multiprocessing.Queue": ("mpq", 0, "original"),
    }
    # Rounds: every system once per round, in the same order, so that a machine that drifts (other
    # tenants, a file system slowed by earlier runs' deletions) weighs on every system alike; the
    # ratios are also taken within each round (paired) and their median reported.
    rates = {name: [] for name in systems}
    for r in range(args.repeat):
        for name, (system, per_file, api) in systems.items():
            rates[name].append(run_system(system, n, k, per_file, api, w, legacy, args.producers))
        print(f"round {r + 1}/{args.repeat}: " + ", ".join(f"{rates[name][-1]:,.0f}" for name in systems),
              flush=True)
    results = {name: max(rs) for name, rs in rates.items()}
    medians = {name: statistics.median(rs) for name, rs in rates.items()}
    print()
    for name, rs in rates.items():
        print(f"{name:48s} best {results[name]:>11,.0f}  median {medians[name]:>11,.0f} events/s   "
              f"(runs: {', '.join(f'{r:,.0f}' for r in rs)})")
    print()
    paired = {}
    for ours in ("turbo-queue (original API, 1000/file)", "turbo-queue (original API, 10000/file)"):
        for base in ("turbo-queue 0.5.2 (pure Python, 1000/file)", "multiprocessing.Queue"):
            ratios = [a / b for a, b in zip(rates[ours], rates[base])]
            paired[f"{ours} vs {base}"] = ratios
            print(f"{ours} vs {base}: best {results[ours] / results[base]:.1f}x, "
                  f"median {medians[ours] / medians[base]:.1f}x, median of paired rounds "
                  f"{statistics.median(ratios):.1f}x (rounds: {', '.join(f'{x:.1f}' for x in ratios)})")
    host = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "events": n, "producers": args.producers, "consumers": k, "work_us": w}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"host": host, "best_events_per_s": results, "median_events_per_s": medians,
                       "runs_events_per_s": rates, "paired_ratios": paired}, f, indent=2)


if __name__ == "__main__":
    main()
