"""The protocol layer's public face: the name grammar (one parser for recovery, stats and tools),
reading batches through the core's own SQLite, and the settings that replaced private hooks."""

import json
import os
import sqlite3
import threading
import time

import pytest

import turbo_queue
from turbo_queue import _core, _folder
from turbo_queue.cli import main as cli
from helpers import batch_files, drain_all


def producer(root, **kw):
    kw.setdefault("max_batch_age", 3600)
    return turbo_queue.enqueue(root_path=str(root), queue_name="q", **kw)


def legacy_batch(path, values):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE logs (log_data json)")
    con.executemany("INSERT INTO logs VALUES (?)", [(json.dumps(v),) for v in values])
    con.commit()
    con.close()


def test_names_a_producer_and_a_consumer_write_parse_back(tmp_path):
    with producer(tmp_path, max_events_per_file=3) as e:
        e.add_many(range(7))
    ready = [_core.parse_name(n) for n in batch_files(tmp_path / "q")]
    assert [(b.state, b.events) for b in ready] == [("ready", 3), ("ready", 3), ("ready", 1)]
    assert all(b.owner is None and b.epoch > 1_700_000_000 for b in ready)
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0)
    assert d.get_many(1) == [0]
    chosen = _core.parse_name(os.path.basename(d.batch_path))
    assert chosen.state == "chosen" and chosen.owner is not None and len(chosen.owner) == 12
    # The claimant's lock file is the name the protocol gives its token, and it is held.
    assert os.path.exists(tmp_path / "q" / _core.owner_lock_name(chosen.owner))
    d.close()


@pytest.mark.parametrize("name, state, owner", [
    ("loading_1700000000_000000001-0123456789ab.db", "loading", "0123456789ab"),
    ("loading_1700000000_3f2a.db", "loading", None),                   # the pure-Python version's
    ("ready_1700000000_3f2a.db", "ready", None),
    ("chosen_1700000000_000000001-aaaaaaaaaaaa-n5.db_0123456789ab", "chosen", "0123456789ab"),
    ("chosen_1700000000_3f2a.db_7", "chosen", None),                   # 0.5.2 with a proc_num
    ("invalid_ready_1_x.db", "invalid", None),
    ("load_1700000000_x.db", "legacy", None),
    ("unload_1700000000_x.db", "legacy", None),
    ("avail_1700000000_x.db", "legacy", None),
    ("assigned_1700000000_x.db", "legacy", None),
    ("ready_1700000000_x.db_temp_hold", "legacy", None),                # 0.5.2's claim in progress
])
def test_every_state_and_legacy_name_parses(name, state, owner):
    b = _core.parse_name(name)
    assert (b.state, b.owner, b.name) == (state, owner, name)
    assert b.state in _core.STATES
    assert _core.parse_name(os.fsencode(name)).state == state


@pytest.mark.parametrize("name", [".owner_0123456789ab.lock", "ready_1_x.db-journal",
                                  "loading_1_x.db-wal", "chosen_1_x.db-shm", "ready_1_x.txt",
                                  "notes.txt", "READY_1_x.db", ""])
def test_names_that_are_no_batch_parse_as_none(name):
    assert _core.parse_name(name) is None


def test_stats_and_recovery_agree_on_legacy_names(tmp_path):
    folder = tmp_path / "q"
    folder.mkdir()
    legacy_batch(folder / "avail_1700000000_a.db", [1, 2])
    legacy_batch(folder / "assigned_1700000001_b.db", [3])
    legacy_batch(folder / "ready_1700000002_c.db_temp_hold", [4])
    assert cli(["stats", str(tmp_path), "q", "--json"]) == 0
    stats = _folder.queue_stats(str(folder))
    assert stats.files["legacy"] == 3 and stats.files["ready"] == 0
    counts = turbo_queue.startup(root_path=str(tmp_path), queue_name="q").on_start_cleanup()
    assert counts["published"] == 3
    stats = _folder.queue_stats(str(folder))
    assert stats.files["legacy"] == 0 and stats.files["ready"] == 3
    assert sorted(drain_all(tmp_path)) == [1, 2, 3, 4]


def test_read_batch_gives_what_a_consumer_gets_and_changes_nothing(tmp_path):
    with producer(tmp_path, serializer="raw", max_events_per_file=2000) as e:
        e.add_many([b"%d" % i for i in range(1500)])
    (name,) = batch_files(tmp_path / "q")
    path = tmp_path / "q" / name
    before = path.read_bytes()
    assert _core.read_batch(str(path)) == [b"%d" % i for i in range(1500)]  # past one chunk
    assert _core.read_batch(path, 3) == [b"0", b"1", b"2"]
    assert _core.count_batch_rows(path) == 1500
    assert path.read_bytes() == before and batch_files(tmp_path / "q") == [name]


def test_read_batch_of_numbers_the_pure_python_version_stored(tmp_path):
    legacy_batch(tmp_path / "b.db", [7, 2.5, {"a": 1}])
    assert _core.read_batch(tmp_path / "b.db") == [b"7", b"2.5", b'{"a": 1}']


@pytest.mark.parametrize("content", [b"", b"not sqlite at all" * 100, b"SQLite format 3\0" + b"\0" * 200])
def test_read_batch_of_a_file_that_is_no_batch_raises_a_turbo_queue_error(tmp_path, content):
    (tmp_path / "b.db").write_bytes(content)
    with pytest.raises(turbo_queue.SQLiteError) as err:
        _core.read_batch(tmp_path / "b.db")
    assert "b.db" in str(err.value)


def test_read_batch_of_a_missing_file_raises_an_os_error_naming_it(tmp_path):
    with pytest.raises(OSError) as err:
        _core.read_batch(tmp_path / "missing.db")
    assert "missing.db" in str(err.value)


def age_threads():
    return [t for t in threading.enumerate() if t.name == "turbo_queue-batch-age"]


def test_infinite_max_batch_age_starts_no_thread_and_publishes_only_when_asked(tmp_path):
    before = len(age_threads())
    e = producer(tmp_path, max_batch_age=float("inf"), max_events_per_file=10)
    e.add(1)
    assert len(age_threads()) == before
    assert batch_files(tmp_path / "q", "ready_") == []
    assert e.flush() == 1
    e.add_many(range(10))  # full: published at once
    assert len(batch_files(tmp_path / "q", "ready_")) == 2
    e.close()
    # A finite age does start one.
    e = producer(tmp_path, max_batch_age=0.05)
    e.add(1)
    assert len(age_threads()) == before + 1
    e.close()


@pytest.mark.parametrize("setting, value", [("max_linger", -1), ("max_linger", float("inf")),
                                            ("max_linger", "1"), ("linger_rate", -5),
                                            ("linger_rate", float("nan")), ("linger_rate", "x")])
def test_linger_settings_are_checked_and_named(tmp_path, setting, value):
    with pytest.raises(ValueError, match=setting):
        producer(tmp_path, **{setting: value})


def test_linger_holds_an_aged_batch_while_published_batches_wait(tmp_path):
    e = producer(tmp_path, max_batch_age=0.01, max_linger=3600)
    e.add(0)
    assert e.flush() == 1  # one published batch waits, unclaimed
    e.add(1)
    # Past max_batch_age the open batch keeps filling: consumers are behind.
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        assert e.pending() == 1
        time.sleep(0.05)
    assert (e.max_linger, e.linger_rate) == (3600, 0)
    e.close()
    assert drain_all(tmp_path) == [0, 1]


def test_keep_delivered_close_requeues_only_what_was_not_handed_out_in_its_place(tmp_path):
    with producer(tmp_path, max_events_per_file=5) as e:
        e.add_many(range(10))
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0,
                            keep_delivered=True)
    assert d.keep_delivered is True
    assert d.get_many(2) == [0, 1]
    d.close()
    # The rest of the first batch comes before the second batch, and 0, 1 never again.
    assert drain_all(tmp_path) == [2, 3, 4, 5, 6, 7, 8, 9]


def test_without_keep_delivered_close_gives_the_whole_batch_back(tmp_path):
    with producer(tmp_path, max_events_per_file=5) as e:
        e.add_many(range(10))
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0)
    assert d.keep_delivered is False
    assert d.get_many(2) == [0, 1]
    d.close()
    assert drain_all(tmp_path) == list(range(10))


def test_keep_delivered_must_be_a_bool(tmp_path):
    with pytest.raises(ValueError, match="keep_delivered"):
        turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", keep_delivered=1)
