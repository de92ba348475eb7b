"""Single-process behaviour of Enqueue/Dequeue: order, batch life cycle, settings, errors."""

import logging
from contextlib import closing
import os
import time

import pytest

import turbo_queue
from helpers import batch_files, drain_all, run_script


def producer(tmp_path, **kw):
    kw.setdefault("max_events_per_file", 3)
    return turbo_queue.enqueue(root_path=str(tmp_path), queue_name="q", **kw)


def consumer(tmp_path, **kw):
    kw.setdefault("wait_timeout", 0)
    return turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", **kw)


def test_spellings_name_the_same_classes():
    assert turbo_queue.enqueue is turbo_queue.Enqueue
    assert turbo_queue.dequeue is turbo_queue.Dequeue
    assert turbo_queue.startup is turbo_queue.Startup


def test_fifo_across_batches_and_falsy_events(tmp_path):
    events = [{}, 0, "", [], False, 1, 2, 3, {"a": 0}, 0.0]
    with producer(tmp_path) as e:
        for ev in events:
            e.add(ev)
    g = consumer(tmp_path).get()
    assert [next(g) for _ in events] == events
    assert next(g) is None
    assert next(g) is None  # an endless generator: it keeps looking


def test_none_events_with_a_sentinel(tmp_path):
    with producer(tmp_path) as e:
        e.add_many([None, None])
    empty = object()
    g = consumer(tmp_path).get(empty)
    assert [next(g), next(g), next(g)] == [None, None, empty]


def test_batch_is_deleted_only_when_the_next_event_is_asked_for(tmp_path):
    with producer(tmp_path) as e:
        e.add_many([1, 2, 3, 4])
    folder = tmp_path / "q"
    assert len(batch_files(folder, "ready_")) == 2
    d = consumer(tmp_path)
    g = d.get()
    assert [next(g), next(g), next(g)] == [1, 2, 3]
    held = batch_files(folder, "chosen_")
    assert len(held) == 1 and held[0].startswith("chosen_")  # still held after its last event
    assert next(g) == 4
    assert held[0] not in os.listdir(folder)  # deleted once the 4th was asked for
    assert next(g) is None
    assert batch_files(folder) == []
    assert d.total_gets() == 4 and d.total_batch() == 2


def test_get_many_never_spans_two_batches(tmp_path):
    with producer(tmp_path) as e:
        e.add_many(range(7))
    d = consumer(tmp_path)
    assert d.get_many(10) == [0, 1, 2]
    assert d.get_many(2) == [3, 4]
    assert d.get_many(2) == [5]
    assert d.get_batch() == [6]
    assert d.get_batch() == []


def test_roll_back_keeps_the_batch_place_and_redelivers(tmp_path):
    with producer(tmp_path) as e:
        e.add_many(range(6))
    folder = tmp_path / "q"
    first = batch_files(folder, "ready_")[0]
    d = consumer(tmp_path)
    assert d.roll_back() is False  # nothing held: no crash (original defect 8)
    assert d.get_many(2) == [0, 1]
    assert d.roll_back() is True
    assert batch_files(folder, "ready_")[0] == first
    assert consumer(tmp_path).get_batch() == [0, 1, 2]


def test_clean_up_and_auto_cleanup_false(tmp_path):
    with producer(tmp_path) as e:
        e.add_many(range(6))
    d = consumer(tmp_path, auto_cleanup=False)
    g = d.get()
    assert [next(g) for _ in range(3)] == [0, 1, 2]
    assert next(g) is None and next(g) is None  # stays on the exhausted batch
    assert len(batch_files(tmp_path / "q", "chosen_")) == 1
    d.clean_up()
    assert batch_files(tmp_path / "q", "chosen_") == []
    assert next(g) == 3
    d.clean_up()  # drops the rest of the batch, as asked
    d.clean_up()  # nothing held: no crash
    assert next(g) is None


def test_context_manager_exit_with_error_gives_the_batch_back(tmp_path):
    with producer(tmp_path) as e:
        e.add_many(range(3))
    with pytest.raises(RuntimeError):
        with consumer(tmp_path) as d:
            assert d.get_many(1) == [0]
            raise RuntimeError("processing failed")
    # Back whole, with one failed attempt and the event in hand remembered (see test_poison.py).
    (name,) = batch_files(tmp_path / "q", "ready_")
    assert "+a1+e0" in name
    assert consumer(tmp_path).get_batch() == [0, 1, 2]


def test_close_publishes_and_is_idempotent(tmp_path):
    e = producer(tmp_path, max_events_per_file=100)
    e.add_many([1, 2])
    assert batch_files(tmp_path / "q", "ready_") == []
    assert e.pending() == 2
    e.close()
    e.close()
    assert e.closed and len(batch_files(tmp_path / "q", "ready_")) == 1
    with pytest.raises(ValueError, match="closed"):
        e.add(3)


def test_flush_returns_after_publishing(tmp_path):
    e = producer(tmp_path, max_events_per_file=100)
    assert e.flush() == 0
    e.add_many(range(5))
    assert e.flush() == 5
    assert len(batch_files(tmp_path / "q", "ready_")) == 1
    assert e.events_published == 5 and e.batches_published == 1
    e.close()


def test_page_size_follows_the_batch_size_and_every_batch_reads_back(tmp_path, batch_build):
    # Large pages for large batches; after a batch of a few events, small pages (cheaper to create).
    import sqlite3
    e = producer(tmp_path, max_events_per_file=10_000)
    sizes = [3, 300, 2, 1, 5000, 4]
    for n in sizes:
        e.add_many(range(n))
        e.flush()
    e.close()
    pages = []
    for name in batch_files(tmp_path / "q", "ready_"):
        with closing(sqlite3.connect(tmp_path / "q" / name)) as db:  # (with alone never closes)
            pages.append(db.execute("PRAGMA page_size").fetchone()[0])
    assert pages == [65536, 4096, 65536, 4096, 4096, 65536]
    assert drain_all(tmp_path) == [i for n in sizes for i in range(n)]


def test_a_batch_built_in_memory_leaves_only_its_empty_loading_file(tmp_path, batch_build, monkeypatch):
    # While it fills, the folder shows the batch being loaded, as in the original, and nothing else
    # is created: no journal beside it, nothing in the working directory (memdb hands every file but
    # the database itself to the default VFS, so a journal left in DELETE mode would land there).
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    e = producer(tmp_path, max_events_per_file=1000)
    e.add_many(range(500))
    loading = batch_files(tmp_path / "q", "loading_")
    assert len(loading) == 1 and batch_files(tmp_path / "q") == loading
    if batch_build == "memory":  # (built in its file, a batch has a rollback journal beside it)
        assert [n for n in os.listdir(tmp_path / "q") if not n.startswith(".owner_")] == loading
        assert os.path.getsize(tmp_path / "q" / loading[0]) == 0  # written when published
    assert e.flush() == 500
    assert os.listdir(cwd) == []
    (ready,) = batch_files(tmp_path / "q")
    import sqlite3
    with closing(sqlite3.connect(tmp_path / "q" / ready)) as db:  # (with alone never closes)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # an ordinary file
    e.close()
    assert drain_all(tmp_path) == list(range(500))


def test_a_batch_in_memory_is_published_at_64_mib_whatever_max_events_per_file(tmp_path, batch_build):
    e = producer(tmp_path, max_events_per_file=1000, serializer="raw")
    big = b"x" * (1 << 20)
    for i in range(70):
        e.add(b"%04d" % i + big)
    if batch_build == "memory":
        assert e.batches_published == 1 and e.events_published == 64  # 64 x (1 MiB + 4 bytes)
    else:  # built in its file, a batch is bounded by max_events_per_file alone
        assert e.batches_published == 0
    e.close()
    got = drain_all(tmp_path, serializer="raw")
    assert [int(x[:4]) for x in got] == list(range(70)) and all(x[4:] == big for x in got)


def test_interpreter_exit_publishes_the_open_batch(tmp_path):
    run_script(f"""
        import turbo_queue
        e = turbo_queue.enqueue(root_path={str(tmp_path)!r}, queue_name="q", max_events_per_file=100)
        e.add_many(range(10))
    """)
    assert consumer(tmp_path).get_batch() == list(range(10))


def test_names_sort_in_publish_order(tmp_path):
    with producer(tmp_path, max_events_per_file=1) as e:
        e.add_many(range(50))  # many batches within one second
    names = batch_files(tmp_path / "q", "ready_")
    assert len(names) == 50
    for n in names:
        assert n.startswith("ready_") and n.endswith(".db") and n.split("_")[1].isdigit()
    assert consumer(tmp_path).get_many(100) == [0]
    assert drain_all(tmp_path) == list(range(1, 50))


def test_max_batch_age_accepts_fractions_and_publishes_without_a_call(tmp_path):
    e = producer(tmp_path, max_events_per_file=1000, max_batch_age=0.05)
    e.add("x")
    d = consumer(tmp_path, wait_timeout=5)
    assert d.get_many(10) == ["x"]  # woken by the publish, well before 5 s
    assert e.batches_published == 1
    e.close()


def test_max_batch_age_lowered_while_a_batch_is_open_applies_to_it(tmp_path):
    e = producer(tmp_path, max_events_per_file=1000, max_batch_age=3600)
    e.add("x")
    e.max_batch_age = 0.05  # the age thread sleeps until the hour is up unless it is told
    d = consumer(tmp_path, wait_timeout=10)
    assert d.get_many(10) == ["x"]
    assert e.batches_published == 1
    e.close()


def test_a_batch_opened_while_the_age_thread_sleeps_is_published_in_time(tmp_path):
    # The first batch is published full at once; the second, partial one opens while the age thread
    # sleeps until the first one's deadline, which is earlier: it must still go out by its own.
    e = producer(tmp_path, max_events_per_file=3, max_batch_age=0.2)
    e.add_many(["a", "b", "c", "d"])
    d = consumer(tmp_path, wait_timeout=10)
    assert d.get_many(10) == ["a", "b", "c"]
    assert d.get_many(10) == ["d"]  # published by the age thread, no call from us
    assert e.batches_published == 2
    e.close()


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "a\\b", "a\0b", 5, None.__class__])
def test_bad_queue_names_raise_before_touching_files(tmp_path, name):
    with pytest.raises(ValueError, match="queue_name"):
        turbo_queue.enqueue(root_path=str(tmp_path), queue_name=name)
    e = turbo_queue.dequeue()
    with pytest.raises(ValueError, match="queue_name"):
        e.queue_name = name
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("prop, bad", [
    ("max_ready_files", 0), ("max_ready_files", "5"), ("max_ready_files", 2.0), ("max_ready_files", True),
    ("max_events_per_file", 0), ("max_events_per_file", None.__class__),
    ("max_batch_age", 0), ("max_batch_age", -1), ("max_batch_age", "1"), ("max_batch_age", True),
    ("root_path", 5), ("root_path", ""), ("enqueue_active", 1), ("serializer", "yaml"),
    ("durability", "fsync"), ("num_loaders", 0), ("drop_overflow", "no"),
])
def test_setters_validate_and_name_the_property(prop, bad):
    e = turbo_queue.enqueue()
    with pytest.raises(ValueError, match=prop):
        setattr(e, prop, bad)


def test_dequeue_settings_validate():
    d = turbo_queue.dequeue(3)
    assert d.proc_num == 3
    for prop, bad in [("auto_cleanup", 1), ("wait_timeout", -1), ("reclaim_interval", 0)]:
        with pytest.raises(ValueError, match=prop):
            setattr(d, prop, bad)


def test_original_defaults_and_extra_attributes():
    e = turbo_queue.enqueue()
    assert (e.queue_name, e.root_path, e.max_ready_files, e.max_events_per_file, e.max_batch_age) == (
        "example_queue_name", "/dc_data", 1, 80000, 10)
    e.my_tag = "kept"  # the original's objects took arbitrary attributes
    assert e.my_tag == "kept"


def test_backpressure_in_process(tmp_path):
    e = producer(tmp_path, max_ready_files=2, max_events_per_file=2)
    e.update_enqueue_active_state()
    assert e.enqueue_active is True
    e.add_many(range(4))  # two ready batches
    e.update_enqueue_active_state()
    assert e.enqueue_active is False
    d = consumer(tmp_path)
    assert d.get_batch() == [0, 1]
    d.get_batch()
    deadline = time.monotonic() + 5
    while not e.enqueue_active and time.monotonic() < deadline:
        time.sleep(0.003)
        e.update_enqueue_active_state()
    assert e.enqueue_active is True
    e.close()


def test_permission_denied_names_the_folder(tmp_path):
    # CI runs as root, where permissions are not enforced: the child drops to 'nobody' after
    # making a folder it may not write (the pytest tmp_path is not reachable for 'nobody').
    proc = run_script("""
        import os, sys, tempfile, shutil
        import turbo_queue
        locked = tempfile.mkdtemp(prefix="tq-perm-")
        os.chmod(locked, 0o555)  # nobody may create the queue folder in it
        try:
            if os.geteuid() == 0:
                os.setegid(65534); os.seteuid(65534)
            try:
                turbo_queue.enqueue(root_path=locked, queue_name="q").add("x")
            except PermissionError as err:
                sys.stderr.write("RESULT " + locked + " " + str(err))
            else:
                sys.stderr.write("RESULT " + locked + " no error")
        finally:
            if os.getuid() == 0:
                os.seteuid(0); os.setegid(0)
            os.chmod(locked, 0o755)
            shutil.rmtree(locked)
    """)
    locked, message = proc.stderr.split("RESULT ", 1)[1].split(" ", 1)
    assert "no error" not in message
    assert os.path.join(locked, "q") in message


def test_logging_goes_to_the_turbo_queue_logger(tmp_path, caplog, capsys):
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "ready_1_garbage.db").write_bytes(b"this is not sqlite" * 100)
    with caplog.at_level(logging.INFO, logger="turbo_queue"):
        assert consumer(tmp_path).get_batch() == []
    assert any(r.name == "turbo_queue" and "quarantined" in r.getMessage() for r in caplog.records)
    assert capsys.readouterr() == ("", "")
    assert batch_files(tmp_path / "q") == ["invalid_chosen_1_garbage.db_" + batch_files(tmp_path / "q")[0].rsplit("_", 1)[1]]


def test_event_over_the_sqlite_limit_is_refused(tmp_path, monkeypatch):
    e = producer(tmp_path)
    limit = turbo_queue._core.MAX_EVENT_BYTES if hasattr(turbo_queue._core, "MAX_EVENT_BYTES") else 10**9
    with pytest.raises(turbo_queue.EventTooLargeError, match="nothing was written"):
        e.add(b"x" * (limit + 1) if e.serializer == "raw" else "x" * (limit + 1))
    assert e.pending() == 0
    e.close()


def test_a_waiting_get_sleeps_instead_of_spinning(tmp_path):
    d = consumer(tmp_path, wait_timeout=0.05)
    g = d.get()
    t0, cpu0 = time.monotonic(), time.process_time()
    calls = 0
    while time.monotonic() - t0 < 1.0:
        assert next(g) is None
        calls += 1
    cpu = time.process_time() - cpu0
    assert calls >= 2  # it did wait and return None repeatedly
    # A spinning loop would use about one full core; a sleeping one a small fraction of that.
    assert cpu < 0.1 * (time.monotonic() - t0)


def test_a_waiting_get_wakes_on_publish_without_polling_interval(tmp_path):
    d = consumer(tmp_path, wait_timeout=30)
    e = producer(tmp_path, max_events_per_file=1)
    import threading
    threading.Timer(0.2, e.add, args=("late",)).start()
    assert d.get_many(1) == ["late"]  # returned long before the 30 s wait ran out
    e.close()


def test_a_dequeue_used_by_two_threads_at_once_raises_instead_of_crashing(tmp_path):
    import threading

    d = consumer(tmp_path, wait_timeout=30)  # the first thread waits in get() with the GIL released
    got = []
    waiting = threading.Thread(target=lambda: got.extend(d.get_many(1)))
    waiting.start()
    error = None
    deadline = time.monotonic() + 20
    while error is None and time.monotonic() < deadline:
        try:
            d.get_many(1, timeout=0)  # succeeds (empty) until the other thread is inside its wait
        except RuntimeError as e:
            error = str(e)
        time.sleep(0.001)
    with producer(tmp_path) as e:  # release the waiting thread
        e.add("wake")
    waiting.join(30)
    assert error is not None and "another thread" in error
    assert got == ["wake"]
    assert d.get_many(1, timeout=0) == []  # usable again once the other call returned


def test_queue_get_from_many_threads(tmp_path):
    import threading

    q = turbo_queue.Queue()
    q.put_many(range(3000))
    got, lock = [], threading.Lock()

    def worker():
        while True:
            try:
                item = q.get(timeout=0.5)
            except Exception:
                return
            with lock:
                got.append(item)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(3000))
    q.close()
