"""No event lost beyond SIGKILL: bad events, cleaned lock files, files planted in the folder, other
users. Each numbered case of issue 14 is a class of faults tested here with real processes and files."""

import enum
import hashlib
import json
import multiprocessing as mp
import os
import sqlite3
import stat
import subprocess
import sys
import time
import uuid

import pytest

import turbo_queue
from turbo_queue import _core, _folder
from turbo_queue.cli import main as cli
from helpers import batch_files, drain_all
from hostile import TAMPERINGS, killed_writer, plant_special, tamper_with_lock

ctx = mp.get_context("fork")


def queue_dir(root):
    return os.path.join(str(root), "q")


def produce_raw(root, values, per_file):
    with turbo_queue.enqueue(root_path=str(root), queue_name="q", serializer="raw",
                             max_events_per_file=per_file, max_batch_age=3600) as e:
        e.add_many(values)


def in_child(target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(60)
    assert p.exitcode == 0, f"{target.__name__} exited {p.exitcode}"


def set_aside_values(root):
    """The events of the invalid_ batches that hold one set-aside event each, by name."""
    out = {}
    for name in batch_files(queue_dir(root), "invalid_"):
        con = sqlite3.connect(os.path.join(queue_dir(root), name))
        out[name] = [v for (v,) in con.execute("SELECT log_data FROM logs")]
        con.close()
    return out


# -- 1. A decode failure inside a batch call loses none of the events before it --------------------

class Boom(Exception):
    pass


class PickyJSON:
    """A serializer whose loads fails, with whatever exception type, on the value b'bad'."""

    def __init__(self, exc):
        self.exc = exc

    def dumps(self, value):
        return json.dumps(value).encode()

    def loads(self, data):
        if data == b"bad":
            raise self.exc("refused")
        return json.loads(data)


@pytest.mark.parametrize("serializer", ["json", PickyJSON(KeyError), PickyJSON(RecursionError),
                                        PickyJSON(Boom), PickyJSON(UnicodeDecodeError.__base__)])
@pytest.mark.parametrize("call", ["get_batch", "get_many", "next"])
def test_an_undecodable_event_is_set_aside_and_every_other_is_handed_out(tmp_path, serializer, call, batch_build):
    values = [b"%d" % i for i in range(10)]
    values[5] = b"bad" if not isinstance(serializer, str) else b"not json"
    in_child(produce_raw, tmp_path, values, 100)
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0, serializer=serializer)
    got, errors = [], []
    g = d.get(empty=StopIteration)
    while True:
        try:
            if call == "next":
                event = next(g)
                if event is StopIteration:
                    break
                got.append(event)
                continue
            batch = d.get_batch() if call == "get_batch" else d.get_many(3)
        except turbo_queue.DecodeError as e:
            errors.append(e)
            continue
        if not batch:
            break
        got += batch
    d.close()
    assert got == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert d.total_gets() == 9
    (e,) = errors
    assert e.index == 5 and e.batch.endswith(".db_" + os.path.basename(e.batch).rsplit("_", 1)[1])
    assert "event 5 of batch" in str(e) and os.path.basename(e.set_aside) in str(e)
    assert set_aside_values(tmp_path) == {os.path.basename(e.set_aside): [values[5]]}
    assert batch_files(queue_dir(tmp_path), "ready_") == batch_files(queue_dir(tmp_path), "chosen_") == []


def test_queue_get_many_hands_out_the_events_before_an_undecodable_one(tmp_path):
    in_child(produce_raw, tmp_path, [b"1", b"2", b"\x80 not a pickle", b"4"], 100)
    q = turbo_queue.Queue(tmp_path / "q")
    assert q.get_many(10, timeout=5) == [1, 2]
    with pytest.raises(turbo_queue.DecodeError):
        q.get_many(10, timeout=5)
    assert q.get_many(10, timeout=5) == [4]
    q.close()
    assert len(set_aside_values(tmp_path)) == 1


# -- 2. Deleted or replaced lock files: a live owner is never taken for dead -----------------------

def slow_producer(root, n, ready_path):
    e = turbo_queue.enqueue(root_path=str(root), queue_name="q", max_events_per_file=10**6,
                            max_batch_age=0.3)
    with open(ready_path, "w"):
        pass
    for i in range(n):
        e.add(i)
        time.sleep(0.02)
    e.close()


OUTSIDE_TEXT = b"a file outside the queue folder\n" * 10


def outside_file(tmp_path):
    """A file beside the queue folder, for tamperings that plant a hard link to one."""
    path = tmp_path / "outside.txt"
    if not path.exists():
        path.write_bytes(OUTSIDE_TEXT)
    return str(path)


def tamper_with_locks(folder, how, outside):
    for name in os.listdir(folder):
        if name.startswith(".owner_"):
            tamper_with_lock(os.path.join(folder, name), how, outside)


@pytest.mark.parametrize("how", TAMPERINGS)
def test_a_live_producer_whose_lock_file_is_tampered_with_loses_nothing(tmp_path, how, batch_build):
    started = tmp_path / "started"
    p = ctx.Process(target=slow_producer, args=(tmp_path, 150, str(started)))
    p.start()
    while not started.exists():
        time.sleep(0.01)
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0.05,
                            reclaim_interval=0.05)
    got = []
    g = d.get()
    tampered = 0
    while p.is_alive() or got != list(range(150)):
        if tampered < 5 and os.path.isdir(queue_dir(tmp_path)) and os.listdir(queue_dir(tmp_path)):
            tamper_with_locks(queue_dir(tmp_path), how, outside_file(tmp_path))
            tampered += 1
        event = next(g)
        if event is not None:
            got.append(event)
        elif not p.is_alive() and next(g) is None:
            break
    p.join()
    d.close()
    assert p.exitcode == 0  # every publish of the producer succeeded
    assert got == list(range(150))  # each once, in order: none taken from the live producer
    assert tampered > 0
    assert (tmp_path / "outside.txt").read_bytes() == OUTSIDE_TEXT


def holding_consumer(root, holding, release, out):
    d = turbo_queue.dequeue(root_path=str(root), queue_name="q", wait_timeout=1)
    first = d.get_many(1)
    with open(holding, "w"):
        pass
    while not os.path.exists(release):
        time.sleep(0.01)
    rest = d.get_batch()
    d.close()
    with open(out, "w") as f:
        json.dump(first + rest, f)


@pytest.mark.parametrize("how", ["removed", "replaced by a file"])
def test_a_live_consumers_batch_is_not_taken_when_its_lock_file_is_tampered_with(tmp_path, how):
    with turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q", max_events_per_file=5) as e:
        e.add_many(range(10))
    holding, release, out = tmp_path / "holding", tmp_path / "release", tmp_path / "out.json"
    p = ctx.Process(target=holding_consumer, args=(tmp_path, str(holding), str(release), str(out)))
    p.start()
    while not holding.exists():
        time.sleep(0.01)
    tamper_with_locks(queue_dir(tmp_path), how, outside_file(tmp_path))
    # Many reclaim passes of a second consumer, and startup recovery: the held batch stays held.
    other = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0,
                                reclaim_interval=0.01)
    second = []
    for _ in range(20):
        second += other.get_batch()
        time.sleep(0.01)
        assert turbo_queue.recover_folder(queue_dir(tmp_path))["published"] == 0
    other.close()
    release.touch()
    p.join(30)
    assert p.exitcode == 0
    assert sorted(read_json(out) + second) == list(range(10))  # each exactly once


def test_recovery_removes_the_lock_files_of_dead_owners_and_keeps_live_ones(tmp_path):
    script = ("import os, turbo_queue, sys; e = turbo_queue.enqueue(root_path=sys.argv[1], queue_name='q'); "
              "e.start(); os._exit(0)")
    for _ in range(3):
        subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    live = turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q")
    live.start()
    locks = [n for n in os.listdir(queue_dir(tmp_path)) if n.startswith(".owner_")]
    assert len(locks) == 4
    turbo_queue.recover_folder(queue_dir(tmp_path))
    remaining = [n for n in os.listdir(queue_dir(tmp_path)) if n.startswith(".owner_")]
    assert len(remaining) == 1
    assert _folder.owner_alive(queue_dir(tmp_path), remaining[0][len(".owner_"):-len(".lock")]) is True
    live.close()


# -- 3. add_many: an encode failure of any exception type keeps the events before it ---------------

def deep_list(n):
    v = []
    for _ in range(n):
        v = [v]
    return v


def self_containing():
    d = {"a": 1}
    d["self"] = d
    return d


def failing_generator():
    for i in range(10):
        yield {"ok": i}
    raise Boom("the iterable itself failed")


@pytest.mark.parametrize("serializer, bad, expected", [
    ("json", self_containing(), ValueError),
    ("json", deep_list(100_000), RecursionError),
    ("msgpack", 2 ** 70, OverflowError),
    ("auto", lambda: 0, Exception),          # pickle cannot pickle a lambda
    (PickyJSON(KeyError), {1, 2}, TypeError),
])
def test_add_many_adds_the_events_before_one_that_cannot_be_encoded(tmp_path, serializer, bad, expected):
    e = turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q", serializer=serializer,
                            max_batch_age=3600)
    with pytest.raises(turbo_queue.EncodeError) as err:
        e.add_many([{"ok": i} for i in range(10)] + [bad] + [{"after": 1}])
    assert e.pending() == 10
    assert err.value.index == 10 and err.value.value_type is type(bad)
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)
    assert isinstance(err.value.__cause__, expected)
    assert f"event #10 of add_many" in str(err.value) and type(bad).__name__ in str(err.value)
    e.close()
    got = drain_all(tmp_path, serializer=serializer)
    assert got == [{"ok": i} for i in range(10)]


def test_add_many_adds_the_events_before_the_iterable_itself_fails(tmp_path):
    e = turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q", max_batch_age=3600)
    with pytest.raises(Boom):
        e.add_many(failing_generator())
    assert e.pending() == 10
    e.close()
    assert drain_all(tmp_path) == [{"ok": i} for i in range(10)]


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Point:
    __slots__ = ("x",)


REFUSED = [(1, {"when": __import__("datetime").date(2026, 1, 1)}), {"d": __import__("decimal").Decimal("1.5")},
           {1, 2}, Color.RED, {"c": [Color.RED]}, uuid.uuid4(), {"id": uuid.uuid4()}, Point(),
           __import__("dataclasses").make_dataclass("D", ["a"])(1), b"bytes", bytearray(b"x"),
           {"t": __import__("datetime").datetime(2026, 1, 1)}, [1, 2, 3j], {"f": print}]


@pytest.mark.parametrize("value", REFUSED, ids=lambda v: type(v).__name__)
def test_json_refuses_what_json_dumps_refuses(tmp_path, value):
    with pytest.raises(TypeError):
        json.dumps(value)  # the original's json.dumps refuses it
    e = turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q", max_batch_age=3600)
    with pytest.raises(turbo_queue.EncodeError):
        e.add(value)
    assert e.pending() == 0
    e.close()


def nested(depth):
    v = [0]
    for _ in range(depth):
        v = [v]
    return v


def test_json_takes_what_json_dumps_takes_and_gives_back_what_json_loads_gives(tmp_path):
    class Name(str):
        pass

    values = [Level.HIGH, {"l": Level.HIGH}, (1, 2), {"t": (1, [2, (3,)])}, "x" * 100, Name("n"),
              {"k": Name("v")}, {Name("k"): 1}, {1: "int key", None: 0}, 2**70, [-(2**64)],
              {"x": float("nan"), "y": [float("inf"), None]}, True, {"deep": [[[[[1]]]]]}, nested(300)]
    with turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q") as e:
        e.add_many(values)
    # compared as text: NaN != NaN
    assert [json.dumps(v) for v in drain_all(tmp_path)] == [json.dumps(v) for v in values]


def test_an_enum_json_cannot_say_is_refused_not_turned_into_null(tmp_path):
    class Odd(enum.Enum):
        NAN = float("nan")

    e = turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q", max_batch_age=3600)
    with pytest.raises(turbo_queue.EncodeError, match="Odd"):
        e.add({"v": Odd.NAN, "n": None})
    assert e.pending() == 0
    e.close()


# -- 4, 5. Files planted in the folder: never followed, never block, never changed -----------------

def plant(folder, kind, name, outside):
    path = os.path.join(folder, name)
    plant_special(path, kind, outside)
    return path


def consume_all(root, out):
    d = turbo_queue.dequeue(root_path=str(root), queue_name="q", wait_timeout=0.05, reclaim_interval=0.05)
    got = []
    g = d.get()
    misses = 0
    while misses < 10:
        event = next(g)
        if event is None:
            misses += 1
        else:
            got.append(event)
    d.close()
    with open(out, "w") as f:
        json.dump(got, f)


def outside_database(path, *, wal):
    con = sqlite3.connect(path)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE logs (log_data json)")
    con.executemany("INSERT INTO logs VALUES (?)", [(f'"secret {i}"',) for i in range(100)])
    con.commit()
    return con


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def read_json(path):
    with open(path) as f:
        return json.load(f)


def checksums(folder):
    return {n: hashlib.sha256(read_bytes(os.path.join(folder, n))).hexdigest()
            for n in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, n))}


@pytest.mark.parametrize("kind", ["fifo", "socket", "directory", "symlink"])
@pytest.mark.parametrize("name", ["ready_0_x.db", "loading_1_legacy.db", "chosen_2_legacy.db_0123456789ab",
                                  "loading_1700000000_000000001-0123456789ab.db"])
def test_no_regular_file_under_a_batch_name_is_quarantined_without_blocking_anyone(tmp_path, kind, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    outside_database(str(outside / "app.db"), wal=False).close()
    folder = queue_dir(tmp_path)
    with turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q", max_events_per_file=3) as e:
        e.add_many(range(9))
    before = checksums(str(outside))
    plant(folder, kind, name, str(outside / "app.db"))
    out = tmp_path / "got.json"
    in_child(consume_all, tmp_path, str(out))  # a consumer; every reclaim pass sees the planted file
    assert sorted(read_json(out)) == list(range(9))
    assert turbo_queue.startup(root_path=str(tmp_path), queue_name="q").on_start_cleanup()["published"] == 0
    assert not os.path.lexists(os.path.join(folder, name))
    assert any(n.startswith("invalid_") and n.endswith(name) for n in os.listdir(folder))
    assert checksums(str(outside)) == before
    for command in (["stats", str(tmp_path)], ["stats", str(tmp_path), "q", "--json"],
                    ["peek", str(tmp_path), "q"], ["recover", str(tmp_path), "q"]):
        assert cli(command) == 0


def test_recovery_never_changes_outside_databases_behind_symlinks(tmp_path):
    """Issue 14, case 5: a WAL database with an un-checkpointed -wal and one with a hot journal."""
    outside = tmp_path / "outside"
    outside.mkdir()
    wal = outside_database(str(outside / "wal.db"), wal=True)  # kept open: the -wal stays
    con = sqlite3.connect(str(outside / "journal.db"))
    con.execute("CREATE TABLE t (x)")
    con.executemany("INSERT INTO t VALUES (?)", [(b"x" * 1000,) for _ in range(2000)])
    con.commit()
    con.close()
    # A hot journal: a transaction killed mid-way in another process.
    script = ("import sqlite3, os, sys; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA cache_size=1');"
              "c.execute('BEGIN'); c.execute('DELETE FROM t'); c.execute('INSERT INTO t VALUES (1)');"
              "[c.execute('INSERT INTO t VALUES (?)', (b'y' * 1000,)) for _ in range(500)]; os._exit(0)")
    subprocess.run([sys.executable, "-c", script, str(outside / "journal.db")], check=True)
    assert os.path.getsize(outside / "journal.db-journal") > 0
    folder = tmp_path / "q"
    folder.mkdir()
    os.symlink(outside / "wal.db", folder / "loading_1_legacy.db")
    os.symlink(outside / "journal.db", folder / "chosen_2_legacy.db_0123456789ab")
    before = checksums(str(outside))
    counts = turbo_queue.startup(root_path=str(tmp_path), queue_name="q").on_start_cleanup()
    assert counts["published"] == 0 and counts["quarantined"] == 2
    assert checksums(str(outside)) == before
    assert batch_files(str(folder), "ready_") == []
    wal.close()


def test_foreign_sqlite_files_are_quarantined_and_left_as_they_were(tmp_path):
    folder = tmp_path / "q"
    folder.mkdir()
    outside_database(str(folder / "ready_1_wal.db"), wal=True).close()  # a WAL database
    con = sqlite3.connect(str(folder / "ready_2_view.db"))
    con.execute("CREATE TABLE data (log_data)")
    con.execute("CREATE VIEW logs AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                "SELECT x AS log_data FROM c")  # endless, if anyone read it
    con.commit()
    con.close()
    con = sqlite3.connect(str(folder / "ready_3_other.db"))
    con.execute("CREATE TABLE other (x)")
    con.commit()
    con.close()
    (folder / "ready_4_empty.db").write_bytes(b"")
    (folder / "ready_5_truncated.db").write_bytes(read_bytes(folder / "ready_3_other.db")[:200])
    before = checksums(str(folder))
    with turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q") as e:
        e.add_many(range(5))
    assert drain_all(tmp_path) == list(range(5))
    invalid = sorted(h for n, h in checksums(str(folder)).items() if n.startswith("invalid_"))
    assert invalid == sorted(before.values())  # every foreign file quarantined, byte for byte as it was
    assert batch_files(str(folder), "ready_") == batch_files(str(folder), "chosen_") == []
    assert not [n for n in os.listdir(folder) if n.endswith(("-wal", "-shm", "-journal"))]


# -- 6. Permissions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_mode_sets_the_bits_of_everything_the_queue_creates_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        root = tmp_path / "a" / "b"
        with turbo_queue.enqueue(root_path=str(root), queue_name="q", mode=0o640,
                                 max_events_per_file=2) as e:
            e.add_many(range(5))
            lock = [n for n in os.listdir(root / "q") if n.startswith(".owner_")]
            assert stat.S_IMODE(os.stat(root / "q" / lock[0]).st_mode) == 0o640
        for name in batch_files(str(root / "q")):
            assert stat.S_IMODE(os.stat(root / "q" / name).st_mode) == 0o640, name
        for folder in (tmp_path / "a", root, root / "q"):
            assert stat.S_IMODE(os.stat(folder).st_mode) == 0o750, folder
    finally:
        os.umask(old)


@pytest.mark.parametrize("value", [0o1000, -1, "0o600", 1.5, True])
def test_mode_is_checked_and_named(tmp_path, value):
    with pytest.raises(ValueError, match="mode"):
        turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q", mode=value)


def write_as_nobody(root):
    os.setgid(65534)
    os.setuid(65534)
    with turbo_queue.enqueue(root_path=str(root), queue_name="q", serializer="pickle") as e:
        e.add_many([{"n": 1}, {"n": 2}])


@pytest.fixture
def shared_root():
    """A folder that another user can reach (pytest's own are private to their owner)."""
    import shutil
    import tempfile

    root = tempfile.mkdtemp(prefix="tq-shared-")
    os.chmod(root, 0o777)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="writing as another user needs root")
def test_refuse_foreign_pickle_sets_aside_what_another_user_pickled(shared_root):
    tmp_path = shared_root
    os.mkdir(os.path.join(tmp_path, "q"), 0o777)
    os.chmod(os.path.join(tmp_path, "q"), 0o777)
    in_child(write_as_nobody, tmp_path)
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", serializer="pickle",
                            wait_timeout=0, refuse_foreign_pickle=True)
    with pytest.raises(turbo_queue.DecodeError, match="another user"):
        d.get_batch()
    with pytest.raises(turbo_queue.DecodeError):
        d.get_batch()
    assert d.get_batch() == []
    d.close()
    assert len(set_aside_values(tmp_path)) == 2


# -- 7. roll_back keeps the batch's place for the consumer that rolled it back --------------------

@pytest.mark.parametrize("how", ["roll_back", "with block"])
def test_roll_back_keeps_the_place_for_the_same_consumer(tmp_path, how):
    in_child(produce_json, tmp_path, list(range(9)), 3)
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0)
    if how == "roll_back":
        assert d.get_many(2) == [0, 1]
        assert d.roll_back()
    else:
        with pytest.raises(Boom):
            with d:
                assert d.get_many(2) == [0, 1]
                raise Boom()
        d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0)
    g = d.get()
    assert [next(g) for _ in range(9)] == list(range(9))
    d.close()


def produce_json(root, values, per_file):
    with turbo_queue.enqueue(root_path=str(root), queue_name="q", max_events_per_file=per_file) as e:
        e.add_many(values)


# -- 8. drain: an undecodable event is set aside with a message, never a crash loop -----------------

def test_drain_sets_aside_what_it_cannot_decode_and_says_where(tmp_path, capsys):
    values = [b'{"n": %d}' % i for i in range(6)]
    values[2] = b"\xff not json"
    in_child(produce_raw, tmp_path, values, 3)
    out = tmp_path / "out.jsonl"
    assert cli(["drain", str(tmp_path), "q", "--to", str(out)]) == 2
    err = capsys.readouterr().err
    assert "event 2 of" in err and "invalid_" in err and "--serializer raw" in err
    with open(out) as f:
        assert [json.loads(line)["n"] for line in f] == [0, 1, 3, 4, 5]
    assert cli(["drain", str(tmp_path), "q", "--to", str(out)]) == 0  # nothing left to trip on
    assert list(set_aside_values(tmp_path).values()) == [[values[2]]]


# -- 9. The smaller items ---------------------------------------------------------------------------

@pytest.mark.parametrize("timeout", [float("nan"), -1, "1"])
def test_a_timeout_that_is_no_number_of_seconds_is_refused(tmp_path, timeout):
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q")
    with pytest.raises(ValueError, match="timeout"):
        d.get_many(5, timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        d.get_batch(timeout=timeout)
    d.close()


def test_queue_get_many_of_zero_returns_nothing(tmp_path):
    q = turbo_queue.Queue(tmp_path / "q")
    q.put(1)
    assert q.get_many(0) == []
    with pytest.raises(ValueError):
        q.get_many(-1)
    assert q.get(timeout=5) == 1
    q.close()


def test_close_deletes_a_fully_read_batch_without_auto_cleanup(tmp_path):
    with turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q") as e:
        e.add_many(range(3))
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0, auto_cleanup=False)
    assert d.get_batch() == [0, 1, 2]
    assert d.get_batch() == []  # exhausted; held until clean_up() or close()
    d.close()
    assert batch_files(queue_dir(tmp_path)) == []


def test_a_closed_dequeue_refuses_to_work(tmp_path):
    with turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q") as e:
        e.add_many(range(3))
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0)
    d.close()
    for call in (lambda: d.get_batch(), lambda: d.get_many(1), lambda: next(d.get())):
        with pytest.raises(ValueError, match="closed"):
            call()
    assert drain_all(tmp_path) == [0, 1, 2]


def private_queue_then_sigterm(conn):
    q = turbo_queue.Queue()
    q.put(1)
    conn.send(q._folder)
    time.sleep(60)


def test_a_private_queue_folder_of_a_killed_creator_is_removed_by_the_next(tmp_path):
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=private_queue_then_sigterm, args=(child,))
        p.start()
        folder = parent.recv()
        assert os.path.isdir(folder)
        os.kill(p.pid, sig)
        p.join()
        assert os.path.isdir(folder)  # no exit handler ran
        q = turbo_queue.Queue()
        assert not os.path.exists(folder)
        q.close()


@pytest.mark.parametrize("setting, value, says", [
    ("queue_name", "q" * 256, "at most 255"),
    ("queue_name", "bad\udc80\ud800", "cannot be a file name"),
    ("root_path", "bad\ud800", "cannot be a file name"),
])
def test_names_no_file_system_takes_are_refused_naming_the_setting(tmp_path, setting, value, says):
    with pytest.raises(ValueError, match=says) as err:
        turbo_queue.enqueue(**{"root_path": str(tmp_path), "queue_name": "q", setting: value})
    assert setting in str(err.value)


def test_a_root_path_that_is_a_file_is_refused_at_start_naming_it(tmp_path):
    (tmp_path / "file").write_text("x")
    for cls in (turbo_queue.enqueue, turbo_queue.dequeue):
        q = cls(root_path=str(tmp_path / "file"), queue_name="q")
        with pytest.raises(ValueError, match="not a folder"):
            q.start() if cls is turbo_queue.enqueue else q.get_batch()


def test_a_path_too_long_for_sqlite_is_refused_at_start_naming_the_limit(tmp_path):
    deep = tmp_path
    while len(str(deep)) < 600:
        deep = deep / ("d" * 100)
    e = turbo_queue.enqueue(root_path=str(deep), queue_name="q")
    with pytest.raises(ValueError, match="at most 512 bytes"):
        e.start()
    assert not (deep / "q").exists()
    # Under the limit works.
    ok = tmp_path
    while len(str(ok)) < 350:
        ok = ok / ("x" * 50)
    with turbo_queue.enqueue(root_path=str(ok), queue_name="q") as e:
        e.add(1)
    assert drain_all(ok) == [1]


@pytest.mark.parametrize("table, recovered", [("other", False), ("logs", True)])
def test_a_hot_journal_is_rolled_back_only_in_a_batch(tmp_path, table, recovered):
    folder = tmp_path / "q"
    folder.mkdir()
    path = folder / "loading_1_legacy.db"
    killed_writer(str(path), table, "journal")
    assert os.path.getsize(str(path) + "-journal") > 0
    before = checksums(str(folder))
    counts = turbo_queue.startup(root_path=str(tmp_path), queue_name="q").on_start_cleanup()
    if recovered:  # a batch by its schema: rolled back to its last commit and published
        assert counts["published"] == 1
        assert drain_all(tmp_path) == [f"kept {i}" for i in range(2000)]
    else:  # a foreign database: quarantined as it was, its journal untouched
        assert counts["quarantined"] == 1
        after = checksums(str(folder))
        assert after["invalid_loading_1_legacy.db"] == before["loading_1_legacy.db"]
        assert after["loading_1_legacy.db-journal"] == before["loading_1_legacy.db-journal"]


def start_and_add(root, go):
    go.wait(10)
    with turbo_queue.enqueue(root_path=root, queue_name="q") as e:
        e.add(os.getpid())


def test_many_processes_making_the_same_new_folders_at_once_all_succeed(tmp_path):
    root = str(tmp_path / "a" / "b" / "c")
    go = ctx.Event()
    procs = [ctx.Process(target=start_and_add, args=(root, go)) for _ in range(12)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 12  # none took another's fresh folder for a file
    assert sorted(drain_all(root)) == sorted(p.pid for p in procs)


def fork_a_long_lived_child_then_die(root, child_pid_path):
    d = turbo_queue.dequeue(root_path=root, queue_name="q", wait_timeout=0)
    assert d.get_many(1) == [0]  # holds the batch
    pid = os.fork()
    if pid == 0:  # the child lives on, doing nothing with the queue
        time.sleep(30)
        os._exit(0)
    with open(child_pid_path, "w") as f:
        f.write(str(pid))
    os._exit(0)  # the parent dies holding the batch (no cleanup runs)


def test_a_forked_child_does_not_keep_its_dead_parents_batch_locked(tmp_path):
    import signal

    with turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q") as e:
        e.add_many(range(3))
    pid_path = str(tmp_path / "child.pid")
    in_child(fork_a_long_lived_child_then_die, str(tmp_path), pid_path)
    with open(pid_path) as f:
        child = int(f.read())
    try:
        assert turbo_queue.recover_folder(queue_dir(tmp_path))["published"] == 1
        assert drain_all(tmp_path) == [0, 1, 2]
    finally:
        os.kill(child, signal.SIGKILL)
