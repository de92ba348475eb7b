"""One recovery pass per reclaim_interval for a whole pool of consumers (.reclaim.lock), which never
keeps a batch of a dead consumer from being reclaimed: not when the lock's holder is stopped mid-pass,
not when the lock file is something planted. Real processes and files."""

import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import signal
import time

import pytest

import turbo_queue

ctx = mp.get_context("fork")
INTERVAL = 0.1


def idle_consumer(root, seconds, out):
    d = turbo_queue.dequeue(root_path=root, queue_name="q", wait_timeout=0.02, reclaim_interval=INTERVAL)
    g = d.get()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        next(g)
    with open(out, "w") as f:
        json.dump(d.counters(), f)
    d.close()


def test_a_pool_runs_about_one_recovery_pass_per_interval(tmp_path):
    root, k, seconds = str(tmp_path), 8, 1.5
    os.makedirs(tmp_path / "q")
    procs = [ctx.Process(target=idle_consumer, args=(root, seconds, str(tmp_path / f"c{i}.json")))
             for i in range(k)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    passes = sum(json.loads((tmp_path / f"c{i}.json").read_text())["reclaim_passes"] for i in range(k))
    # Each of the 8 would run one every 0.1 s (about 120 in all); the pool runs about 15.
    assert 3 <= passes <= seconds / INTERVAL + k + 5, passes


def hold_a_batch(root, ready_file):
    d = turbo_queue.dequeue(root_path=root, queue_name="q", wait_timeout=1)
    next(d.get())
    open(ready_file, "w").close()
    time.sleep(600)


def leave_a_dead_consumers_batch(tmp_path):
    root = str(tmp_path)
    with turbo_queue.enqueue(root_path=root, queue_name="q", max_events_per_file=10) as e:
        e.add_many(range(10))
    p = ctx.Process(target=hold_a_batch, args=(root, str(tmp_path / "holding")))
    p.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "holding").exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    assert [n for n in os.listdir(tmp_path / "q") if n.startswith("chosen_")]


def drain_within(root, seconds, interval=INTERVAL):
    d = turbo_queue.dequeue(root_path=root, queue_name="q", wait_timeout=0.05, reclaim_interval=interval)
    got, end = [], time.monotonic() + seconds
    while len(got) < 10 and time.monotonic() < end:
        got += d.get_batch()
    d.close()
    return sorted(got)


def stopped_pass_holder(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"r", 0)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.kill(os.getpid(), signal.SIGSTOP)  # stopped mid-pass, holding the lock
    time.sleep(600)


def process_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_a_pass_holder_stopped_mid_pass_does_not_stop_reclaims(tmp_path):
    leave_a_dead_consumers_batch(tmp_path)
    holder = ctx.Process(target=stopped_pass_holder, args=(str(tmp_path / "q" / ".reclaim.lock"),))
    holder.start()
    try:
        deadline = time.monotonic() + 30
        while process_state(holder.pid) != "T":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert drain_within(str(tmp_path), 20) == list(range(10))
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory", "unreadable"])
def test_an_unusable_reclaim_lock_never_stops_a_pass(tmp_path, kind):
    leave_a_dead_consumers_batch(tmp_path)
    lock = tmp_path / "q" / ".reclaim.lock"
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not yours")
    lock.unlink()  # (made by the dead consumer's first pass)
    if kind == "symlink":
        os.symlink(outside, lock)
    elif kind == "fifo":
        os.mkfifo(lock)
    elif kind == "directory":
        lock.mkdir()
    else:
        lock.write_bytes(b"")
        os.chmod(lock, 0)
        if os.geteuid() == 0:
            os.chown(lock, 65534, 65534)  # another user's, as root sees it: opened all the same
    assert drain_within(str(tmp_path), 20) == list(range(10))
    assert hashlib.sha256(outside.read_bytes()).hexdigest() == hashlib.sha256(b"not yours").hexdigest()


def test_a_new_consumer_takes_a_dead_predecessors_batch_at_once(tmp_path):
    # A pass ran a moment ago (the dead consumer's own): a consumer's first pass runs all the same,
    # so a restarted consumer does not wait an interval (here a minute) for its predecessor's batch.
    leave_a_dead_consumers_batch(tmp_path)
    os.utime(tmp_path / "q" / ".reclaim.lock")
    assert drain_within(str(tmp_path), 20, interval=60) == list(range(10))
