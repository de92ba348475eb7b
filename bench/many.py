"""Many processes: P producers -> K consumers, no work per event, for turbo-queue beside
multiprocessing.Queue and faster-fifo (when installed). Reports events/s and the CPU time (user +
system) of all processes together per event, the measure that does not drift on a shared host.

Each point runs in a fresh interpreter that imports the system under test and then forks every
process (so no child pays for the import). Two CPU figures: "cpu_us", what every process spent from a
common start line (all of them set up: a turbo-queue consumer has looked at the queue once, which
makes its owner lock, opens the doorbell and runs its first recovery pass; then a barrier) to its
end, the cost of moving events and of waking consumers; and "cpu_all_us", getrusage(RUSAGE_CHILDREN)
around the whole run, which adds starting, setting up and ending K + P Python processes (3-6 ms of
CPU each here).
Idle consumers wait the way users' do: turbo-queue's get() with its wait_timeout, Queue.get().
System "floor" (--systems floor) is the least K consumers can cost on this host: one turbo-queue
consumer beside K - 1 processes that only sleep wait_timeout in a loop (a consumer whose get()
returns empty at each wait_timeout wakes that often, whatever the queue does), for the idle
consumers' share of a K=120 figure. After the medians, each point's CPU per event against the
smallest K of its system in the same round (paired), as the median of the rounds.

    python bench/many.py --consumers 1 8 32 120 --producers 1 --repeat 3 --out docs/many-2core
    python bench/many.py --consumers 8 --producers 1 4 8 --systems tq

Environment: TQ_MANY_WAIT sets the consumers' wait_timeout (default 0.1 s, the package's default);
TQ_MANY_COUNTERS=FILE appends each turbo-queue consumer's counters(), CPU time, pid, minor page
faults and context switches to FILE (how batches spread over a pool, and what a consumer's first
batches cost it); TQ_MANY_WARM=1 has every turbo-queue consumer take one batch before the start line
(a pool whose processes all worked before, counted in their counters(): a process's first batches cost
it page faults that a long-lived pool paid long ago).

Events: "dict" goes through the original's API (add() / next(get()), JSON); "raw" through the
batch API (add_many() / get_batch(), bytes), where the cost per event is smallest and any cost per
batch shows most.
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

EVENT = {"id": 123456, "host": "web-17.example.net", "path": "/api/v1/items/42?expand=true",
         "status": 200, "bytes": 5123, "ts": 1764312000.123, "agent": "Mozilla/5.0 (X11; Linux)"}
RAW = b"x" * 100
WAIT_TIMEOUT = float(os.environ.get("TQ_MANY_WAIT", "0.1"))
WARM = os.environ.get("TQ_MANY_WARM") == "1"  # every turbo-queue consumer takes a batch before the start
TQ_SYSTEMS = ("tq", "tq-baseline", "floor")  # (moved through turbo-queue: --events, per batch sizes)


def split(n, k):
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


# -- roles, run in processes forked from a runner that imported the system under test ------------

def cpu_of(r):
    return r.ru_utime + r.ru_stime, r.ru_stime


def cpu_now():
    return cpu_of(resource.getrusage(resource.RUSAGE_SELF))


class Meter:
    """CPU of this process from the start line to its end, into slot `slot` of the shared arrays."""

    def __init__(self, start, cpu, sys_cpu, slot):
        self.cpu, self.sys_cpu, self.slot = cpu, sys_cpu, slot
        start.wait()
        self.r0 = resource.getrusage(resource.RUSAGE_SELF)  # (its page faults and switches: TQ_MANY_COUNTERS)
        self.t0, self.s0 = cpu_of(self.r0)

    def done(self):
        t, s = cpu_now()
        self.cpu[self.slot] = t - self.t0
        self.sys_cpu[self.slot] = s - self.s0


def tq_producer(root, n, per_file, kind, meter_args):
    import turbo_queue
    e = turbo_queue.enqueue(root_path=root, queue_name="q", max_events_per_file=per_file,
                            max_ready_files=10**9, serializer="raw" if kind == "raw" else "json")
    e.start()
    meter = Meter(*meter_args)
    if kind == "dict":
        for _ in range(n):
            e.add(EVENT)
    else:
        chunk = [RAW] * 1000
        for _ in range(n // 1000):
            e.add_many(chunk)
        e.add_many([RAW] * (n % 1000))
    e.close()
    meter.done()


def tq_consumer(root, kind, done, counts, slot, meter_args):
    import turbo_queue
    d = turbo_queue.dequeue(1, root_path=root, queue_name="q", wait_timeout=WAIT_TIMEOUT,
                            serializer="raw" if kind == "raw" else "json")
    if WARM:  # one of the K batches put there before the consumers started, and no more
        while not d.get_batch(timeout=1):
            pass
        d.clean_up()
    else:
        assert d.get_batch(timeout=0) == []  # attached (owner lock, doorbell, first recovery pass)
    meter = Meter(*meter_args)
    got = 0
    if kind == "dict":
        g = d.get()
        while True:
            ev = next(g)
            if ev is not None:
                got += 1
            elif done.is_set():
                break
    else:
        while True:
            batch = d.get_batch()
            if batch:
                got += len(batch)
            elif done.is_set():
                break
    c = d.counters()
    d.close()
    meter.done()
    counts[slot] = got
    if os.environ.get("TQ_MANY_COUNTERS"):  # a file to append each consumer's counters() to
        with open(os.environ["TQ_MANY_COUNTERS"], "a") as f:
            r = resource.getrusage(resource.RUSAGE_SELF)
            f.write(json.dumps(dict(c, cpu=cpu_of(r)[0] - meter.t0, pid=os.getpid(),
                                    minflt=r.ru_minflt - meter.r0.ru_minflt, nvcsw=r.ru_nvcsw - meter.r0.ru_nvcsw,
                                    nivcsw=r.ru_nivcsw - meter.r0.ru_nivcsw)) + "\n")


def sleeper(done, meter_args):
    """An idle consumer at its least: wakes every wait_timeout, does nothing."""
    meter = Meter(*meter_args)
    while not done.is_set():
        time.sleep(WAIT_TIMEOUT)
    meter.done()


def mpq_producer(q, n, kind, meter_args):
    ev = RAW if kind == "raw" else EVENT
    meter = Meter(*meter_args)
    for _ in range(n):
        q.put(ev)
    q.close()
    q.join_thread()  # (its feeder thread's work counted too)
    meter.done()


def mpq_consumer(q, counts, slot, meter_args):
    meter = Meter(*meter_args)
    got = 0
    while q.get() is not None:
        got += 1
    meter.done()
    counts[slot] = got


def ffq_consumer(q, counts, slot, meter_args):
    import queue
    meter = Meter(*meter_args)
    got = 0
    while True:
        try:
            evs = q.get_many(block=True, timeout=10.0, max_messages_to_get=100)
        except queue.Empty:
            continue
        ends = evs.count(None)
        got += len(evs) - ends
        if ends:  # (the end markers come after every event; pass on those meant for others)
            for _ in range(ends - 1):
                q.put(None)
            meter.done()
            counts[slot] = got
            return


def runner(system, n, k, p, per_file, kind):
    """Fork p producers and k consumers; time them; print events/s and CPU per event as JSON."""
    ctx = mp.get_context("fork")
    counts = ctx.Array("q", k)
    cpu, sys_cpu = ctx.Array("d", k + p, lock=False), ctx.Array("d", k + p, lock=False)
    start = ctx.Barrier(k + p + 1)
    meters = [(start, cpu, sys_cpu, i) for i in range(k + p)]
    root = None
    if system in ("mpq", "ffq"):
        if system == "ffq":
            from faster_fifo import Queue as FasterFifoQueue
            q = FasterFifoQueue(max_size_bytes=64 * 1024 * 1024)
            target = ffq_consumer
        else:
            q = ctx.Queue()
            target = mpq_consumer
        cons = [ctx.Process(target=target, args=(q, counts, i, meters[i])) for i in range(k)]
        prods = [ctx.Process(target=mpq_producer, args=(q, m, kind, meters[k + j]))
                 for j, m in enumerate(split(n, p))]
    else:
        import turbo_queue  # (imported once, before forking)
        root = tempfile.mkdtemp(prefix="tq-many-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        if WARM:
            e = turbo_queue.enqueue(root_path=root, queue_name="q", max_events_per_file=per_file,
                                    max_ready_files=10**9, serializer="raw" if kind == "raw" else "json")
            e.start()
            for _ in range(k if system != "floor" else 1):
                e.add_many([RAW if kind == "raw" else EVENT] * per_file)
            e.close()
        done = ctx.Event()
        cons = [ctx.Process(target=tq_consumer, args=(root, kind, done, counts, i, meters[i]))
                if i == 0 or system != "floor" else ctx.Process(target=sleeper, args=(done, meters[i]))
                for i in range(k)]
        prods = [ctx.Process(target=tq_producer, args=(root, m, per_file, kind, meters[k + j]))
                 for j, m in enumerate(split(n, p))]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for proc in cons + prods:
        proc.start()
    start.wait()  # every process is set up
    t0 = time.perf_counter()
    for proc in prods:
        proc.join()
    if root is None:
        for _ in range(k):
            q.put(None)  # one end marker per consumer, after every event
    else:
        done.set()  # consumers stop at their first empty wait from here on
    for proc in cons + prods:
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"{system}: a process exited {proc.exitcode}")
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if root is not None:
        shutil.rmtree(root)
    if sum(counts) != n:
        raise SystemExit(f"{system}: {sum(counts)} events arrived of {n}")
    user = after.ru_utime - before.ru_utime
    system_s = after.ru_stime - before.ru_stime
    print(json.dumps({"events_per_s": n / elapsed, "cpu_us": sum(cpu) / n * 1e6,
                      "consumers_cpu_us": sum(cpu[:k]) / n * 1e6, "producers_cpu_us": sum(cpu[k:]) / n * 1e6,
                      "busy_consumers": sum(1 for c in counts if c),
                      "sys_us": sum(sys_cpu) / n * 1e6, "cpu_all_us": (user + system_s) / n * 1e6}))


def run_point(system, n, k, p, per_file, kind, pythonpath=None):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--runner", system, "--n", str(n),
                          "--consumers", str(k), "--producers", str(p), "--per-file", str(per_file),
                          "--kinds", kind], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{system} K={k} P={p} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runner")
    ap.add_argument("--n", type=int)
    ap.add_argument("--events", type=int, default=1_000_000, help="events per turbo-queue point")
    ap.add_argument("--peer-events", type=int, default=200_000,
                    help="events per multiprocessing.Queue / faster-fifo point (they cost 5-20x more)")
    ap.add_argument("--consumers", type=int, nargs="+", default=[1, 8, 32, 120])
    ap.add_argument("--producers", type=int, nargs="+", default=[1])
    ap.add_argument("--per-file", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--kinds", nargs="+", default=["dict", "raw"])
    ap.add_argument("--systems", nargs="+", default=["tq", "mpq", "ffq"])
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the median of each point is reported")
    ap.add_argument("--baseline", help="PYTHONPATH of another turbo-queue build, run as system "
                                       "'tq-baseline' in the same rounds (paired comparison)")
    ap.add_argument("--out", help="write OUT.json (and OUT.png when matplotlib is there)")
    args = ap.parse_args()
    if args.runner:
        return runner(args.runner, args.n, args.consumers[0], args.producers[0], args.per_file[0],
                      args.kinds[0])
    systems = list(args.systems)
    if "ffq" in systems:
        import importlib.util
        if importlib.util.find_spec("faster_fifo") is None:
            print("faster-fifo is not installed: left out")
            systems.remove("ffq")
    if args.baseline:
        systems.append("tq-baseline")
    points = []
    for kind in args.kinds:
        for p in args.producers:
            for k in args.consumers:
                for system in systems:
                    files = args.per_file if system in TQ_SYSTEMS else [0]
                    for per_file in files:
                        points.append((system, kind, p, k, per_file))
    runs = {pt: [] for pt in points}
    for r in range(args.repeat):
        for pt in points:
            system, kind, p, k, per_file = pt
            n = args.events if system in TQ_SYSTEMS else args.peer_events
            path = args.baseline if system == "tq-baseline" else None
            res = run_point("tq" if system == "tq-baseline" else system, n, k, p, per_file, kind, path)
            runs[pt].append(res)
            print(f"round {r + 1} {system:11s} {kind:4s} P={p:<2d} K={k:<3d} per_file={per_file:<5d} "
                  f"{res['events_per_s']:>11,.0f} events/s {res['cpu_us']:6.2f} us CPU/event "
                  f"({res['sys_us']:.2f} system; {res['cpu_all_us']:.2f} with process start; producers "
                  f"{res['producers_cpu_us']:.2f}, consumers {res['consumers_cpu_us']:.2f}, "
                  f"{res['busy_consumers']} consumers got events)", flush=True)
    table = []
    for pt, rs in runs.items():
        system, kind, p, k, per_file = pt
        table.append({"system": system, "kind": kind, "producers": p, "consumers": k, "per_file": per_file,
                      "events_per_s": statistics.median(x["events_per_s"] for x in rs),
                      "cpu_us": statistics.median(x["cpu_us"] for x in rs),
                      "sys_us": statistics.median(x["sys_us"] for x in rs),
                      "cpu_all_us": statistics.median(x["cpu_all_us"] for x in rs),
                      "runs": rs})
    print("\nmedians:")
    for row in table:
        print(f"{row['system']:11s} {row['kind']:4s} P={row['producers']:<2d} K={row['consumers']:<3d} "
              f"per_file={row['per_file']:<5d} {row['events_per_s']:>11,.0f} events/s "
              f"{row['cpu_us']:6.2f} us CPU/event ({row['sys_us']:.2f} system; {row['cpu_all_us']:.2f} "
              f"with process start)")
    print("\nagainst the smallest K, paired in each round (median of the rounds' ratios):")
    for row in table:
        first = min((r for r in table if all(r[f] == row[f] for f in ("system", "kind", "producers", "per_file"))),
                    key=lambda r: r["consumers"])
        if first is row:
            continue
        ratios = [a["cpu_us"] / b["cpu_us"] for a, b in zip(row["runs"], first["runs"])]
        print(f"{row['system']:11s} {row['kind']:4s} P={row['producers']:<2d} K={row['consumers']:<3d} "
              f"per_file={row['per_file']:<5d} {statistics.median(ratios):.2f}x K={first['consumers']} "
              f"(rounds: {' '.join(f'{x:.2f}' for x in ratios)})")
    if not args.out:
        return
    host = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d"), "wait_timeout": WAIT_TIMEOUT}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"host": host, "points": table}, f, indent=2)
    plot(table, args.out + ".png")
    print("wrote", args.out + ".json")


def plot(table, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    names = {"tq": "turbo-queue", "tq-baseline": "turbo-queue (baseline)", "mpq": "multiprocessing.Queue",
             "ffq": "faster-fifo", "floor": "1 turbo-queue consumer + K-1 sleepers"}
    kinds = sorted({row["kind"] for row in table})
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        lines = {}
        for row in table:
            if row["kind"] == kind and row["producers"] == 1:
                label = names[row["system"]] + (f", {row['per_file']:,} per batch" if row["per_file"] else "")
                lines.setdefault(label, []).append((row["consumers"], row["cpu_us"]))
        for label, pts in lines.items():
            pts.sort()
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("consumer processes (K), 1 producer")
        ax.set_ylabel("CPU time per event, all processes (us)")
        ax.set_title(f"{kind} events, {os.cpu_count()} CPUs")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print("wrote", path)


if __name__ == "__main__":
    main()
