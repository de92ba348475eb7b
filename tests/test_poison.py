"""Poison events (issue 15): an event that kills its consumer is set aside after max_attempts deaths,
and the pipeline keeps flowing. Real consumer processes, killed by their own handler (os._exit) and
restarted by a supervisor, on real folders."""

import json
import multiprocessing as mp
import os
import signal
import sqlite3
import sys

import pytest

import turbo_queue
from turbo_queue import _core
from turbo_queue.cli import main as cli
from helpers import drain_all, run_script
from legacy_programs import LEGACY_READER, LEGACY_WRITER
from poison import consumer, handled_counts, queue_consumer, supervise

ctx = mp.get_context("fork")


def queue_dir(root):
    return os.path.join(str(root), "q")


def produce(root, values, per_file=10, serializer="json"):
    with turbo_queue.enqueue(root_path=str(root), queue_name="q", max_events_per_file=per_file,
                             max_batch_age=3600, serializer=serializer) as e:
        e.add_many(values)


def held_or_waiting(root):
    return sorted(n for n in os.listdir(queue_dir(root)) if n.startswith(("ready_", "chosen_")))


def dead_events(root):
    return sorted((d.decode() for d in turbo_queue.dead_letters(queue_dir(root))),
                  key=lambda v: (0, v, "") if type(v) is int else (1, 0, json.dumps(v)))


def run_poison(tmp_path, values, poison, style="next", max_attempts=3, consumers=2):
    out = tmp_path / "handled"
    out.mkdir()
    deaths = supervise(consumer, (str(tmp_path), str(out), set(poison), style, max_attempts),
                       consumers=consumers)
    return deaths, handled_counts(str(out))


def check_isolated(values, poison, counts, deaths, max_attempts=3, per_batch=10):
    assert set(counts) == set(values) - set(poison), "an event other than the poison ones was lost"
    assert deaths <= max_attempts * len(poison), f"{deaths} consumer deaths for {len(poison)} poison events"
    # Events before a poison event in its batch: at most max_attempts times; all others once.
    for v, n in counts.items():
        before_poison = any(p // per_batch == v // per_batch and v < p for p in poison)
        assert n <= (max_attempts if before_poison else 1), (v, n)


# -- Acceptance 1: the scenario -------------------------------------------------------------

def test_an_event_that_kills_its_consumer_is_set_aside_after_max_attempts(tmp_path, capsys):
    values = list(range(30))
    produce(tmp_path, values)
    deaths, counts = run_poison(tmp_path, values, {15})
    check_isolated(values, {15}, counts, deaths)
    assert deaths == 3
    assert dead_events(tmp_path) == [15]
    assert held_or_waiting(tmp_path) == []
    (letter,) = turbo_queue.dead_letters(queue_dir(tmp_path))
    assert (letter.index, letter.attempts) == (5, 3) and letter.source.startswith("ready_")
    b = _core.parse_name(letter.file)
    assert (b.state, b.attempts, b.index, b.events) == ("dead", 3, 5, 1)

    # The CLI shows it, with its content, and puts it back.
    assert cli(["dead", str(tmp_path), "q", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    shown = json.loads(line)
    assert shown["event"] == 15 and shown["index"] == 5 and shown["attempts"] == 3
    assert cli(["stats", str(tmp_path), "q", "--json"]) == 0
    (stats,) = json.loads(capsys.readouterr().out)
    assert stats["dead_events"] == 1 and stats["files"]["dead"] == 1
    assert cli(["requeue", str(tmp_path), "q", "--all"]) == 0
    (requeued,) = capsys.readouterr().out.splitlines()
    b = _core.parse_name(requeued)
    assert b.state == "ready" and b.attempts == 0 and b.events == 1
    assert turbo_queue.dead_letters(queue_dir(tmp_path)) == []
    assert drain_all(tmp_path) == [15]


def test_two_poison_events_in_one_batch_are_both_found(tmp_path):
    values = list(range(30))
    produce(tmp_path, values)
    deaths, counts = run_poison(tmp_path, values, {13, 17})
    check_isolated(values, {13, 17}, counts, deaths)
    assert dead_events(tmp_path) == [13, 17]
    assert held_or_waiting(tmp_path) == []


def test_a_poison_event_in_each_of_10_batches(tmp_path):
    values = list(range(100))
    poison = {b * 10 + 5 for b in range(10)}
    produce(tmp_path, values)
    deaths, counts = run_poison(tmp_path, values, poison, consumers=3)
    check_isolated(values, poison, counts, deaths)
    assert dead_events(tmp_path) == sorted(poison)
    assert held_or_waiting(tmp_path) == []


def test_a_batch_consumer_sets_aside_what_it_had_in_hand(tmp_path):
    # get_batch() promises the whole rest of a batch: the events of the fatal call are set aside
    # together (one dead letter), the other batches flow.
    values = list(range(30))
    produce(tmp_path, values)
    deaths, counts = run_poison(tmp_path, values, {15}, style="batch")
    assert set(counts) == set(values) - set(range(10, 20))
    assert deaths == 3
    assert dead_events(tmp_path) == list(range(10, 20))
    (name,) = [n for n in os.listdir(queue_dir(tmp_path)) if n.startswith("dead_")]
    b = _core.parse_name(name)
    assert (b.index, b.events, b.attempts) == (0, 10, 3) and "-e0-9+a3" in name
    letters = turbo_queue.dead_letters(queue_dir(tmp_path))
    assert [(d.index, d.row, d.attempts) for d in letters] == [(i, i, 3) for i in range(10)]
    assert {d.source for d in letters} == {name.replace("dead_", "ready_").replace("-e0-9+a3", "")}
    assert held_or_waiting(tmp_path) == []


def test_get_many_isolates_the_poison_event(tmp_path):
    # get_many() hands a failed batch out one event per call: only the poison event is set aside.
    values = list(range(30))
    produce(tmp_path, values)
    deaths, counts = run_poison(tmp_path, values, {15}, style="many")
    check_isolated(values, {15}, counts, deaths)
    assert dead_events(tmp_path) == [15]
    assert held_or_waiting(tmp_path) == []


def test_max_attempts_1_sets_aside_at_the_first_death(tmp_path):
    values = list(range(20))
    produce(tmp_path, values)
    deaths, counts = run_poison(tmp_path, values, {4}, max_attempts=1)
    check_isolated(values, {4}, counts, deaths, max_attempts=1)
    assert deaths == 1 and dead_events(tmp_path) == [4]


def test_max_attempts_0_never_sets_aside(tmp_path):
    produce(tmp_path, list(range(10)))
    out = tmp_path / "handled"
    out.mkdir()
    for _ in range(5):
        p = ctx.Process(target=consumer, args=(str(tmp_path), str(out), {3}, "next", 0))
        p.start()
        p.join(30)
        assert p.exitcode == 1
    turbo_queue.recover_folder(queue_dir(tmp_path))
    (name,) = held_or_waiting(tmp_path)
    assert _core.parse_name(name).attempts == 5
    assert dead_events(tmp_path) == []


def test_queue_under_spawn(tmp_path):
    q = turbo_queue.Queue(str(tmp_path / "q"), max_events_per_file=10)
    q.put_many(range(30))
    q.close()
    out = tmp_path / "handled"
    out.mkdir()
    deaths = supervise(queue_consumer, (turbo_queue.Queue(str(tmp_path / "q"), max_events_per_file=10),
                                        str(tmp_path / "q"), str(out), {15}), consumers=2, context="spawn")
    counts = handled_counts(str(out))
    assert set(counts) == set(range(30)) - {15}
    assert deaths <= 3
    assert [d.decode("auto") for d in turbo_queue.dead_letters(str(tmp_path / "q"))] == [15]
    assert held_or_waiting(tmp_path) == []


def test_a_poison_event_in_a_batch_written_by_the_pure_python_package(tmp_path, legacy_path):
    run_script(LEGACY_WRITER.format(legacy=str(legacy_path), values=json.dumps(list(range(10))),
                                    log=str(tmp_path / "legacy.log"), root=str(tmp_path)), env_path=legacy_path)
    (name,) = held_or_waiting(tmp_path)
    assert _core.parse_name(name).owner is None  # 0.5.2's own name: ready_<epoch>_<uuid>.db
    out = tmp_path / "handled"
    out.mkdir()
    deaths = supervise(consumer, (str(tmp_path), str(out), {6}, "next", 3))
    assert sorted(handled_counts(str(out))) == [v for v in range(10) if v != 6]
    assert deaths == 3
    assert dead_events(tmp_path) == [6]
    assert held_or_waiting(tmp_path) == []


def test_the_pure_python_package_reads_a_batch_with_attempts_in_its_name(tmp_path, legacy_path):
    produce(tmp_path, [{"id": v} for v in range(5)])
    (name,) = held_or_waiting(tmp_path)
    tailed = name[:-3] + "+a2+e3,1.db"
    os.rename(os.path.join(queue_dir(tmp_path), name), os.path.join(queue_dir(tmp_path), tailed))
    proc = run_script(LEGACY_READER.format(legacy=str(legacy_path), root=str(tmp_path), count=5,
                                           log=str(tmp_path / "legacy.log")), env_path=legacy_path)
    assert json.loads(proc.stderr.split("RESULT")[-1]) == [{"id": v} for v in range(5)]


# -- What counts as an attempt ------------------------------------------------------------------------

def test_a_with_block_left_by_an_exception_counts_an_attempt_and_roll_back_does_not(tmp_path):
    produce(tmp_path, list(range(10)))
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0)
    g = d.get()
    next(g), next(g)
    d.roll_back()  # a deliberate give-back: not a failure
    (name,) = held_or_waiting(tmp_path)
    assert _core.parse_name(name).attempts == 0
    d.close()
    handled, raised = [], 0
    while True:
        try:
            with turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0) as d:
                for ev in d.get():
                    if ev is None:
                        break
                    if ev == 6:
                        raise KeyError(ev)  # any exception type
                    handled.append(ev)
            break
        except KeyError:
            raised += 1
    assert raised == 3
    assert sorted(set(handled)) == [v for v in range(10) if v != 6]
    assert dead_events(tmp_path) == [6]
    assert held_or_waiting(tmp_path) == []


def _raise_on(root, value):
    d = turbo_queue.dequeue(root_path=root, queue_name="q", wait_timeout=0)
    for ev in d.get():
        if ev == value:
            raise KeyError(ev)  # uncaught: the process ends with it


UNCAUGHT = """
import turbo_queue
d = turbo_queue.dequeue(root_path={root!r}, queue_name="q", wait_timeout=0)
for ev in d.get():
    if ev == 4:
        raise ValueError(ev)
"""


@pytest.mark.xfail(sys.version_info >= (3, 14), strict=True,
                   reason="Python 3.14's multiprocessing runs a child's exit functions after its "
                          "uncaught exception was handled and cleared: the exit hook cannot tell a "
                          "failure, and the batch goes back without an attempt counted")
def test_a_multiprocessing_child_ended_by_an_uncaught_exception_counts_an_attempt(tmp_path):
    # Its consumer is closed at exit, and the batch goes back with the event in hand remembered
    # (the exception is still in flight when multiprocessing's exit function runs, up to 3.13).
    produce(tmp_path, list(range(10)))
    p = ctx.Process(target=_raise_on, args=(str(tmp_path), 4))
    p.start()
    p.join(30)
    assert p.exitcode == 1
    (name,) = held_or_waiting(tmp_path)
    assert (_core.parse_name(name).attempts, _core.parse_name(name).in_hand) == (1, ((4, 4),))


def test_a_script_ended_by_an_uncaught_exception_counts_an_attempt(tmp_path):
    # A main script's exception is sys.last_value when the exit hook runs.
    produce(tmp_path, list(range(10)))
    for attempt in (1, 2):
        proc = run_script(UNCAUGHT.format(root=str(tmp_path)), check=False)
        assert proc.returncode == 1 and "ValueError: 4" in proc.stderr
        (name,) = held_or_waiting(tmp_path)
        assert (_core.parse_name(name).attempts, _core.parse_name(name).in_hand) == (attempt, ((4, 4),))
    run_script(UNCAUGHT.format(root=str(tmp_path)), check=False)
    # The third failure: the next consumer sets event 4 aside and delivers what follows it.
    assert sorted(drain_all(tmp_path)) == [5, 6, 7, 8, 9]
    assert dead_events(tmp_path) == [4]


def test_a_keyboard_interrupt_is_no_attempt(tmp_path):
    produce(tmp_path, list(range(10)))
    with pytest.raises(KeyboardInterrupt):
        with turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0) as d:
            next(d.get())
            raise KeyboardInterrupt
    (name,) = held_or_waiting(tmp_path)
    assert _core.parse_name(name).attempts == 0


def test_a_first_attempt_renames_nothing_and_a_careful_one_records_each_event(tmp_path):
    produce(tmp_path, list(range(5)))
    folder = queue_dir(tmp_path)
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0)
    g = d.get()
    first = next(g)
    held = d.batch_path
    assert first == 0 and next(g) == 1 and d.batch_path == held and "+h" not in held
    d.roll_back(failed=True)
    (name,) = held_or_waiting(tmp_path)
    b = _core.parse_name(name)
    assert (b.attempts, b.in_hand) == (1, ((1, 1),))
    seen = []
    for _ in range(5):
        seen.append(next(g))
        assert _core.parse_name(os.path.basename(d.batch_path)).holding == (len(seen) - 1,) * 2
    assert seen == list(range(5))
    assert d.get_many(10) == []  # the batch is finished: deleted under the name it had last
    d.close()
    assert os.listdir(folder) == [] or all(n.startswith(".") for n in os.listdir(folder))


def test_setting_is_checked(tmp_path):
    for bad in (-1, 1.5, "3", True, None.__class__):
        with pytest.raises(ValueError, match="max_attempts"):
            turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", max_attempts=bad)
    with pytest.raises(ValueError, match="max_attempts"):
        turbo_queue.Queue(str(tmp_path / "x"), max_attempts=-2)


# -- Names: the grammar of attempts --------------------------------------------------------------------

@pytest.mark.parametrize("name, attempts, in_hand, events", [
    ("ready_1764312000_123456789-0a1b2c3d4e5f-n10.db", 0, (), 10),
    ("ready_1764312000_123456789-0a1b2c3d4e5f-n10+a1.db", 1, (), 10),
    ("ready_1764312000_123456789-0a1b2c3d4e5f-n10+a3+e5,2,7.db", 3, ((5, 5), (2, 2), (7, 7)), 10),
    ("ready_1764312000_123456789-0a1b2c3d4e5f-n10+a2+e0-9,4.db", 2, ((0, 9), (4, 4)), 10),
    ("ready_1678299439_0dceb957-4fb1-4661-920d-2ae848ac1a5b+a2+e4.db", 2, ((4, 4),), None),
    # A uuid that ends in a1234... is no attempt count: "+" is in no name the original writes.
    ("ready_1678299439_0dceb957-4fb1-4661-920d-a12345678901.db", 0, (), None),
])
def test_attempts_in_names(name, attempts, in_hand, events):
    b = _core.parse_name(name)
    assert (b.state, b.attempts, b.in_hand, b.events) == ("ready", attempts, in_hand, events)


def test_a_name_keeps_the_latest_events_in_hand_and_stays_short(tmp_path):
    produce(tmp_path, list(range(50)), per_file=50)
    folder = queue_dir(tmp_path)
    for k in range(10):
        d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0, max_attempts=0)
        g = d.get()
        for _ in range(k + 1):
            next(g)
        d.roll_back(failed=True)
        d.close()
    (name,) = held_or_waiting(tmp_path)
    b = _core.parse_name(name)
    assert b.attempts == 10 and b.in_hand == ((7, 7), (8, 8), (9, 9))
    assert len(name) < 100


# -- Acceptance 3: crash points at every new step ---------------------------------------------------

def _consume_crashing(root, out, point, after, max_attempts):
    _core.set_crash_point(point, after)
    consumer(root, out, set(), "next", max_attempts)


def _tail_the_batch(root, tail):
    (name,) = held_or_waiting(root)
    os.rename(os.path.join(queue_dir(root), name), os.path.join(queue_dir(root), name[:-3] + tail + ".db"))


def _killed(target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL, p.exitcode


@pytest.mark.parametrize("after", [1, 4])
def test_killed_while_recording_the_event_in_hand(tmp_path, after):
    produce(tmp_path, list(range(10)))
    _tail_the_batch(tmp_path, "+a1")  # a batch that killed a consumer once
    out = tmp_path / "handled"
    out.mkdir()
    _killed(_consume_crashing, str(tmp_path), str(out), "hold", after, 3)
    turbo_queue.recover_folder(queue_dir(tmp_path))
    (name,) = held_or_waiting(tmp_path)
    b = _core.parse_name(name)
    assert (b.attempts, b.in_hand) == (2, ((after - 1, after - 1),))
    assert sorted(set(handled_counts(str(out))) | set(drain_all(tmp_path))) == list(range(10))


@pytest.mark.parametrize("point", ["dead", "delete"])
def test_killed_while_setting_poison_events_aside(tmp_path, point):
    # Killed after the first dead letter is written ("dead") or after the rest was put back
    # ("delete"): the next consumer finishes the job, and no dead letter is written twice.
    produce(tmp_path, list(range(10)))
    _tail_the_batch(tmp_path, "+a3+e2,5")
    out = tmp_path / "handled"
    out.mkdir()
    _killed(_consume_crashing, str(tmp_path), str(out), point, 1, 3)
    turbo_queue.recover_folder(queue_dir(tmp_path))
    rest = drain_all(tmp_path)
    assert dead_events(tmp_path) == [2, 5]
    # Events after the last one in hand are delivered (twice when killed after putting them back).
    assert sorted(set(rest)) == [6, 7, 8, 9]
    assert held_or_waiting(tmp_path) == []


def _requeue_crashing(folder):
    _core.set_crash_point("requeue", 1)
    turbo_queue.requeue(folder, all=True)


def test_killed_while_requeueing(tmp_path):
    produce(tmp_path, list(range(10)))
    _tail_the_batch(tmp_path, "+a3+e4")
    assert drain_all(tmp_path) == [5, 6, 7, 8, 9]
    _killed(_requeue_crashing, queue_dir(tmp_path))
    assert dead_events(tmp_path) == [4]  # still a dead letter: nothing moved
    assert len(turbo_queue.requeue(queue_dir(tmp_path), all=True)) == 1
    assert drain_all(tmp_path) == [4]


# -- Tools ---------------------------------------------------------------------------------------------

def test_dead_shows_bytes_it_cannot_decode_and_requeue_refuses_unknown_names(tmp_path, capsys):
    produce(tmp_path, [b"\xff\xfe not json", b"ok"], serializer="raw")
    _tail_the_batch(tmp_path, "+a3+e0")
    assert drain_all(tmp_path, serializer="raw") == [b"ok"]
    assert cli(["dead", str(tmp_path), "q", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["decoded"] is False and shown["event"] == {"$base64": "//4gbm90IGpzb24="}
    assert cli(["dead", str(tmp_path), "q"]) == 0
    assert "event 0 of ready_" in capsys.readouterr().out
    assert cli(["stats", str(tmp_path), "q"]) == 0
    header = capsys.readouterr().out.split("┡")[0]
    assert header.count("dead") == 2  # its files and its events, shown once there are dead letters
    assert cli(["requeue", str(tmp_path), "q", "dead_nothing.db"]) == 2
    assert "no dead letter 'dead_nothing.db'" in capsys.readouterr().err
    assert cli(["requeue", str(tmp_path), "q"]) == 2
    (letter,) = turbo_queue.dead_letters(queue_dir(tmp_path))
    assert turbo_queue.requeue(queue_dir(tmp_path), [letter]) and dead_events(tmp_path) == []


def test_add_dead_letters_writes_events_straight_to_dead(tmp_path):
    with turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q", max_events_per_file=2) as e:
        e.add("published")
        assert e.add_dead_letters([{"n": i} for i in range(5)]) == 5
    assert dead_events(tmp_path) == sorted(({"n": i} for i in range(5)), key=json.dumps)
    assert drain_all(tmp_path) == ["published"]
    dead = [n for n in os.listdir(queue_dir(tmp_path)) if n.startswith("dead_")]
    assert sum(_core.parse_name(n).events for n in dead) == 5  # batches of max_events_per_file
    for n in dead:
        con = sqlite3.connect(os.path.join(queue_dir(tmp_path), n))
        assert con.execute("SELECT count(*) FROM logs").fetchone() == (_core.parse_name(n).events,)
        con.close()
