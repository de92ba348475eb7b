"""pytest-benchmark: producer alone and consumer alone, ours beside multiprocessing.Queue, in one run.
Not part of the default test run (it lives in bench/):

    python -m pytest bench/test_bench.py --benchmark-disable-gc --benchmark-columns=min,median,ops
"""

import multiprocessing as mp
import tempfile

import pytest

import turbo_queue

EVENT = {"id": 123456, "host": "web-17.example.net", "path": "/api/v1/items/42?expand=true",
         "status": 200, "bytes": 5123, "ts": 1764312000.123, "agent": "Mozilla/5.0 (X11; Linux)"}
RAW = b"x" * 100
N = 10_000


@pytest.fixture
def root():
    with tempfile.TemporaryDirectory(prefix="tq-bench-", dir="/dev/shm") as d:
        yield d


@pytest.mark.parametrize("api", ["add dict", "add_many dict", "add_many raw 100 B"])
def test_producer_alone_turbo_queue(benchmark, root, api):
    e = turbo_queue.enqueue(root_path=root, queue_name="p", max_events_per_file=N, max_ready_files=10**9,
                            serializer="raw" if "raw" in api else "json")
    payload = RAW if "raw" in api else EVENT

    def produce():
        if api.startswith("add_many"):
            e.add_many([payload] * N)
        else:
            for _ in range(N):
                e.add(payload)
        e.flush()

    benchmark(produce)
    benchmark.extra_info["events_per_round"] = N
    e.close()


@pytest.mark.parametrize("api", ["next(get()) dict", "get_batch dict", "get_batch raw 100 B"])
def test_consumer_alone_turbo_queue(benchmark, root, api):
    ser = "raw" if "raw" in api else "json"
    payload = RAW if "raw" in api else EVENT
    e = turbo_queue.enqueue(root_path=root, queue_name="c", max_events_per_file=N, serializer=ser,
                            max_ready_files=10**9)
    d = turbo_queue.dequeue(root_path=root, queue_name="c", wait_timeout=0, serializer=ser)
    g = d.get()

    def setup():
        e.add_many([payload] * N)
        e.flush()

    def consume():
        if api.startswith("next"):
            for _ in range(N):
                next(g)
        else:
            got = 0
            while got < N:
                got += len(d.get_batch())

    benchmark.pedantic(consume, setup=setup, rounds=20)
    benchmark.extra_info["events_per_round"] = N
    e.close()
    d.close()


def _drain(q, n):
    for _ in range(n):
        q.get()


def _fill(q, n):
    for _ in range(n):
        q.put(EVENT)


@pytest.mark.parametrize("side", ["producer", "consumer"])
def test_alone_multiprocessing_queue(benchmark, side):
    # The other side runs in a child process: put() returns before the pickled item is written by
    # the feeder thread, and get() needs someone filling the pipe.
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    rounds = 10
    mine, theirs = (_fill, _drain) if side == "producer" else (_drain, _fill)
    child = ctx.Process(target=theirs, args=(q, N * (rounds + 1)))
    child.start()
    benchmark.pedantic(lambda: mine(q, N), rounds=rounds, warmup_rounds=1)
    child.join()
    benchmark.extra_info["events_per_round"] = N
