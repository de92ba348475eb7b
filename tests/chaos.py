"""A P x C pipeline whose processes are SIGKILLed at random moments and restarted.

Used by test_chaos.py, and runnable on its own to produce the README's figures:
    python tests/chaos.py --runs 200
    python tests/chaos.py --runs 200 --consumers 20   (a pool: watcher, doorbell sleepers, reclaim turns)
"""

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

# Under emulation (qemu-user: TURBO_QUEUE_EMULATED) a process takes seconds to start: kill less
# often and run longer, so that a run still publishes and delivers between kills.
SLOWDOWN = 20 if os.environ.get("TURBO_QUEUE_EMULATED") else 1


PRODUCER = r'''
import os, random, sys
import turbo_queue
root, who, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
e = turbo_queue.enqueue(root_path=root, queue_name="q", max_events_per_file=rng.randint(5, 80),
                        max_batch_age=rng.choice([0.01, 0.05, 0.5]))
confirmed = open(os.path.join(root, f"pub-{who}.txt"), "a", buffering=1)
i = 0
unconfirmed = []
while not os.path.exists(os.path.join(root, "STOP")):
    ids = [f"{who}.{i + k}" for k in range(rng.randint(1, 40))]
    i += len(ids)
    e.add_many(ids)
    unconfirmed += ids
    if rng.random() < 0.3:
        e.flush()                      # returns once they are published: now they must never be lost
        confirmed.write(" ".join(unconfirmed) + "\n")
        unconfirmed = []
e.close()
confirmed.write(" ".join(unconfirmed) + "\n")
'''

CONSUMER = r'''
import os, sys
import turbo_queue
root, who, max_attempts = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = turbo_queue.dequeue(root_path=root, queue_name="q", wait_timeout=0.02, reclaim_interval=0.1,
                        max_attempts=max_attempts)
fd = os.open(os.path.join(root, f"del-{who}.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
g = d.get()
while True:
    ev = next(g)
    if ev is None:
        if os.path.exists(os.path.join(root, "STOP")):
            break
        continue
    os.write(fd, (ev + "\n").encode())
d.close()
'''


def read_words(folder, prefix):
    """The ids in the record files `prefix*` of `folder`. A process SIGKILLed while writing a line
    can leave it cut short (a write that crosses a page boundary stops between pages): the last id of
    such an unterminated line may be truncated into an id that never existed (or into another one),
    so it is not counted. Returns (ids, how many lines were cut short)."""
    words, cut = [], 0
    for name in os.listdir(folder):
        if name.startswith(prefix):
            with open(os.path.join(folder, name)) as f:
                text = f.read()
            if text and not text.endswith("\n"):
                cut += 1
                text = text[:max(text.rfind(" "), text.rfind("\n")) + 1]  # up to the last separator
            words += text.split()
    return words, cut


def run_once(seed, producers=2, consumers=3, duration=1.0):
    import turbo_queue

    rng = random.Random(seed)
    root = tempfile.mkdtemp(prefix="tq-chaos-")
    incarnation = {}
    # One run in three sets an event aside at the first death of a consumer holding it (careful
    # from the first attempt): the dead-letter path under random kills too.
    max_attempts = rng.choice([3, 3, 1])

    def start(role, k):
        n = incarnation[(role, k)] = incarnation.get((role, k), -1) + 1
        who = f"{role}{k}-{n}"
        code = PRODUCER if role == "p" else CONSUMER
        args = [sys.executable, "-c", code, root, who,
                str(rng.randrange(1 << 30)) if role == "p" else str(max_attempts)]
        return subprocess.Popen(args, stderr=subprocess.PIPE)

    procs = {("p", k): start("p", k) for k in range(producers)}
    procs.update({("c", k): start("c", k) for k in range(consumers)})
    kills = 0
    end = time.monotonic() + duration * SLOWDOWN
    while time.monotonic() < end:
        time.sleep(rng.uniform(0.02, 0.15) * SLOWDOWN)
        key = rng.choice(sorted(procs))
        os.kill(procs[key].pid, signal.SIGKILL)
        procs[key].wait()
        procs[key].stderr.close()
        kills += 1
        procs[key] = start(*key)
    open(os.path.join(root, "STOP"), "w").close()
    errors = []
    for key, p in procs.items():
        if p.wait(120) != 0:
            errors.append(f"{key} exited {p.returncode}: {p.stderr.read().decode()[-2000:]}")
        p.stderr.close()
    folder = os.path.join(root, "q")
    bad_ready = []
    for name in os.listdir(folder):
        if name.startswith("ready_") and name.endswith(".db"):
            con = sqlite3.connect(os.path.join(folder, name))
            try:
                if con.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                    bad_ready.append(name)
            finally:
                con.close()
    # Everything stopped: startup cleanup returns what dead processes held, then drain.
    turbo_queue.startup(root_path=root, queue_name="q").on_start_cleanup()
    from helpers import drain_all

    drained = drain_all(root)
    # A batch whose consumers were killed max_attempts times has the events they had in hand set
    # aside as dead letters: kept for a person, not lost.
    dead = [d.decode() for d in turbo_queue.dead_letters(folder)]
    published_words, cut_pub = read_words(root, "pub-")
    delivered_words, cut_del = read_words(root, "del-")
    published = set(published_words)
    delivered = delivered_words + drained + dead
    left = sorted(n for n in os.listdir(folder)
                  if not n.startswith((".", "dead_")) and not n.endswith("-journal"))
    stats = {
        "seed": seed, "kills": kills, "published": len(published), "delivered": len(delivered),
        "dead_lettered": len(dead),
        "lost": len(published - set(delivered)), "duplicates": len(delivered) - len(set(delivered)),
        "lost_ids": sorted(published - set(delivered))[:10],
        "bad_ready_files": bad_ready, "left_in_folder": left, "errors": errors,
        "lines_cut_by_kills": cut_pub + cut_del,
    }
    import shutil
    shutil.rmtree(root)
    return stats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--consumers", type=int, default=3, help="consumer processes of each run")
    ap.add_argument("--json")
    args = ap.parse_args()
    totals = {"runs": 0, "kills": 0, "published": 0, "delivered": 0, "dead_lettered": 0, "lost": 0,
              "duplicates": 0, "bad_ready_files": 0, "errors": 0}
    for seed in range(args.runs):
        s = run_once(seed, consumers=args.consumers)
        for k in ("kills", "published", "delivered", "dead_lettered", "lost", "duplicates"):
            totals[k] += s[k]
        totals["bad_ready_files"] += len(s["bad_ready_files"])
        totals["errors"] += len(s["errors"]) + len(s["left_in_folder"])
        totals["runs"] += 1
        if s["lost"] or s["bad_ready_files"] or s["errors"] or s["left_in_folder"]:
            print("FAILED RUN", json.dumps(s), flush=True)
    print(json.dumps(totals))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(totals, f, indent=2)
    return 1 if totals["lost"] or totals["bad_ready_files"] or totals["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
