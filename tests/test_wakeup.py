"""Waking consumers: a batch wakes about one of many waiting consumers (the doorbell and the watcher,
see _wakeup.pxi), batches of a producer that rings nothing (the pure-Python 0.5.2) are still found
at once, and no consumer killed or stopped at any step of waiting keeps the others asleep: every
test here gives the survivors a wait_timeout of 30 s, so a lost wake-up would show as a 30 s wait
(where a short one is what is tested, a lost wake-up shows as no delivery at all)."""

import json
import os
import random
import signal
import time

import pytest

import turbo_queue
from helpers import run_script
from legacy_programs import LEGACY_WRITER
from wakeup import (
    LEASE_AT,
    SLOW,
    STARTED,
    STOP,
    asleep,
    busy_report,
    ctx,
    kill_leftovers,
    lease_from_another_boot,
    lease_in,
    process_state,
    publish,
    publish_from_a_new_process,
    received,
    start_consumer,
    start_spinners,
    taking_consumer,
    wait_until,
    watch_lock_held,
)

LONG_WAIT = 30.0  # the survivors' wait_timeout
PROMPT_S = 10.0   # what "at once" must stay under here (it takes milliseconds; a lost wake, 30 s)


@pytest.fixture(autouse=True)
def _no_consumer_outlives_its_test():
    yield
    kill_leftovers()


def stop_all(root, procs):
    """Publish one STOP per live consumer (each takes one and ends), then reap them."""
    live = [p for p in procs if p.is_alive() and process_state(p.pid) != "T"]
    publish(root, [STOP] * len(live))
    for p in live:
        p.join(PROMPT_S * 2)
        assert p.exitcode == 0, "a consumer did not end"
    for p in procs:
        if p.is_alive():
            os.kill(p.pid, signal.SIGKILL)
            p.join()


def delivered_promptly(root, events):
    got = {}

    def arrived():
        got.update(received(root)[0])
        return all(e in got for e in events)

    wait_until(arrived, PROMPT_S, f"{events} to be delivered")
    return got


def all_asleep(procs):
    return all(asleep(p.pid) for p in procs)


def test_a_batch_wakes_about_one_of_many_waiting_consumers(tmp_path):
    k, batches = 8, 20
    procs = [start_consumer(tmp_path, f"c{i}", LONG_WAIT) for i in range(k)]
    wait_until(lambda: all_asleep(procs), PROMPT_S, "the consumers to wait")
    for b in range(batches):
        publish(tmp_path, [f"e{b}"])
        delivered_promptly(tmp_path, [f"e{b}"])
        wait_until(lambda: all_asleep(procs), PROMPT_S, "the consumers to wait again")
    stop_all(tmp_path, procs)
    got, twice = received(tmp_path)
    assert sorted(got) == sorted(f"e{b}" for b in range(batches)) and not twice
    waits = sum(json.loads((tmp_path / f"counters-c{i}.json").read_text())["waits"] for i in range(k))
    # Waking every consumer would cost k waits per batch (8 x 28 = 224 here); waking one, about 1-2.
    assert waits <= 3 * (batches + k) + 2 * k, waits


def test_batches_of_a_producer_that_rings_nothing_are_found_at_once(tmp_path, legacy_path):
    procs = [start_consumer(tmp_path, f"c{i}", LONG_WAIT) for i in range(4)]
    wait_until(lambda: all_asleep(procs) and watch_lock_held(tmp_path), PROMPT_S, "a watcher")
    for b in range(3):
        run_script(LEGACY_WRITER.format(legacy=str(legacy_path), values=json.dumps([f"old{b}.0", f"old{b}.1"]),
                                        log=str(tmp_path / "legacy.log"), root=str(tmp_path)),
                   env_path=legacy_path)
        written = time.time()
        got = delivered_promptly(tmp_path, [f"old{b}.0", f"old{b}.1"])
        # Below the 2 s a consumer sleeps on the doorbell at most: the watcher saw it land.
        assert got[f"old{b}.1"][1] - written < 1.5
    stop_all(tmp_path, procs)


def roles(tmp_path, point, stop):
    """Start consumers so that the one with the crash point (the victim) has the role whose step
    `point` is: the watcher for watch/watched, a follower for wait/woken. Returns (victim, others)."""
    crash = (point, stop)
    if point == "watch":  # (the first consumer to wait takes the watch: the victim, alone)
        victim = start_consumer(tmp_path, "victim", LONG_WAIT, crash)
        crashed(victim, point, stop)
        assert watch_lock_held(tmp_path) == stop  # a stopped watcher keeps the role, a dead one not
        others = [start_consumer(tmp_path, f"c{i}", LONG_WAIT) for i in range(2)]
        return victim, others
    elif point == "watched":
        victim = start_consumer(tmp_path, "victim", LONG_WAIT, crash)
        wait_until(lambda: watch_lock_held(tmp_path) and asleep(victim.pid), PROMPT_S, "the watcher")
        others = [start_consumer(tmp_path, f"c{i}", LONG_WAIT) for i in range(2)]
        wait_until(lambda: all_asleep(others), PROMPT_S, "the followers to sleep")
        publish(tmp_path, ["first"])  # lands while the watcher sleeps: no one is rung for it
    elif point == "wait":
        others = [start_consumer(tmp_path, f"c{i}", LONG_WAIT) for i in range(2)]
        wait_until(lambda: watch_lock_held(tmp_path) and all_asleep(others), PROMPT_S, "a watcher")
        victim = start_consumer(tmp_path, "victim", LONG_WAIT, crash)
    else:  # woken: the watcher is stopped (its lease soon ends), so a publish rings the doorbell
        watcher = start_consumer(tmp_path, "watcher", LONG_WAIT)
        wait_until(lambda: watch_lock_held(tmp_path) and asleep(watcher.pid), PROMPT_S, "the watcher")
        victim = start_consumer(tmp_path, "victim", LONG_WAIT, crash)
        wait_until(lambda: asleep(victim.pid), PROMPT_S, "the victim to sleep first in line")
        others = [start_consumer(tmp_path, "c0", LONG_WAIT)]
        wait_until(lambda: all_asleep(others), PROMPT_S, "the follower to sleep")
        os.kill(watcher.pid, signal.SIGSTOP)
        time.sleep(0.6)  # (past the watcher's last lease: WATCH_LEASE_S is 0.5 s)
        others.append(watcher)
        publish(tmp_path, ["first"])  # rings: wakes the victim, first in line
    crashed(victim, point, stop)
    return victim, others


def crashed(victim, point, stop):
    if stop:
        wait_until(lambda: process_state(victim.pid) == "T", PROMPT_S, f"the victim to stop at {point}")
    else:
        victim.join(PROMPT_S)
        assert victim.exitcode == -signal.SIGKILL, f"the victim did not die at {point}"


@pytest.mark.parametrize("stop", [False, True], ids=["SIGKILL", "SIGSTOP"])
@pytest.mark.parametrize("point", ["watch", "watched", "wait", "woken"])
def test_a_consumer_killed_or_stopped_at_any_step_of_waiting_keeps_no_one_asleep(tmp_path, point, stop,
                                                                               legacy_path):
    victim, others = roles(tmp_path, point, stop)
    if point == "woken":
        os.kill(others[-1].pid, signal.SIGCONT)  # the watcher works again
    expected = ["first"] if point in ("watched", "woken") else []
    delivered_promptly(tmp_path, expected)
    for b in range(3):
        publish(tmp_path, [f"e{b}"])
        expected.append(f"e{b}")
        delivered_promptly(tmp_path, expected)
    if point in ("watch", "watched"):
        # A producer that rings nothing, with the watcher dead or stopped: still found well within
        # the survivors' wait_timeout.
        run_script(LEGACY_WRITER.format(legacy=str(legacy_path), values=json.dumps(["old"]),
                                        log=str(tmp_path / "legacy.log"), root=str(tmp_path)),
                   env_path=legacy_path)
        expected.append("old")
        delivered_promptly(tmp_path, expected)
    stop_all(tmp_path, others + [victim])
    got, twice = received(tmp_path)
    assert sorted(got) == sorted(expected) and not twice
    assert all(who != "victim" for who, _ in got.values())


SHORT_WAIT = 0.2  # a wait_timeout under BELL_SLEEP_S: a follower's quiet timeout need not look again


def planted_doorbell_page(kind):
    """A doorbell page whose lease no watcher of this boot wrote."""
    page = bytearray(4096)
    if kind == "another boot":
        page[LEASE_AT:LEASE_AT + 8] = lease_from_another_boot()
    elif kind == "all ones":
        page[:] = b"\xff" * 4096
    else:  # random bytes: any lease, any word, any busy report
        page[:] = random.Random(16).randbytes(4096)
    return bytes(page)


@pytest.mark.parametrize("kind", ["another boot", "all ones", "random bytes"])
def test_a_lease_no_watcher_of_this_boot_wrote_keeps_no_one_asleep(tmp_path, kind):
    # The watcher is stopped after taking the role, before it first sleeps: the lease in the
    # doorbell is still the planted one, and followers whose wait_timeout is short must not take it
    # for a watcher asleep on the folder (their quiet timeouts would never look again).
    folder = tmp_path / "q"
    folder.mkdir()
    page = planted_doorbell_page(kind)
    (folder / ".doorbell").write_bytes(page)
    victim = start_consumer(tmp_path, "victim", SHORT_WAIT, ("watch", True))
    wait_until(lambda: process_state(victim.pid) == "T", PROMPT_S, "the watcher to stop at watch")
    others = [start_consumer(tmp_path, f"c{i}", SHORT_WAIT) for i in range(2)]
    wait_until(lambda: all_asleep(others), PROMPT_S, "the followers to sleep")
    assert lease_in((folder / ".doorbell").read_bytes()) == lease_in(page), "a watcher wrote a lease: nothing tested"
    expected = []
    for b in range(3):
        publish(tmp_path, [f"e{b}"])
        expected.append(f"e{b}")
        delivered_promptly(tmp_path, expected)
    stop_all(tmp_path, others + [victim])
    got, twice = received(tmp_path)
    assert sorted(got) == expected and not twice


def test_a_sleeping_watchers_lease_runs_no_further_ahead_than_readers_accept(tmp_path):
    # The other side of the test above: a lease further ahead than 0.5 s (TQ_WATCH_LEASE_NS) is
    # taken as over, so a watcher's own leases must never say more, or ringers would wake a second
    # consumer for every batch the watcher takes itself.
    watcher = start_consumer(tmp_path, "watcher", LONG_WAIT)
    wait_until(lambda: watch_lock_held(tmp_path) and asleep(watcher.pid), PROMPT_S, "the watcher to sleep")
    bell = tmp_path / "q" / ".doorbell"
    ahead = []
    for _ in range(150):  # 1.5 s: three leases or more
        ahead.append(lease_in(bell.read_bytes()) - time.monotonic_ns())  # (read after the lease: its writer's clock was earlier)
        time.sleep(0.01)
    assert max(ahead) <= 500_000_000, max(ahead)
    assert sum(a > 0 for a in ahead) > len(ahead) // 2, "the watcher held no lease most of the time"
    stop_all(tmp_path, [watcher])


def test_each_listing_reports_in_the_doorbell_who_is_busy(tmp_path):
    filling = turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q", max_events_per_file=10)
    filling.add("last")  # a batch being filled: its loading_ file exists
    publish(tmp_path, ["a", "b"])
    first = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0.01)
    second = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0.01)
    ms = time.monotonic_ns() // 1_000_000
    assert first.get_batch() == ["a"]
    at, holding, loading = busy_report(tmp_path)
    assert (holding, loading) == (1, 1) and 0 <= (at - ms) % 2**32 < 10_000
    assert second.get_batch() == ["b"]
    assert busy_report(tmp_path)[1:] == (2, 1)
    filling.close()  # published: no batch is filled now
    assert first.get_batch() == ["last"]  # (its "a" is done and deleted first)
    assert busy_report(tmp_path)[1:] == (2, 0)
    # Found nothing, and waited as the watcher: counted busy too (it takes the next batch itself).
    assert first.get_batch() == [] and busy_report(tmp_path)[1:] == (2, 0)
    first.close()
    second.close()


def test_a_cpu_counts_as_free_only_where_one_is():
    from turbo_queue._core import _cpu_free

    free, allowed, online = _cpu_free(0, 0, False)
    assert free and allowed == len(os.sched_getaffinity(0)) and online == os.cpu_count()
    assert _cpu_free(allowed - 1, 0, False)[0] and _cpu_free(0, allowed - 1, True)[0]
    start_spinners()  # (every CPU of the machine runs one: none is idle)
    assert not _cpu_free(allowed, 0, False)[0]
    assert not _cpu_free(1, allowed - 1, True)[0]
    assert _cpu_free(allowed - 1, 0, False)[0]  # fewer busy than CPUs: one is free whatever runs


@pytest.mark.parametrize("signum", [signal.SIGSTOP, signal.SIGKILL], ids=["SIGSTOP", "SIGKILL"])
def test_batches_left_to_a_busy_consumer_are_taken_when_it_stops(tmp_path, signum):
    # No CPU is free (the spinners, and the consumers on one CPU), and the watcher works through a
    # backlog of slow batches, listing the folder after each: the other consumer, not rung, leaves
    # the batches it finds to it. Then the watcher stops or dies: its report ages, and the other
    # takes the rest within its wait_timeout.
    wait = 0.5
    watcher = start_consumer(tmp_path, "watcher", wait, cpus={0})
    wait_until(lambda: watch_lock_held(tmp_path) and asleep(watcher.pid), PROMPT_S, "the watcher")
    other = start_consumer(tmp_path, "other", wait, cpus={0})
    wait_until(lambda: asleep(other.pid), PROMPT_S, "the other consumer to sleep")
    start_spinners()
    backlog = [f"{SLOW}{i}" for i in range(150)]
    publish(tmp_path, backlog)
    wait_until(lambda: len(received(tmp_path)[0]) >= 50, PROMPT_S * 2, "a third of the backlog")
    os.kill(watcher.pid, signum)
    publish(tmp_path, ["after"])
    wait_until(lambda: "after" in received(tmp_path)[0], PROMPT_S, "the batch after the stop")
    if signum == signal.SIGKILL:  # (and the dead one's batch, at the next recovery pass)
        wait_until(lambda: set(backlog) <= set(received(tmp_path)[0]), PROMPT_S, "the batch of the dead one")
    stop_all(tmp_path, [other])
    got, twice = received(tmp_path)
    # A stopped watcher keeps the batch it holds; a dead one's comes back by recovery (its event is
    # delivered again if it was recorded before the kill).
    assert len(set(backlog) - set(got)) <= (1 if signum == signal.SIGSTOP else 0)
    assert len(twice) <= (1 if signum == signal.SIGKILL else 0)
    assert got["after"][0] == "other"
    left = json.loads((tmp_path / "counters-other.json").read_text())["left_to_busy"]
    assert left > 0, "the other consumer never left a batch to the watcher: nothing was tested"


def test_a_consumer_that_leaves_batches_to_a_busy_one_takes_one_at_the_end_of_its_wait(tmp_path):
    # As above, no CPU is free and the watcher works through slow batches; the other consumer's
    # get_batch() leaves what it finds at first, but returns empty only if nothing is ready at the
    # end of its wait: each of its calls here ends with a batch.
    watcher = start_consumer(tmp_path, "watcher", 0.5, cpus={0})
    wait_until(lambda: watch_lock_held(tmp_path) and asleep(watcher.pid), PROMPT_S, "the watcher")
    taker = ctx.Process(target=taking_consumer, args=(tmp_path, {0}, 4, 0.3), daemon=True)
    taker.start()
    STARTED.append(taker)
    wait_until(lambda: (tmp_path / "up-taker").exists(), PROMPT_S, "the taker to wait once")
    start_spinners()
    publish(tmp_path, [f"{SLOW}{i}" for i in range(200)])  # (4 s of work for the watcher)
    wait_until(lambda: len(received(tmp_path)[0]) >= 5, PROMPT_S, "the watcher to be busy")
    (tmp_path / "go-taker").touch()
    taker.join(PROMPT_S * 2)
    assert taker.exitcode == 0
    lengths, counters = json.loads((tmp_path / "taker.json").read_text())
    assert lengths == [1, 1, 1, 1]
    assert counters["left_to_busy"] > 0, "the taker never left a batch to the watcher: nothing was tested"
    os.kill(watcher.pid, signal.SIGKILL)


@pytest.mark.parametrize("name", [".doorbell", ".watch.lock", ".reclaim.lock"])
@pytest.mark.parametrize("kind", ["symlink", "hard link", "fifo", "directory", "empty file", "short file"])
def test_an_unusable_doorbell_or_lock_file_costs_its_economy_not_events(tmp_path, name, kind):
    folder = tmp_path / "q"
    folder.mkdir()
    path = folder / name
    elsewhere = tmp_path / "elsewhere"
    if kind == "symlink":
        os.symlink(elsewhere, path)
    elif kind == "hard link":  # another file's name too: never written, grown or touched through
        elsewhere.write_bytes(b"someone's data\n" * 5)
        os.utime(elsewhere, ns=(10**18, 10**18))
        os.link(elsewhere, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"" if kind == "empty file" else b"\x01\x02")
    procs = [start_consumer(tmp_path, f"c{i}", LONG_WAIT) for i in range(3)]
    wait_until(lambda: all_asleep(procs), PROMPT_S, "the consumers to wait")
    for b in range(5):
        publish(tmp_path, [f"e{b}"])
        delivered_promptly(tmp_path, [f"e{b}"])
    stop_all(tmp_path, procs)
    assert sorted(received(tmp_path)[0]) == [f"e{b}" for b in range(5)]
    if kind == "hard link":
        assert elsewhere.read_bytes() == b"someone's data\n" * 5
        assert elsewhere.stat().st_mtime_ns == 10**18
    else:
        assert not elsewhere.exists()  # a symlink is never followed, nor created through


@pytest.mark.parametrize("how", ["truncated", "removed", "replaced by another file"])
def test_a_doorbell_tampered_with_while_consumers_sleep_on_it(tmp_path, how):
    procs = [start_consumer(tmp_path, f"c{i}", LONG_WAIT) for i in range(4)]
    wait_until(lambda: all_asleep(procs) and watch_lock_held(tmp_path), PROMPT_S, "the consumers to wait")
    bell = tmp_path / "q" / ".doorbell"
    if how == "truncated":
        os.truncate(bell, 0)  # (a store into the mapping would be a SIGBUS now)
    else:
        bell.unlink()
        if how == "replaced by another file":
            bell.write_bytes(b"\xff" * 4096)
    for b in range(5):
        publish_from_a_new_process(tmp_path, [f"e{b}"])
        delivered_promptly(tmp_path, [f"e{b}"])
    stop_all(tmp_path, procs)
    assert sorted(received(tmp_path)[0]) == [f"e{b}" for b in range(5)]


def open_files_under(folder):
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            out.append(target)
    with open("/proc/self/maps") as f:
        out += [line.split()[-1] for line in f if str(folder) in line]
    return out


def test_closed_producers_and_consumers_leave_no_file_of_the_folder_open(tmp_path):
    # (the doorbell is mapped while in use: a process that kept it would keep a mount busy)
    e = turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q", max_events_per_file=1)
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0.01)
    assert d.get_batch() == []  # waited: holds the doorbell and the watch
    e.add("x")
    assert d.get_batch() == ["x"]
    assert any(p.endswith(".doorbell") for p in open_files_under(tmp_path / "q"))
    e.close()
    d.close()
    assert open_files_under(tmp_path / "q") == []


@pytest.mark.parametrize("kind", ["missing", "symlink", "fifo", "unlocked", "held"])
def test_probing_a_lock_never_follows_or_blocks_and_says_who_holds_it(tmp_path, kind):
    import fcntl

    from turbo_queue._folder import lock_held

    path = tmp_path / ".watch.lock"
    if kind == "symlink":
        os.symlink(tmp_path / "elsewhere", path)
    elif kind == "fifo":
        os.mkfifo(path)  # (opening it to read without O_NONBLOCK would wait for a writer forever)
    elif kind != "missing":
        path.write_bytes(b"")
    holder = os.open(path, os.O_RDONLY) if kind == "held" else None
    if holder is not None:
        fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        assert lock_held(str(path)) is {"held": True, "unlocked": False, "fifo": False}.get(kind)
    finally:
        if holder is not None:
            os.close(holder)
    assert not (tmp_path / "elsewhere").exists()
