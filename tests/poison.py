"""Poison events for the tests: consumers whose handler kills their process on chosen events, run
as real processes and restarted by a supervisor as they die, the way a user's would be."""

import json
import multiprocessing as mp
import os
import time

import turbo_queue

IDLE_EXIT_S = 1.0  # a consumer with nothing to do for this long, and nothing held anywhere, exits 0
DIED = 1           # the exit status of a consumer its poison event killed


def folder_busy(folder):
    """Whether any batch waits or is held (ready_ or chosen_)."""
    return any(n.startswith(("ready_", "chosen_")) for n in os.listdir(folder))


def _handled(log, event):
    # One line per event the handler finished, written before the next is asked for.
    log.write(json.dumps(event) + "\n")
    log.flush()


def consumer(root, out_dir, poison, style, max_attempts):
    """Handle events until idle, by next(get()), get_many() or get_batch() (`style`: "next",
    "many", "batch"); os._exit(DIED) when handed a poison event (in a list, for the batch styles)."""
    folder = os.path.join(root, "q")
    log = open(os.path.join(out_dir, f"{os.getpid()}.log"), "a")
    d = turbo_queue.dequeue(root_path=root, queue_name="q", wait_timeout=0.05, reclaim_interval=0.1,
                            max_attempts=max_attempts)
    idle_since = time.monotonic()
    while True:
        if style == "next":
            events = [next(d.get())]
            if events == [None]:
                events = []
        elif style == "many":
            events = d.get_many(100, timeout=0.05)
        else:
            events = d.get_batch(timeout=0.05)
        if not events:
            if time.monotonic() - idle_since > IDLE_EXIT_S and not folder_busy(folder):
                break
            continue
        idle_since = time.monotonic()
        if any(e in poison for e in events):
            os._exit(DIED)
        for e in events:
            _handled(log, e)
    d.close()
    log.close()


def queue_consumer(q, folder, out_dir, poison):
    """The same through turbo_queue.Queue `q` of `folder` (spawned: the queue arrives pickled)."""
    log = open(os.path.join(out_dir, f"{os.getpid()}.log"), "a")
    idle_since = time.monotonic()
    while True:
        try:
            e = q.get(timeout=0.05)
        except Exception:  # queue.Empty
            if time.monotonic() - idle_since > IDLE_EXIT_S and not folder_busy(folder):
                break
            continue
        idle_since = time.monotonic()
        if e in poison:
            os._exit(DIED)
        _handled(log, e)
    q.close()
    log.close()


def supervise(target, args, consumers=2, limit_s=60, context="fork"):
    """Run `consumers` processes of target(*args), starting a new one whenever one dies, until they
    all exit 0 (or limit_s passes). Returns how many died."""
    ctx = mp.get_context(context)
    deaths = 0
    deadline = time.monotonic() + limit_s
    running = [ctx.Process(target=target, args=args) for _ in range(consumers)]
    for p in running:
        p.start()
    while running and time.monotonic() < deadline:
        for p in list(running):
            p.join(0.02)
            if p.exitcode is None:
                continue
            running.remove(p)
            if p.exitcode == DIED:
                deaths += 1
                q = ctx.Process(target=target, args=args)
                q.start()
                running.append(q)
            else:
                assert p.exitcode == 0, f"a consumer exited {p.exitcode}"
    for p in running:
        p.kill()
        p.join()
    assert not running, f"consumers still running after {limit_s} s ({deaths} deaths)"
    return deaths


def handled_counts(out_dir):
    """How many times each event was handled, over every consumer's log."""
    counts = {}
    for name in os.listdir(out_dir):
        with open(os.path.join(out_dir, name)) as f:
            for line in f:
                e = json.loads(line)
                counts[e] = counts.get(e, 0) + 1
    return counts
