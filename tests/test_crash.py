"""Crash safety, proven by killing real processes (SIGKILL) at each step of the batch life cycle."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import turbo_queue
from helpers import batch_files, drain_all, run_script

BATCH = 100
BATCHES = 6

PRODUCER = '''
import sys, turbo_queue
root = sys.argv[1] if len(sys.argv) > 1 else {root!r}
e = turbo_queue.enqueue(root_path=root, queue_name="q", max_events_per_file={batch}, max_batch_age=3600)
with open(root + "/published.txt", "a") as pub:
    for b in range({batches}):
        ids = list(range(b * {batch}, (b + 1) * {batch}))
        e.add_many(ids)                  # the batch is published by its last add
        pub.write(" ".join(map(str, ids)) + "\\n")
        pub.flush()
e.close()
'''

CONSUMER = '''
import turbo_queue
d = turbo_queue.dequeue(root_path={root!r}, queue_name="q", wait_timeout=0)
g = d.get()
with open({root!r} + "/delivered.txt", "a") as out:
    while True:
        ev = next(g)
        if ev is None:
            break
        out.write(f"{{ev}}\\n")
        out.flush()
d.close()
'''


def read_ids(path, split=None):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(x) for x in f.read().split()]


def integrity_ok(folder):
    for name in batch_files(folder, "ready_"):
        con = sqlite3.connect(os.path.join(folder, name))
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok", name
        finally:
            con.close()


def drain(root):
    return drain_all(root, reclaim_interval=0.01)  # a running consumer that reclaims eagerly


def publish_all(root):
    with turbo_queue.enqueue(root_path=str(root), queue_name="q", max_events_per_file=BATCH) as e:
        e.add_many(range(BATCH * BATCHES))
    with open(os.path.join(root, "published.txt"), "w") as f:
        f.write(" ".join(map(str, range(BATCH * BATCHES))))


def crash_env(point, after):
    return {"TURBO_QUEUE_CRASH_AT": f"{point}:{after}"}


@pytest.mark.parametrize("point, after", [
    ("add", 250), ("insert", 3), ("commit", 3), ("write", 3), ("publish", 3), ("published", 3),
])
def test_producer_killed_at_each_step_loses_no_published_event(tmp_path, point, after, batch_build):
    if point == "write" and batch_build == "file":
        pytest.skip("a batch built in its file has no separate write step")
    proc = run_script(PRODUCER.format(root=str(tmp_path), batch=BATCH, batches=BATCHES),
                      env=crash_env(point, after), check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    published = read_ids(tmp_path / "published.txt")
    assert published == list(range(2 * BATCH))  # two batches were confirmed before the crash
    counts = turbo_queue.startup(root_path=str(tmp_path), queue_name="q").on_start_cleanup()
    integrity_ok(tmp_path / "q")
    delivered = drain(tmp_path)
    assert set(published) <= set(delivered)  # nothing published is lost
    assert len(delivered) == len(set(delivered))  # a producer crash causes no duplicates
    assert set(delivered) <= set(range(BATCH * BATCHES))
    if point == "publish":  # committed but not yet renamed: recovery publishes it
        assert counts["published"] == 1 and len(delivered) == 3 * BATCH
    if point in ("add", "insert", "commit", "write"):  # never completed: nothing to publish
        assert len(delivered) == 2 * BATCH
    if point == "write":  # killed between the image's two writes: known unfinished, removed
        assert counts["unfinished"] == 1 and counts["quarantined"] == 0
    assert batch_files(tmp_path / "q") == []


@pytest.mark.parametrize("point, after, duplicates", [
    ("claim", 2, 0), ("read", 150, 49), ("delete", 2, 100),
])
def test_consumer_killed_at_each_step_gets_its_batch_redelivered(tmp_path, point, after, duplicates):
    publish_all(tmp_path)
    proc = run_script(CONSUMER.format(root=str(tmp_path)), env=crash_env(point, after), check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    first = read_ids(tmp_path / "delivered.txt")
    assert len(batch_files(tmp_path / "q", "chosen_")) == 1  # the dead consumer's batch
    # A live consumer reclaims it (its owner's lock died with it): no restart, no startup cleanup.
    rest = drain(tmp_path)
    delivered = first + rest
    assert set(delivered) == set(range(BATCH * BATCHES))
    assert len(delivered) - len(set(delivered)) == duplicates
    assert batch_files(tmp_path / "q") == []


def test_recovery_killed_midway_is_completed_by_the_next_one(tmp_path, batch_build):
    for _ in range(2):  # two dead producers, each leaving a committed, unpublished batch
        proc = run_script(PRODUCER.format(root=str(tmp_path), batch=BATCH, batches=1),
                          env=crash_env("publish", 1), check=False)
        assert proc.returncode == -signal.SIGKILL
    assert len(batch_files(tmp_path / "q", "loading_")) == 2
    proc = run_script(f"""
        import turbo_queue
        turbo_queue.startup(root_path={str(tmp_path)!r}, queue_name="q").on_start_cleanup()
    """, env=crash_env("recover", 2), check=False)
    assert proc.returncode == -signal.SIGKILL
    assert len(batch_files(tmp_path / "q", "ready_")) == 1
    counts = turbo_queue.startup(root_path=str(tmp_path), queue_name="q").on_start_cleanup()
    assert counts["published"] == 1
    assert sorted(drain(tmp_path)) == sorted(list(range(BATCH)) * 2)


def test_recovery_interrupted_between_link_and_unlink(tmp_path):
    """A batch left under both its chosen_ and ready_ names is delivered once, not twice."""
    publish_all(tmp_path)
    folder = tmp_path / "q"
    ready = batch_files(folder, "ready_")[0]
    os.link(folder / ready, folder / ("chosen_" + ready[6:] + "_0123456789ab"))
    counts = turbo_queue.startup(root_path=str(tmp_path), queue_name="q").on_start_cleanup()
    assert counts["published"] == 1
    delivered = drain(tmp_path)
    assert sorted(delivered) == list(range(BATCH * BATCHES))


def test_startup_cleanup_beside_live_processes_and_a_stopped_consumer(tmp_path):
    publish_all(tmp_path)
    root = str(tmp_path)
    stopped = subprocess.Popen(
        [sys.executable, "-c", f"""
import sys, turbo_queue
d = turbo_queue.dequeue(root_path={root!r}, queue_name="q", wait_timeout=0)
g = d.get()
got = [next(g)]
sys.stdout.write("claimed\\n"); sys.stdout.flush()
sys.stdin.readline()           # SIGSTOPped here by the test, then SIGCONTinued
while True:
    ev = next(g)
    if ev is None:
        break
    got.append(ev)
    if len(got) == {BATCH}:
        break
sys.stdout.write(" ".join(map(str, got)) + "\\n"); sys.stdout.flush()
d.close()
"""], stdin=-1, stdout=-1, text=True)
    live_producer = subprocess.Popen(
        [sys.executable, "-c", f"""
import sys, turbo_queue
e = turbo_queue.enqueue(root_path={root!r}, queue_name="q", max_events_per_file=10**6, max_batch_age=3600)
e.add_many(range(10000, 10050))
sys.stdout.write("loading\\n"); sys.stdout.flush()
sys.stdin.readline()
e.close()
"""], stdin=-1, stdout=-1, text=True)
    try:
        assert stopped.stdout.readline() == "claimed\n"
        assert live_producer.stdout.readline() == "loading\n"
        os.kill(stopped.pid, signal.SIGSTOP)
        counts = turbo_queue.startup(root_path=root, queue_name="q").on_start_cleanup()
        assert counts["skipped_live"] == 2 and counts["published"] == 0
        assert len(batch_files(tmp_path / "q", "loading_")) == 1
        assert len(batch_files(tmp_path / "q", "chosen_")) == 1
        # Another consumer, reclaiming eagerly, drains the rest but never takes the stopped one's batch.
        others = drain(tmp_path)
        time.sleep(0.05)
        others += drain(tmp_path)
        assert len(others) == BATCH * (BATCHES - 1)
        assert len(batch_files(tmp_path / "q", "chosen_")) == 1
        os.kill(stopped.pid, signal.SIGCONT)
        stopped.stdin.write("go\n")
        stopped.stdin.flush()
        mine = [int(x) for x in stopped.stdout.readline().split()]
        assert stopped.wait(30) == 0
        assert len(mine) == BATCH and not set(mine) & set(others)
        assert sorted(mine + others) == list(range(BATCH * BATCHES))
        live_producer.stdin.write("go\n")
        live_producer.stdin.flush()
        assert live_producer.wait(30) == 0
        assert sorted(drain(tmp_path)) == list(range(10000, 10050))
    finally:
        for p in (stopped, live_producer):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
                p.wait()
            p.stdin.close()
            p.stdout.close()


def test_a_dead_producers_committed_batch_is_published_by_a_running_consumer(tmp_path, batch_build):
    proc = run_script(PRODUCER.format(root=str(tmp_path), batch=BATCH, batches=BATCHES),
                      env=crash_env("publish", 2), check=False)
    assert proc.returncode == -signal.SIGKILL
    assert len(batch_files(tmp_path / "q", "loading_")) == 1
    # No startup cleanup: a consumer that is simply running takes care of it.
    assert sorted(drain(tmp_path)) == list(range(2 * BATCH))


def test_durability_os_round_trip(tmp_path, batch_build):
    with turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q", durability="os",
                             max_events_per_file=10) as e:
        assert e.durability == "os"
        e.add_many(range(25))
    assert sorted(drain(tmp_path)) == list(range(25))
