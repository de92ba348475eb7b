"""examples/http_sink.py, run as a user would run it, against a local endpoint that fails a fifth of
the requests and refuses some events for good: every event arrives or is a dead letter."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import turbo_queue
from wakeup import wait_until

pytest.importorskip("aiohttp")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "http_sink.py"
SERVER = Path(__file__).resolve().parent / "http_server.py"


def start_server(tmp_path, *args):
    server = subprocess.Popen([sys.executable, str(SERVER), "--record", str(tmp_path / "accepted.json"),
                               *args], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    return server, f"http://127.0.0.1:{port}/events"


def stop_server(server, tmp_path):
    server.send_signal(signal.SIGTERM)
    server.stdout.close()
    assert server.wait(30) == 0
    return json.loads((tmp_path / "accepted.json").read_text())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_every_event_arrives_or_is_a_dead_letter_despite_failures(tmp_path, loop):
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    events = 3000
    poison = {7, 1234, 2999}
    with turbo_queue.Enqueue(root_path=str(tmp_path), queue_name="events", max_events_per_file=200) as q:
        q.add_many({"i": i, "poison": i in poison} for i in range(events))
    server, url = start_server(tmp_path, "--fail", "0.2")
    try:
        sink = subprocess.run([sys.executable, str(EXAMPLE), "--root", str(tmp_path), "--queue", "events",
                               "--url", url, "--workers", "4", "--in-flight", "64", "--max-retries", "20",
                               "--exit-when-idle", "1", *(["--uvloop"] if loop == "uvloop" else [])],
                              capture_output=True, text=True, timeout=300)
    finally:
        accepted = stop_server(server, tmp_path)
    assert sink.returncode == 0, sink.stderr
    stats = json.loads(sink.stdout.splitlines()[-1])
    assert stats["retries"] > 0  # (failures were injected, and retried)
    assert set(accepted) == set(range(events)) - poison  # every event, duplicates allowed
    assert len(accepted) == len(set(accepted))  # (and none twice: no batch was given back here)
    dead = turbo_queue.dead_letters(tmp_path / "events")
    assert sorted(json.loads(d.value)["i"] for d in dead) == sorted(poison)
    assert stats["dead_lettered"] == len(poison) and stats["refused"] == {"HTTP 400": len(poison)}
    assert not [n for n in os.listdir(tmp_path / "events") if n.startswith(("ready_", "chosen_"))]


def test_sigterm_mid_batch_gives_the_unfinished_batches_back(tmp_path):
    events = 2000
    with turbo_queue.Enqueue(root_path=str(tmp_path), queue_name="events", max_events_per_file=500) as q:
        q.add_many({"i": i} for i in range(events))
    server, url = start_server(tmp_path, "--delay", "0.05")
    try:
        sink = subprocess.Popen([sys.executable, str(EXAMPLE), "--root", str(tmp_path), "--queue", "events",
                                 "--url", url, "--workers", "2", "--in-flight", "16"],
                                stdout=subprocess.PIPE, text=True)
        folder = tmp_path / "events"
        wait_until(lambda: any(n.startswith("chosen_") for n in os.listdir(folder)), 60,
                   "the sink to take a batch")
        time.sleep(0.3)  # (mid-batch: 16 requests of 50 ms at a time, 500 events per batch)
        sink.send_signal(signal.SIGTERM)
        out, _ = sink.communicate(timeout=60)
        assert sink.returncode == 0
        stats = json.loads(out.splitlines()[-1])
        left = [n for n in os.listdir(folder) if n.startswith(("ready_", "chosen_"))]
        assert not [n for n in left if n.startswith("chosen_")]  # given back, not left held
        # What was not acknowledged is in the queue whole: acknowledged batches + the rest = all.
        remaining = sum(turbo_queue._core.count_batch_rows(folder / n) for n in left)
        assert stats["accepted"] + remaining == events
        assert remaining > 0
    finally:
        accepted = stop_server(server, tmp_path)
    assert len(set(accepted)) >= stats["accepted"]
