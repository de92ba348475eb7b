"""Real processes: P producers x C consumers, batch age, backpressure, claim races."""

import json
import multiprocessing as mp
import os
import time

import pytest

import turbo_queue
from helpers import batch_files, drain_all

ctx = mp.get_context("fork")


def produce(root, pid, count, per_file):
    with turbo_queue.enqueue(root_path=root, queue_name="q", max_events_per_file=per_file,
                             max_batch_age=0.05) as e:
        for i in range(count):
            e.add({"p": pid, "i": i})


def consume(root, out_path, stop):
    got = []
    d = turbo_queue.dequeue(root_path=root, queue_name="q", wait_timeout=0.02)
    g = d.get()
    while True:
        ev = next(g)
        if ev is None:
            if stop.is_set():
                # Everything was published before stop was set: a None now means all is claimed.
                if next(g) is None:
                    break
            continue
        got.append((ev["p"], ev["i"]))
    d.close()
    with open(out_path, "w") as f:
        json.dump(got, f)


@pytest.mark.parametrize("producers, consumers, count, per_file", [(1, 1, 20000, 1000), (3, 4, 5000, 97), (2, 8, 3000, 1)])
def test_every_event_exactly_once(tmp_path, producers, consumers, count, per_file):
    root = str(tmp_path)
    stop = ctx.Event()
    cons = [ctx.Process(target=consume, args=(root, str(tmp_path / f"c{k}.json"), stop)) for k in range(consumers)]
    prods = [ctx.Process(target=produce, args=(root, p, count, per_file)) for p in range(producers)]
    for p in cons + prods:
        p.start()
    for p in prods:
        p.join(120)
        assert p.exitcode == 0
    stop.set()
    for c in cons:
        c.join(120)
        assert c.exitcode == 0
    got = []
    for k in range(consumers):
        with open(tmp_path / f"c{k}.json") as f:
            part = [tuple(x) for x in json.load(f)]
        got += part
        # Each consumer sees every producer's events in the order they were added.
        for p in range(producers):
            mine = [i for (q, i) in part if q == p]
            assert mine == sorted(mine)
    expected = {(p, i) for p in range(producers) for i in range(count)}
    assert len(got) == len(expected)  # no duplicates
    assert set(got) == expected  # nothing lost
    assert batch_files(tmp_path / "q") == []


def idle_producer(root, ready, release):
    e = turbo_queue.enqueue(root_path=root, queue_name="q", max_events_per_file=1000, max_batch_age=0.2)
    e.add_many(["a", "b", "c"])
    ready.set()
    release.wait(60)  # alive and idle: no add(), no flush(), no close()
    e.close()


def test_max_batch_age_publishes_an_idle_producers_partial_batch(tmp_path):
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=idle_producer, args=(str(tmp_path), ready, release))
    p.start()
    try:
        assert ready.wait(30)
        d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0.5)
        got = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            got = d.get_batch()
        assert got == ["a", "b", "c"]
        assert p.is_alive()  # published by age, not by the producer exiting
    finally:
        release.set()
        p.join(30)
    assert p.exitcode == 0


def backpressure_producer(root, conn):
    e = turbo_queue.enqueue(root_path=root, queue_name="q", max_events_per_file=10, max_ready_files=3)
    e.start()
    sent = 0
    states = []
    while e.enqueue_active:
        e.add(sent)
        sent += 1
        e.update_enqueue_active_state()
    states.append(e.enqueue_active)
    conn.send(("paused", sent))
    conn.recv()  # the consumer drained the queue
    deadline = time.monotonic() + 30
    while not e.enqueue_active and time.monotonic() < deadline:
        time.sleep(0.005)
        e.update_enqueue_active_state()
    states.append(e.enqueue_active)
    conn.send(("states", states))
    e.close()


def test_backpressure_flips_both_ways_across_processes(tmp_path):
    parent, child = ctx.Pipe()
    p = ctx.Process(target=backpressure_producer, args=(str(tmp_path), child))
    p.start()
    assert parent.poll(60)
    tag, sent = parent.recv()
    assert tag == "paused" and sent == 30  # paused at exactly max_ready_files full batches
    assert len(batch_files(tmp_path / "q", "ready_")) == 3
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0)
    got = []
    while len(got) < 30:
        got += d.get_batch()
    d.get_batch()  # ask past the last batch: it is deleted
    parent.send("drained")
    assert parent.poll(60)
    assert parent.recv() == ("states", [False, True])
    p.join(30)
    assert got == list(range(30))


def claimer(root, out_path):
    d = turbo_queue.dequeue(root_path=root, queue_name="q", wait_timeout=0)
    seen = []
    while True:
        batch = d.get_batch()
        if not batch:
            break
        seen.append(batch[0])
    with open(out_path, "w") as f:
        json.dump(seen, f)


def test_claim_race_each_batch_to_exactly_one_consumer(tmp_path):
    with turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q", max_events_per_file=1) as e:
        e.add_many(range(2000))
    procs = [ctx.Process(target=claimer, args=(str(tmp_path), str(tmp_path / f"{k}.json"))) for k in range(16)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    seen = []
    for k in range(16):
        with open(tmp_path / f"{k}.json") as f:
            seen += json.load(f)
    assert sorted(seen) == list(range(2000))


def child_uses_inherited(root, out):
    e, d = _inherited
    e.add("from-child")
    e.flush()
    out.put(os.getpid())


_inherited = None


def test_objects_created_before_fork_work_in_the_child(tmp_path, batch_build):
    global _inherited
    e = turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q", max_events_per_file=100)
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0)
    e.add("from-parent")  # open batch in the parent at fork time
    _inherited = (e, d)
    q = ctx.Queue()
    p = ctx.Process(target=child_uses_inherited, args=(str(tmp_path), q))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    e.close()
    d.close()
    assert sorted(drain_all(tmp_path)) == ["from-child", "from-parent"]


def add_and_return(root):
    e = turbo_queue.enqueue(root_path=root, queue_name="q", max_events_per_file=1000, max_batch_age=3600)
    e.add_many(range(10))  # neither flush() nor close(): the child just returns


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_a_multiprocessing_child_publishes_its_open_batch_when_it_exits(tmp_path, method):
    # multiprocessing children leave through os._exit, which skips atexit handlers.
    c = mp.get_context(method)
    p = c.Process(target=add_and_return, args=(str(tmp_path),))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0)
    assert d.get_batch() == list(range(10))
