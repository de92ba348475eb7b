"""Helpers of the wake-up tests (test_wakeup.py): consumer processes that record what they get and
when, the watch lock's state, and a process's scheduler state."""

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import turbo_queue
from turbo_queue._folder import lock_held

ctx = mp.get_context("fork")
STOP = "STOP"  # the event that stops one recording consumer


def recording_consumer(root, who, wait_timeout, crash=None):
    """Consume queue q of `root`, appending `<event> <time received>` lines to got-<who>.txt, until
    the event STOP; then write counters() to counters-<who>.json. `crash`: (point, stop) of a crash
    point to set first."""
    if crash is not None:
        turbo_queue._core.set_crash_point(crash[0], 1, stop=crash[1])
    d = turbo_queue.dequeue(root_path=str(root), queue_name="q", wait_timeout=wait_timeout)
    with open(os.path.join(root, f"got-{who}.txt"), "a", buffering=1) as out:
        open(os.path.join(root, f"up-{who}"), "w").close()
        g = d.get()
        while True:
            ev = next(g)
            if ev is None:
                continue
            if ev == STOP:
                break
            out.write(f"{ev} {time.time()}\n")
    counters = d.counters()
    d.close()
    with open(os.path.join(root, f"counters-{who}.json"), "w") as f:
        json.dump(counters, f)


STARTED = []  # every consumer started, for kill_leftovers()


def start_consumer(root, who, wait_timeout, crash=None):
    p = ctx.Process(target=recording_consumer, args=(root, who, wait_timeout, crash), daemon=True)
    p.start()
    STARTED.append(p)
    wait_until(lambda: os.path.exists(os.path.join(root, f"up-{who}")), 20, f"consumer {who} to start")
    return p


def kill_leftovers():
    """SIGKILL the consumers a failed test left (they wait 30 s at a time, and stopped ones forever)."""
    while STARTED:
        p = STARTED.pop()
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
            p.join()


def received(root):
    """{event: (consumer, time received)} of every recording consumer, and the events received twice."""
    got, twice = {}, []
    for name in os.listdir(root):
        if name.startswith("got-"):
            with open(os.path.join(root, name)) as f:
                for line in f:
                    ev, at = line.split()
                    if ev in got:
                        twice.append(ev)
                    got[ev] = (name[4:-4], float(at))
    return got, twice


def wait_until(check, seconds, what):
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds} s for {what}")
        time.sleep(0.005)


def watch_lock_held(root):
    """Whether a consumer of queue q holds .watch.lock (is the watcher)."""
    return lock_held(os.path.join(root, "q", ".watch.lock")) is True


def process_state(pid):
    """The scheduler state letter of `pid` (S sleeping, T stopped, Z zombie...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def asleep(pid):
    """Whether `pid` sleeps in a futex or poll (not running, not stopped)."""
    with open(f"/proc/{pid}/wchan") as f:
        wchan = f.read()
    return process_state(pid) == "S" and ("futex" in wchan or "poll" in wchan or wchan == "0")


def publish(root, events, per_batch=1):
    """Publish `events` with a producer of this package, `per_batch` to a batch."""
    with turbo_queue.enqueue(root_path=str(root), queue_name="q", max_events_per_file=per_batch) as e:
        for ev in events:
            e.add(ev)


def publish_from_a_new_process(root, events):
    """publish() in a fresh interpreter (one that opens the folder's files as they are now)."""
    subprocess.run([sys.executable, os.path.abspath(__file__), str(root), *events], check=True, timeout=60)


if __name__ == "__main__":
    publish(sys.argv[1], sys.argv[2:])
