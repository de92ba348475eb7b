"""The HTTP sink: one asyncio process (examples/http_sink.py) against 1, 8 and 32 blocking consumer
processes, each posting events one at a time, to a local endpoint that answers after 20 ms.

For each side, in paired rounds: events/s accepted by the endpoint over a window, the CPU time
per event of the consumer processes (utime + stime from /proc over the window) and their memory
at its end (RSS, and PSS, which counts shared pages once).

    python bench/http_sink.py --seconds 10 --rounds 3 --out docs/http-sink-2core.json
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import turbo_queue

REPO = Path(__file__).resolve().parent.parent
SERVER = REPO / "tests" / "http_server.py"
SINK = REPO / "examples" / "http_sink.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def blocking_worker(root, queue, url):
    """A blocking consumer as the original's users run it: next event, one POST, and again."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    q = turbo_queue.Dequeue(root_path=root, queue_name=queue, wait_timeout=0.5)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # (the batch in hand goes back)
    try:
        for event in q.get():
            if event is None:
                continue
            body = json.dumps(event).encode()
            while True:
                try:
                    conn.request("POST", u.path, body, {"content-type": "application/json"})
                    response = conn.getresponse()
                    response.read()
                    if 200 <= response.status < 300:
                        break
                except (OSError, http.client.HTTPException):
                    conn.close()
                time.sleep(0.05)
    finally:
        q.close()


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_memory_kib(pid):
    rss = pss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def accepted(count_url):
    with urllib.request.urlopen(count_url, timeout=10) as r:
        return json.load(r)["accepted"]


def one_run(side, url, seconds, events, warmup):
    root = tempfile.mkdtemp(prefix="tq-http-bench-")
    try:
        with turbo_queue.Enqueue(root_path=root, queue_name="events", max_events_per_file=1000) as q:
            q.add_many({"i": i, "payload": "x" * 200} for i in range(events))
        if side == "async":
            cmds = [[sys.executable, str(SINK), "--root", root, "--queue", "events", "--url", url,
                     "--workers", "8", "--in-flight", "256", "--uvloop"]]
        else:
            cmds = [[sys.executable, __file__, "worker", "--root", root, "--queue", "events", "--url", url]
                    for _ in range(int(side))]
        count_url = url.rsplit("/", 1)[0] + "/count"
        base = accepted(count_url)  # (the endpoint counts across runs)
        procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL) for c in cmds]
        try:
            time.sleep(warmup)  # (imports, connections: not what a long-running sink pays)
            c0, t0 = accepted(count_url), time.monotonic()
            cpu0 = sum(proc_cpu_s(p.pid) for p in procs)
            time.sleep(seconds)
            c1, t1 = accepted(count_url), time.monotonic()
            cpu1 = sum(proc_cpu_s(p.pid) for p in procs)
            memory = [proc_memory_kib(p.pid) for p in procs]
            dead = [p.args for p in procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a consumer exited early: {dead}")
            if c1 - base >= events:
                raise RuntimeError("the queue ran dry within the window: give more --events")
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(60)
        done = c1 - c0
        return {"side": "1 async process" if side == "async" else f"{side} blocking processes",
                "processes": len(procs), "events_per_s": done / (t1 - t0),
                "cpu_us_per_event": (cpu1 - cpu0) / max(done, 1) * 1e6,
                "rss_mib": sum(m[0] for m in memory) / 1024, "pss_mib": sum(m[1] for m in memory) / 1024}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what")
    w = sub.add_parser("worker", help="(one blocking consumer: run by the benchmark)")
    w.add_argument("--root", required=True)
    w.add_argument("--queue", required=True)
    w.add_argument("--url", required=True)
    ap.add_argument("--seconds", type=float, default=10.0, help="the measured window of each run")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--events", type=int, default=150_000, help="events in the queue at each run's start")
    ap.add_argument("--delay", type=float, default=0.02, help="the endpoint's answer time")
    ap.add_argument("--sides", default="async,1,8,32")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.what == "worker":
        blocking_worker(args.root, args.queue, args.url)
        return 0
    server = subprocess.Popen([sys.executable, str(SERVER), "--delay", str(args.delay), "--uvloop"],
                              stdout=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{int(server.stdout.readline())}/events"
    rounds = []
    try:
        for r in range(args.rounds):
            results = [one_run(side, url, args.seconds, args.events, args.warmup)
                       for side in args.sides.split(",")]
            for res in results:
                print(f"round {r + 1}: {res['side']:>22}: {res['events_per_s']:8.0f} events/s, "
                      f"{res['cpu_us_per_event']:6.0f} us CPU/event, RSS {res['rss_mib']:7.1f} MiB, "
                      f"PSS {res['pss_mib']:7.1f} MiB", flush=True)
            rounds.append(results)
    finally:
        server.send_signal(signal.SIGTERM)
        server.stdout.close()
        server.wait(30)
    summary = []
    for i, first in enumerate(rounds[0]):
        runs = [rnd[i] for rnd in rounds]
        summary.append({"side": first["side"], "processes": first["processes"],
                        **{k: statistics.median(run[k] for run in runs)
                           for k in ("events_per_s", "cpu_us_per_event", "rss_mib", "pss_mib")}})
    async_side = summary[0]
    for s in summary[1:]:
        s["async_events_ratio"] = async_side["events_per_s"] / s["events_per_s"]
        s["async_rss_share"] = async_side["rss_mib"] / s["rss_mib"]
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
                       "delay_s": args.delay, "seconds": args.seconds, "summary": summary,
                       "rounds": rounds}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
