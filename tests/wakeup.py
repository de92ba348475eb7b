"""Helpers of the wake-up tests (test_wakeup.py): consumer processes that record what they get and
when, the watch lock's state, and a process's scheduler state."""

import json
import multiprocessing as mp
import os
import signal
import struct
import subprocess
import sys
import time

import turbo_queue
from turbo_queue._folder import lock_held

ctx = mp.get_context("fork")
STOP = "STOP"  # the event that stops one recording consumer


SLOW = "slow"  # events that begin so take a recording consumer 20 ms each (asleep)


def recording_consumer(root, who, wait_timeout, crash=None, cpus=None):
    """Consume queue q of `root`, appending `<event> <time received>` lines to got-<who>.txt, until
    the event STOP; then write counters() to counters-<who>.json. `crash`: (point, stop) of a crash
    point to set first; `cpus`: the CPUs to run on (os.sched_setaffinity)."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
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
            if ev.startswith(SLOW):
                time.sleep(0.02)
            out.write(f"{ev} {time.time()}\n")
    counters = d.counters()
    d.close()
    with open(os.path.join(root, f"counters-{who}.json"), "w") as f:
        json.dump(counters, f)


STARTED = []  # every consumer started, for kill_leftovers()


def start_consumer(root, who, wait_timeout, crash=None, cpus=None):
    p = ctx.Process(target=recording_consumer, args=(root, who, wait_timeout, crash, cpus), daemon=True)
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


def taking_consumer(root, cpus, calls, wait_timeout):
    """On `cpus`, wait once on an empty queue q (up-taker), then call get_batch() `calls` times
    and write [the lengths it returned, its counters()] to taker.json."""
    os.sched_setaffinity(0, cpus)
    d = turbo_queue.dequeue(root_path=str(root), queue_name="q", wait_timeout=wait_timeout)
    assert d.get_batch() == []
    open(os.path.join(root, "up-taker"), "w").close()
    while not os.path.exists(os.path.join(root, "go-taker")):
        time.sleep(0.005)
    lengths = [len(d.get_batch()) for _ in range(calls)]
    with open(os.path.join(root, "taker.json"), "w") as f:
        json.dump([lengths, d.counters()], f)
    d.close()


def spin():
    while True:
        pass


def start_spinners():
    """One process per CPU of the machine that only runs: no CPU is idle while they live (the
    runnable count of /proc/loadavg is at least the CPUs). Stop them with kill_leftovers()."""
    procs = []
    for _ in range(os.cpu_count() or 1):
        p = ctx.Process(target=spin, daemon=True)
        p.start()
        STARTED.append(p)
        procs.append(p)
    wait_until(lambda: runnable_now() > len(procs), 20, "the spinners to run")
    return procs


def runnable_now():
    """Processes runnable on the machine now (the fourth field of /proc/loadavg, this one among them)."""
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[0])


LEASE_AT = 8  # the watcher's lease in the doorbell: "until when", CLOCK_MONOTONIC ns (see _tq_os.h)


def lease_in(page):
    """The watcher's lease in the bytes of a doorbell."""
    return struct.unpack_from("=Q", page, LEASE_AT)[0]


def lease_from_another_boot():
    """A lease as a doorbell kept on disk across a restart carries it: that boot's clock was days
    further on than this one's (the 8 bytes to put at LEASE_AT)."""
    return struct.pack("=Q", time.monotonic_ns() + 10 * 86400 * 10**9)


def busy_report(root):
    """What the last listing of queue q's folder reported in its doorbell (see _tq_os.h):
    (milliseconds of CLOCK_MONOTONIC, consumers holding a batch, producers filling one)."""
    with open(os.path.join(root, "q", ".doorbell"), "rb") as f:
        f.seek(32)
        return struct.unpack("=IHH", f.read(8))


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
