"""End to end: 1 producer process -> K consumer processes, side by side in one run.

Systems: this package through the original's API (enqueue.add / next(dequeue.get())) and through
the batch API (add_many / get_batch), the pure-Python turbo-queue 0.5.2 (from a side folder, since
both are named turbo_queue), and multiprocessing.Queue. Events/s are counted end to end, process
start included, as in ../shared/reference/anchors.md.

    python bench/e2e.py --events 400000 --consumers 1 --json out.json
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

EVENT = {"id": 123456, "host": "web-17.example.net", "path": "/api/v1/items/42?expand=true",
         "status": 200, "bytes": 5123, "ts": 1764312000.123, "agent": "Mozilla/5.0 (X11; Linux)"}
RAW = b"x" * 100


def burn(us):
    if us:
        end = time.perf_counter() + us / 1e6
        while time.perf_counter() < end:
            pass


# -- roles, each run in its own process -----------------------------------------------------------

def tq_producer(root, n, per_file, api):
    import turbo_queue
    e = turbo_queue.enqueue(root_path=root, queue_name="b", max_events_per_file=per_file,
                            max_ready_files=10**9, serializer="raw" if api == "raw" else "json")
    e.start()
    if api == "original":
        for _ in range(n):
            e.add(EVENT)
            e.update_enqueue_active_state()
    elif api == "batch":
        chunk = [EVENT] * 1000
        for _ in range(n // 1000):
            e.add_many(chunk)
    else:
        chunk = [RAW] * 1000
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
                burn(work_us)
    else:
        while got < n:
            batch = d.get_batch()
            got += len(batch)
            if work_us:
                for _ in batch:
                    burn(work_us)
    d.close()
    return got


def legacy_producer(root, n, per_file):
    import turbo_queue
    e = turbo_queue.enqueue()
    e.setup_logging(log_file=os.path.join(root, "legacy.log"))
    e.root_path, e.queue_name = root, "b"
    e.max_events_per_file, e.max_ready_files = per_file, 10**9
    e.start()
    for _ in range(n):
        e.add(EVENT)


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
            burn(work_us)
    return got


def role_main(args):
    if args.role == "tq-producer":
        tq_producer(args.root, args.n, args.per_file, args.api)
    elif args.role == "tq-consumer":
        tq_consumer(args.root, args.n, args.api, args.work_us)
    elif args.role == "legacy-producer":
        legacy_producer(args.root, args.n, args.per_file)
    elif args.role == "legacy-consumer":
        legacy_consumer(args.root, args.n, args.work_us)


# -- the driver -----------------------------------------------------------------------------------

def split(n, k):
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def run_files(system, n, k, per_file, api, work_us, legacy_path):
    """Our package or 0.5.2: one producer process and k consumer processes on a fresh folder."""
    root = tempfile.mkdtemp(prefix="tq-bench-")
    env = dict(os.environ)
    if system == "legacy":
        env["PYTHONPATH"] = legacy_path
    prefix = "legacy" if system == "legacy" else "tq"
    me = [sys.executable, os.path.abspath(__file__), "--root", root, "--per-file", str(per_file),
          "--api", api, "--work-us", str(work_us)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(me + ["--role", f"{prefix}-consumer", "--n", str(c)], env=env)
             for c in split(n, k)]
    procs.append(subprocess.Popen(me + ["--role", f"{prefix}-producer", "--n", str(n)], env=env))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"{system} {p.args} failed")
    elapsed = time.perf_counter() - t0
    shutil.rmtree(root)
    return n / elapsed


def _mpq_producer(q, n, k):
    for _ in range(n):
        q.put(EVENT)


def _mpq_consumer(q, n, work_us):
    for _ in range(n):
        q.get()
        burn(work_us)


def run_mpqueue(n, k, work_us):
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_mpq_consumer, args=(q, c, work_us)) for c in split(n, k)]
    procs.append(ctx.Process(target=_mpq_producer, args=(q, n, k)))
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return n / (time.perf_counter() - t0)


def ensure_legacy(path):
    if not os.path.exists(os.path.join(path, "turbo_queue", "_turbo_queue.py")):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", path,
                        "turbo-queue==0.5.2"], check=True)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role")
    ap.add_argument("--root")
    ap.add_argument("--n", type=int)
    ap.add_argument("--api", default="original")
    ap.add_argument("--per-file", type=int, default=1000)
    ap.add_argument("--work-us", type=float, default=0)
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--consumers", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="runs per system; the best is reported")
    ap.add_argument("--legacy-path", default=os.path.join(os.path.dirname(__file__), "..", ".side", "tq0.5.2"))
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.role:
        return role_main(args)

    legacy = ensure_legacy(os.path.abspath(args.legacy_path))
    n, k, w = args.events, args.consumers, args.work_us
    systems = {
        "turbo-queue (original API, 1000/file)": lambda: run_files("tq", n, k, 1000, "original", w, legacy),
        "turbo-queue (original API, 10000/file)": lambda: run_files("tq", n, k, 10000, "original", w, legacy),
        "turbo-queue (add_many/get_batch, 10000/file)": lambda: run_files("tq", n, k, 10000, "batch", w, legacy),
        "turbo-queue (raw 100 B, add_many/get_batch)": lambda: run_files("tq", n, k, 10000, "raw", w, legacy),
        "turbo-queue 0.5.2 (pure Python, 1000/file)": lambda: run_files("legacy", n, k, 1000, "original", w, legacy),
        "multiprocessing.Queue": lambda: run_mpqueue(n, k, w),
    }
    results = {}
    for name, fn in systems.items():
        rates = [fn() for _ in range(args.repeat)]
        results[name] = max(rates)
        print(f"{name:48s} {results[name]:>12,.0f} events/s   (runs: {', '.join(f'{r:,.0f}' for r in rates)})", flush=True)
    ours = results["turbo-queue (original API, 1000/file)"]
    print()
    for base in ("turbo-queue 0.5.2 (pure Python, 1000/file)", "multiprocessing.Queue"):
        print(f"original API, 1000/file vs {base}: {ours / results[base]:.1f}x")
        print(f"original API, 10000/file vs {base}: {results['turbo-queue (original API, 10000/file)'] / results[base]:.1f}x")
    host = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "events": n, "consumers": k, "work_us": w}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"host": host, "events_per_s": results}, f, indent=2)


if __name__ == "__main__":
    main()
