"""The turbo-queue command, driven against real queues in real folders."""

import json
import os
import signal
import subprocess
import sys

import pytest

import turbo_queue
from helpers import batch_files


TIMEOUT_S = 120  # (the demo takes seconds, under qemu-user too)


def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "turbo_queue", *map(str, args)],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def snapshot(folder):
    return {n: (st.st_size, st.st_mtime_ns) for n in os.listdir(folder)
            for st in [os.stat(os.path.join(folder, n))]}


@pytest.fixture
def queue(tmp_path):
    with turbo_queue.enqueue(root_path=str(tmp_path), queue_name="jobs", max_events_per_file=10) as e:
        e.add_many({"n": i} for i in range(35))
    # A consumer that dies holding a batch.
    proc = subprocess.run([sys.executable, "-c", f"""
import os, signal, turbo_queue
d = turbo_queue.dequeue(root_path={str(tmp_path)!r}, queue_name="jobs", wait_timeout=0)
d.get_many(1)
os.kill(os.getpid(), signal.SIGKILL)
"""], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (tmp_path / "jobs" / "invalid_ready_1_bad.db").write_bytes(b"junk")
    return tmp_path


def test_stats_json(queue):
    out = json.loads(cli("stats", queue, "--json").stdout)
    assert len(out) == 1
    s = out[0]
    assert s["queue"] == "jobs"
    assert s["files"] == {"loading": 0, "ready": 3, "chosen": 1, "invalid": 1, "dead": 0, "legacy": 0}
    assert s["dead_events"] == 0
    assert s["events_waiting"] == 25  # 35 events in batches of 10, one batch held
    assert list(s["batches_held_per_consumer"].values()) == [1]
    assert s["dead_holders"] == list(s["batches_held_per_consumer"])  # its owner is dead
    assert 0 <= s["oldest_ready_age_s"] < 3600


def test_read_only_commands_change_nothing(queue):
    folder = queue / "jobs"
    before = snapshot(folder)
    assert "jobs" in cli("stats", queue).stdout
    assert "jobs" in cli("stats", queue, "jobs").stdout
    peeked = [json.loads(line) for line in cli("peek", queue, "jobs", "-n", "12").stdout.splitlines()]
    assert peeked == [{"n": i} for i in range(10, 22)]  # the oldest ready batches, in order
    watched = cli("watch", queue, "--count", "2", "--interval", "0.1").stdout
    assert "jobs" in watched and "in/s" in watched
    assert snapshot(folder) == before


def test_recover_then_drain(queue, tmp_path):
    counts = json.loads(cli("recover", queue, "jobs", "--json").stdout)
    assert counts["published"] == 1 and counts["skipped_live"] == 0
    out = tmp_path / "events.jsonl"
    cli("drain", queue, "jobs", "--to", out)
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(e["n"] for e in events) == list(range(35))
    assert batch_files(queue / "jobs") == ["invalid_ready_1_bad.db"]


def test_drain_raw_bytes_to_jsonl(tmp_path):
    with turbo_queue.enqueue(root_path=str(tmp_path), queue_name="raw", serializer="raw") as e:
        e.add_many([b"text", b"\xff\x00"])
    out = tmp_path / "raw.jsonl"
    cli("drain", tmp_path, "raw", "--to", out, "--serializer", "raw")
    assert [json.loads(x) for x in out.read_text().splitlines()] == ["text", {"$base64": "/wA="}]


@pytest.mark.parametrize("args", [
    ("stats", "/no/such/root"), ("stats", "{root}", "nope"), ("peek", "{root}", "nope"),
    ("recover", "{root}", "nope"), ("drain", "{root}", "nope", "--to", "{root}/x.jsonl"),
    ("watch", "/no/such/root", "--count", "1"),
])
def test_missing_folder_or_queue_exits_nonzero_with_a_message(tmp_path, args):
    proc = cli(*(a.format(root=tmp_path) for a in args), check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("turbo-queue: ") and ("no such folder" in proc.stderr or "no queue" in proc.stderr)
    assert os.listdir(tmp_path) == []  # nothing created


@pytest.mark.parametrize("events", [20000, 2500])
def test_demo_runs(events):
    # 2,500: one batch, published by its age, short of the demo's counting steps of 1,000 (a slow
    # producer, as under emulation, publishes such batches): the demo once waited for it forever.
    proc = cli("demo", "--events", events, "--consumers", "2")
    assert "turbo-queue moved" in proc.stdout and "multiprocessing.Queue" in proc.stdout


def test_console_script_is_installed():
    import shutil

    exe = shutil.which("turbo-queue", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert exe is not None
    assert "stats" in subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60).stdout
