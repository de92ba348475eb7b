"""Prometheus metrics (issue 17): `turbo-queue metrics` read from the folder alone, scraped over HTTP
beside real producer and consumer processes, checked against `turbo-queue stats --json`; the
in-process counters; the textfile output."""

import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import turbo_queue  # noqa: E402
from helpers import run_script  # noqa: E402

ctx = mp.get_context("fork")


def produce(root, queue, start, batches, per_batch=10):
    with turbo_queue.enqueue(root_path=root, queue_name=queue, max_events_per_file=per_batch,
                             max_batch_age=3600) as e:
        e.add_many(range(start, start + batches * per_batch))


def hold_and_wait(root, queue, ready_file):
    """Claim a batch, take 3 events, say so, then wait to be killed holding it."""
    d = turbo_queue.dequeue(root_path=root, queue_name=queue, wait_timeout=1)
    g = d.get()
    for _ in range(3):
        next(g)
    open(ready_file, "w").close()
    time.sleep(600)


def drain(root, queue):
    d = turbo_queue.dequeue(root_path=root, queue_name=queue, wait_timeout=0, reclaim_interval=0.01)
    while d.get_batch():
        pass
    d.close()


def in_process(target, *args):
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(60)
    assert p.exitcode == 0


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (as a shell starts a background job)


class Exporter:
    def __init__(self, root, sigint_ignored=False):
        self.proc = subprocess.Popen([sys.executable, "-m", "turbo_queue", "metrics", root, "--listen",
                                      "127.0.0.1:0"], stderr=subprocess.PIPE, text=True,
                                     preexec_fn=_ignore_sigint if sigint_ignored else None)
        line = self.proc.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert m, line
        self.url = f"http://127.0.0.1:{m.group(1)}/metrics"

    def scrape(self, accept=None):
        req = urllib.request.Request(self.url, headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()

    def values(self):
        """{(name, labels as a sorted tuple): value}, through prometheus_client's own parser."""
        out = {}
        for family in text_string_to_metric_families(self.scrape()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def close(self, sig=signal.SIGTERM):
        """Stop it as a service manager (SIGTERM) or a person (SIGINT) would: it exits 0."""
        self.proc.send_signal(sig)
        try:
            assert self.proc.wait(10) == 0, self.proc.stderr.read()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stderr.close()


def stats_json(root):
    proc = subprocess.run([sys.executable, "-m", "turbo_queue", "stats", root, "--json"], capture_output=True,
                          text=True, check=True)
    return {s["queue"]: s for s in json.loads(proc.stdout)}


def q(name, **labels):
    return (name, tuple(sorted({"queue": "jobs", **labels}.items())))


COUNTERS = ["turbo_queue_events_published_total", "turbo_queue_batches_published_total",
            "turbo_queue_events_consumed_total", "turbo_queue_batches_consumed_total",
            "turbo_queue_reclaims_total", "turbo_queue_quarantines_total", "turbo_queue_dead_letter_events_total"]


def check_against_stats(values, stats):
    s = stats["jobs"]
    assert values[q("turbo_queue_events_waiting")] == s["events_waiting"]
    for state, n in s["files"].items():
        assert values[q("turbo_queue_batches", state=state)] == n, state
    assert values[q("turbo_queue_dead_letters")] == s["dead_events"]
    held = sum(s["batches_held_per_consumer"].values())
    dead = sum(n for h, n in s["batches_held_per_consumer"].items() if h in s["dead_holders"])
    assert values[q("turbo_queue_batches_held", owner="dead")] == dead
    assert values[q("turbo_queue_batches_held", owner="live")] == held - dead


def test_metrics_follow_the_folder_beside_real_processes(tmp_path):
    root = str(tmp_path)
    in_process(produce, root, "jobs", 0, 5)
    exporter = Exporter(root)
    scrapes = []
    try:
        first = exporter.values()
        check_against_stats(first, stats_json(root))
        assert first[q("turbo_queue_events_waiting")] == 50
        scrapes.append(first)

        # A consumer killed while it holds a batch: held by a dead owner.
        holder = ctx.Process(target=hold_and_wait, args=(root, "jobs", str(tmp_path / "holding")))
        holder.start()
        deadline = time.monotonic() + 30
        while not (tmp_path / "holding").exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        live = exporter.values()
        assert live[q("turbo_queue_batches_held", owner="live")] == 1
        assert live[q("turbo_queue_live_processes")] == 1
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
        after_kill = exporter.values()
        check_against_stats(after_kill, stats_json(root))
        assert after_kill[q("turbo_queue_batches_held", owner="dead")] == 1
        assert after_kill[q("turbo_queue_events_waiting")] == 40
        scrapes += [live, after_kill]

        # More published, everything consumed (the dead consumer's batch reclaimed on the way).
        in_process(produce, root, "jobs", 100, 3)
        scrapes.append(exporter.values())
        in_process(drain, root, "jobs")
        last = exporter.values()
        check_against_stats(last, stats_json(root))
        scrapes.append(last)
        assert last[q("turbo_queue_events_waiting")] == 0
        assert last[q("turbo_queue_events_published_total")] == 30  # after the first scrape
        assert last[q("turbo_queue_batches_consumed_total")] == 8
        assert last[q("turbo_queue_events_consumed_total")] == 80
        assert last[q("turbo_queue_reclaims_total")] == 1
        for before, after in zip(scrapes, scrapes[1:]):
            for name in COUNTERS:
                assert after[q(name)] >= before[q(name)], name

        body = exporter.scrape("application/openmetrics-text; version=1.0.0")
        assert body.rstrip().endswith("# EOF") and "turbo_queue_events_waiting" in body
    finally:
        exporter.close()


def test_names_follow_prometheus_conventions(tmp_path):
    in_process(produce, str(tmp_path), "jobs", 0, 1)
    exporter = Exporter(str(tmp_path))
    try:
        families = list(text_string_to_metric_families(exporter.scrape()))
    finally:
        exporter.close()
    names = {f.name: f.type for f in families if f.name.startswith("turbo_queue")}
    assert len(names) >= 15
    for name, kind in names.items():
        assert re.fullmatch(r"turbo_queue_[a-z_]+", name), name
        if kind == "counter":
            assert not name.endswith("_total")  # the family; its sample is <name>_total
        if "age" in name or "duration" in name:
            assert name.endswith("_seconds"), name


def test_textfile_for_node_exporter(tmp_path):
    in_process(produce, str(tmp_path / "queues"), "jobs", 0, 2)
    out = tmp_path / "tq.prom"
    subprocess.run([sys.executable, "-m", "turbo_queue", "metrics", str(tmp_path / "queues"), "jobs",
                    "--textfile", str(out), "--count", "1"], check=True, timeout=60)
    values = {(s.name, s.labels.get("state")): s.value
              for f in text_string_to_metric_families(out.read_text()) for s in f.samples}
    assert values[("turbo_queue_events_waiting", None)] == 20
    assert values[("turbo_queue_batches", "ready")] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name != "queues"] == ["tq.prom"]  # renamed in


def test_a_missing_queue_or_no_output_is_said_in_a_line(tmp_path):
    for args, said in ((["nope", "--textfile", "x"], "no queue 'nope'"), ([], "--listen")):
        proc = subprocess.run([sys.executable, "-m", "turbo_queue", "metrics", str(tmp_path), *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr


def test_in_process_counters_only_grow(tmp_path):
    from turbo_queue import metrics

    registry = prometheus_client.CollectorRegistry()
    metrics.register_process_metrics(registry)
    queue = "inproc-" + os.urandom(4).hex()

    def value(name):
        return registry.get_sample_value(name, {"queue": queue}) or 0

    e = turbo_queue.enqueue(root_path=str(tmp_path), queue_name=queue, max_events_per_file=10)
    e.add_many(range(25))
    e.flush()
    assert value("turbo_queue_process_events_published_total") == 25
    assert value("turbo_queue_process_batches_published_total") == 3
    e.close()
    assert value("turbo_queue_process_events_published_total") == 25  # kept after close
    d = turbo_queue.dequeue(root_path=str(tmp_path), queue_name=queue, wait_timeout=0.05)
    got = d.get_batch() + d.get_batch() + d.get_batch()
    assert value("turbo_queue_process_events_consumed_total") == len(got) == 25
    assert d.get_batch() == []  # none left: it waited
    assert value("turbo_queue_process_wait_seconds_total") > 0
    assert value("turbo_queue_process_waits_total") >= 1
    # One consumer: it never leaves a batch to another (the sample exists, and is 0).
    assert registry.get_sample_value("turbo_queue_process_batches_left_to_busy_total", {"queue": queue}) == 0
    d.close()
    assert value("turbo_queue_process_events_consumed_total") == 25
    assert value("turbo_queue_process_batches_consumed_total") == 3


HIDDEN = """
import sys
sys.modules["prometheus_client"] = None  # as if not installed
import turbo_queue
from turbo_queue.cli import main
sys.exit(main(["metrics", {root!r}, "--textfile", "x"]))
"""


def test_without_prometheus_client_the_command_says_what_to_install(tmp_path):
    proc = run_script(HIDDEN.format(root=str(tmp_path)), check=False)
    assert proc.returncode != 0 and "pip install 'turbo-queue[metrics]'" in proc.stderr


def test_the_example_dashboard_and_alerts_use_names_the_exporter_serves(tmp_path):
    in_process(produce, str(tmp_path), "jobs", 0, 1)
    exporter = Exporter(str(tmp_path))
    try:
        served = {s.name for f in text_string_to_metric_families(exporter.scrape()) for s in f.samples}
    finally:
        exporter.close()
    examples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    with open(os.path.join(examples, "grafana-dashboard.json")) as f:
        dashboard = f.read()
    json.loads(dashboard)
    with open(os.path.join(examples, "alerts.yml")) as f:
        alerts = f.read()
    used = set(re.findall(r"turbo_queue_[a-z_]+", dashboard + alerts))
    assert len(used) >= 8
    assert used <= served, used - served


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("sigint_ignored", [False, True])
def test_the_exporter_stops_cleanly_on_a_stop_signal_however_it_was_started(tmp_path, sig, sigint_ignored):
    """SIGTERM and SIGINT end `turbo-queue metrics` with status 0 and close its port, also where it
    was started with SIGINT ignored (a background job of a shell)."""
    exporter = Exporter(str(tmp_path), sigint_ignored=sigint_ignored)
    assert "turbo_queue_" in exporter.scrape()
    exporter.close(sig)
    with pytest.raises(OSError):
        exporter.scrape()
