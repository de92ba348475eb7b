"""turbo_queue.Queue behaves as multiprocessing.Queue: the same scenarios run against both,
under fork, spawn and forkserver."""

import concurrent.futures
import multiprocessing as mp
import os
import queue
import time

import pytest

import turbo_queue

METHODS = [m for m in ("fork", "spawn", "forkserver") if m in mp.get_all_start_methods()]


class Point:  # any picklable object, defined at module level
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


ITEMS = [None, 0, "", b"bytes", (1, "tuple"), {"a": [1, 2]}, Point(1, 2), 2 ** 100, 1.5, frozenset({3})]


def make(kind, ctx, **kw):
    if kind == "mp":
        return ctx.Queue(**kw)
    return turbo_queue.Queue(**kw)


@pytest.fixture(params=["mp", "tq"])
def kind(request):
    return request.param


@pytest.fixture(params=METHODS)
def ctx(request):
    return mp.get_context(request.param)


def producer(q, items):
    for item in items:
        q.put(item)
    q.close()
    q.join_thread()


def consumer(q, n, out):
    got = [q.get(timeout=60) for _ in range(n)]
    out.put(got)


def test_fifo_in_one_process(kind):
    q = make(kind, mp.get_context("fork"))
    for i in range(300):
        q.put(i)
    assert [q.get(timeout=10) for _ in range(300)] == list(range(300))
    q.close()


def test_any_picklable_object_between_processes(kind, ctx):
    q = make(kind, ctx)
    out = ctx.Queue()
    c = ctx.Process(target=consumer, args=(q, len(ITEMS), out))
    p = ctx.Process(target=producer, args=(q, ITEMS))
    c.start()
    p.start()
    assert out.get(timeout=60) == ITEMS  # None included: it is an item, not "empty"
    p.join(30)
    c.join(30)
    assert p.exitcode == 0 and c.exitcode == 0


def test_empty_raises_queue_empty(kind):
    q = make(kind, mp.get_context("fork"))
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(block=False)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get(True, 0)
    q.close()


def test_maxsize_full_and_qsize(kind):
    q = make(kind, mp.get_context("fork"), maxsize=3)
    for i in range(3):
        q.put_nowait(i)
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.05)
    assert q.full() and not q.empty() and q.qsize() == 3
    assert q.get(timeout=10) == 0
    deadline = time.monotonic() + 10
    while q.full() and time.monotonic() < deadline:
        time.sleep(0.01)
    q.put_nowait(3)
    assert [q.get(timeout=10) for _ in range(3)] == [1, 2, 3]
    deadline = time.monotonic() + 10
    while not q.empty() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert q.empty() and q.qsize() == 0
    q.close()


def slow_get(q, out):
    out.put(q.get(timeout=60))


def test_put_blocks_while_full_until_a_get(kind, ctx):
    q = make(kind, ctx, maxsize=1)
    q.put("first")
    out = ctx.Queue()
    c = ctx.Process(target=slow_get, args=(q, out))
    c.start()
    q.put("second", timeout=60)  # blocks until the other process took "first"
    assert out.get(timeout=60) == "first"
    assert q.get(timeout=10) == "second"
    c.join(30)
    q.close()


def test_closed_queue_refuses_put_and_get(kind):
    q = make(kind, mp.get_context("fork"))
    q.put(1)
    with pytest.raises(AssertionError):
        q.join_thread()  # not closed yet
    q.close()
    q.join_thread()
    q.cancel_join_thread()
    with pytest.raises(ValueError):
        q.put(2)
    with pytest.raises(ValueError):
        q.get()


def many_consumer(q, out):
    got = []
    while True:
        item = q.get(timeout=60)
        if item is None:
            break
        got.append(item)
    q.close()
    out.put(got)


def many_producer(q, base, n, consumers_to_stop):
    for i in range(n):
        q.put(base + i)
    q.close()


def test_many_producers_many_consumers_each_item_once(kind, ctx):
    q = make(kind, ctx)
    out = ctx.Queue()
    cons = [ctx.Process(target=many_consumer, args=(q, out)) for _ in range(3)]
    prods = [ctx.Process(target=many_producer, args=(q, k * 100000, 2000, 0)) for k in range(2)]
    for p in cons + prods:
        p.start()
    for p in prods:
        p.join(60)
        assert p.exitcode == 0
    for _ in cons:
        q.put(None)
    got = []
    for _ in cons:
        got += out.get(timeout=60)
    for c in cons:
        c.join(30)
    assert sorted(got) == sorted(k * 100000 + i for k in range(2) for i in range(2000))
    q.close()


_pool_queue = None


def _init(q):
    global _pool_queue
    _pool_queue = q


def _task(x):
    _pool_queue.put(x * x)
    return os.getpid()


def test_pool_initializer(kind, ctx):
    q = make(kind, ctx)
    with ctx.Pool(2, initializer=_init, initargs=(q,)) as pool:
        pool.map(_task, range(20))
        # Leaving the block terminates the workers: let them exit cleanly first, so that what they
        # put is flushed (the same rule as for multiprocessing.Queue's feeder thread).
        pool.close()
        pool.join()
    got = sorted(q.get(timeout=30) for _ in range(20))
    assert got == [x * x for x in range(20)]


def test_process_pool_executor_initializer(kind, ctx):
    q = make(kind, ctx)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx, initializer=_init, initargs=(q,)) as ex:
        list(ex.map(_task, range(10)))
    assert sorted(q.get(timeout=30) for _ in range(10)) == [x * x for x in range(10)]


def late_put(q, delay):
    time.sleep(delay)
    q.put("late")
    q.close()


def test_blocking_get_wakes_when_an_item_arrives(kind, ctx):
    q = make(kind, ctx)
    p = ctx.Process(target=late_put, args=(q, 0.3))
    p.start()
    assert q.get(timeout=60) == "late"
    p.join(30)


def test_put_many_get_many():
    q = turbo_queue.Queue()
    assert q.put_many(range(50)) == 50
    got = q.get_many(30, timeout=10)
    assert 1 <= len(got) <= 30 and got == list(range(len(got)))
    rest = []
    while len(got) + len(rest) < 50:
        rest += q.get_many(100, timeout=10)
    assert got + rest == list(range(50))
    q.close()


def get_one_and_close(path, out):
    q = turbo_queue.Queue(path)
    out.put(q.get(timeout=30))
    q.close()


def test_items_got_then_closed_are_not_delivered_again(tmp_path, ctx):
    """A process that got one item of a batch and closed leaves the rest, in place, for others."""
    path = str(tmp_path / "q")
    q = turbo_queue.Queue(path, max_events_per_file=100)
    q.put_many(range(10))
    q.close()
    out = ctx.Queue()
    p = ctx.Process(target=get_one_and_close, args=(path, out))
    p.start()
    assert out.get(timeout=60) == 0
    p.join(30)
    q2 = turbo_queue.Queue(path)
    assert [q2.get(timeout=10) for _ in range(9)] == list(range(1, 10))
    with pytest.raises(queue.Empty):
        q2.get(timeout=0.05)
    q2.close()


def test_given_path_keeps_events_across_restarts(tmp_path):
    path = str(tmp_path / "persist")
    q = turbo_queue.Queue(path)
    q.put_many(["a", "b"])
    q.close()
    del q
    assert os.path.isdir(path)
    q2 = turbo_queue.Queue(path)
    assert [q2.get(timeout=10), q2.get(timeout=10)] == ["a", "b"]
    q2.close()


def test_private_folder_is_removed_by_the_creating_process_at_exit(tmp_path):
    import subprocess
    import sys

    code = ("import turbo_queue, sys\n"
            "q = turbo_queue.Queue()\n"
            "q.put(1)\n"
            "print(q._folder)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    folder = proc.stdout.strip()
    assert folder and not os.path.exists(folder)


def test_a_waiting_get_uses_almost_no_cpu():
    q = turbo_queue.Queue()
    t0, cpu0 = time.monotonic(), time.process_time()
    with pytest.raises(queue.Empty):
        q.get(timeout=2.0)
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    assert wall >= 1.9
    assert cpu < 0.02 * wall  # under 2% of a core while waiting
    q.close()


@pytest.mark.parametrize("settings", [dict(maxsize=-1), dict(max_linger=-0.1), dict(max_linger="1"),
                                      dict(max_linger=float("nan")), dict(latency=0),
                                      dict(serializer="nope")])
def test_bad_settings_raise_valueerror_at_construction(settings):
    with pytest.raises(ValueError) as info:
        turbo_queue.Queue(**settings)
    assert next(iter(settings)) in str(info.value)
