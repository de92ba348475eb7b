"""Bad batches, a full file system, permissions: clear errors, nothing lost, nothing half-published."""

import errno
import os
import sqlite3
import subprocess

import pytest

import turbo_queue
from helpers import batch_files, drain_all, run_script


def publish(root, events, per_file, serializer="json"):
    with turbo_queue.enqueue(root_path=str(root), queue_name="q", max_events_per_file=per_file,
                             serializer=serializer) as e:
        e.add_many(events)


def drain(root, serializer="json"):
    return drain_all(root, serializer=serializer)


def sabotage(path, how):
    if how == "zero-byte":
        open(path, "wb").close()
    elif how == "garbage":
        with open(path, "wb") as f:
            f.write(os.urandom(9000))
    elif how == "truncated":
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 3)
    elif how == "corrupt":
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.seek(size // 2)  # inside the table's pages
            f.write(b"\xff" * 40000)
    elif how == "wrong-schema":
        os.unlink(path)
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE other (x)")
        con.commit()
        con.close()


@pytest.mark.parametrize("how", ["zero-byte", "garbage", "truncated", "corrupt", "wrong-schema"])
def test_unreadable_batches_are_quarantined_and_the_consumer_moves_on(tmp_path, how, caplog):
    publish(tmp_path, [f"{i:06d}" + "x" * 200 for i in range(3 * 2000)], 2000)
    folder = tmp_path / "q"
    bad = batch_files(folder, "ready_")[1]
    sabotage(folder / bad, how)
    got = [int(x[:6]) for x in drain(tmp_path)]
    # Every event of the good batches, in order; of the bad one, whatever rows could be read.
    assert got[:2000] == list(range(2000)) and got[-2000:] == list(range(4000, 6000))
    assert set(got[2000:-2000]) <= set(range(2000, 4000))
    left = batch_files(folder)
    assert len(left) == 1 and left[0].startswith("invalid_chosen_" + bad[6:])  # kept, never deleted
    assert any("quarantined" in r.getMessage() and bad[6:] in r.getMessage() for r in caplog.records)


def test_startup_cleanup_quarantines_unreadable_leftovers(tmp_path):
    folder = tmp_path / "q"
    folder.mkdir()
    (folder / "chosen_1700000000_garbage.db").write_bytes(b"\x00junk" * 1000)
    (folder / "loading_1700000000_empty.db").write_bytes(b"")  # a producer that died at once
    counts = turbo_queue.startup(root_path=str(tmp_path), queue_name="q").on_start_cleanup()
    assert counts == {"published": 0, "empty": 1, "unfinished": 0, "quarantined": 1, "skipped_live": 0,
                      "skipped_other": 0}
    assert batch_files(folder) == ["invalid_chosen_1700000000_garbage.db"]


def test_wrong_serializer_is_a_clear_decode_error_and_the_rest_follows(tmp_path):
    publish(tmp_path, [b"\x80\x04not json", b"[1]"], 10, serializer="raw")
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name="q", wait_timeout=0)
    g = d.get()
    with pytest.raises(turbo_queue.DecodeError, match="serializer 'json'"):
        next(g)
    assert next(g) == [1]


def fill_until_error(e, payload):
    sent = e.events_published
    try:
        while True:
            e.add(b"%08d" % sent + payload)
            sent += 1
    except OSError as err:
        return err


def check_after_full(root, e, err, want_errno, fs_root):
    assert err.errno == want_errno
    assert err.filename and err.filename.startswith(str(fs_root))
    assert "discarded" in str(err) and "published earlier are safe" in str(err)
    folder = os.path.join(root, "q")
    assert batch_files(folder, "loading_") == []  # the broken batch is gone, not half-published
    for name in batch_files(folder, "ready_"):
        con = sqlite3.connect(os.path.join(folder, name))
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
    got = drain(root, serializer="raw")
    assert len(got) == e.events_published  # every published event, nothing else
    assert [int(x[:8]) for x in got] == list(range(e.events_published))


def test_disk_full_on_a_real_small_file_system(tmp_path, batch_build):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}); the RLIMIT_FSIZE test covers ENOSPC-like errors")
    try:
        e = turbo_queue.enqueue(root_path=str(mnt), queue_name="q", max_events_per_file=20, serializer="raw")
        err = fill_until_error(e, b"x" * 2000)
        assert e.events_published > 0
        check_after_full(str(mnt), e, err, errno.ENOSPC, mnt)
        assert "full" in str(err)
        e.add(b"%08d" % 0 + b"after")  # space freed by the drain: the same producer works again
        assert e.flush() == 1
        e.close()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_file_size_limit(tmp_path, batch_build):
    proc = run_script(f"""
        import resource, signal, sys, errno
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import turbo_queue
        from test_bad_input import fill_until_error, check_after_full
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
        e = turbo_queue.enqueue(root_path={str(tmp_path)!r}, queue_name="q", max_events_per_file=1000, serializer="raw")
        for b in range(2):  # two small batches fit under the limit...
            for i in range(30):
                e.add(b"%08d" % (b * 30 + i) + b"x" * 2000)
            e.flush()
        err = fill_until_error(e, b"x" * 2000)  # ...a third, bigger one does not
        assert e.events_published == 60
        check_after_full({str(tmp_path)!r}, e, err, errno.EFBIG, {str(tmp_path)!r})
        print("ok", e.events_published)
    """)
    assert proc.stdout.startswith("ok")


def test_consumer_without_read_permission_raises_permission_error(tmp_path):
    proc = run_script("""
        import os, sys, tempfile, shutil
        import turbo_queue
        root = tempfile.mkdtemp(prefix="tq-perm-")
        os.chmod(root, 0o755)
        os.makedirs(os.path.join(root, "q"))
        os.chmod(os.path.join(root, "q"), 0o700)
        try:
            if os.geteuid() == 0:
                os.setegid(65534); os.seteuid(65534)
            try:
                turbo_queue.dequeue(root_path=root, queue_name="q", wait_timeout=0).get_batch()
            except PermissionError as err:
                sys.stdout.write(str(err))
        finally:
            if os.getuid() == 0:
                os.seteuid(0); os.setegid(0)
            shutil.rmtree(root)
    """)
    assert "tq-perm-" in proc.stdout and "permission" in proc.stdout.lower()
