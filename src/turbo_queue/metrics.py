"""Prometheus metrics: every queue of a folder, read from its file names at scrape time (no change to
the workers), and, opt-in, the counters of this process's own producers and consumers.

    turbo-queue metrics ROOT [QUEUE...] --listen 127.0.0.1:9720     # or --textfile PATH

    from turbo_queue import metrics
    metrics.register_process_metrics()          # this process's producers and consumers
    registry.register(metrics.FolderCollector("/data/queues"))   # every queue under a folder

Needs prometheus_client (``pip install 'turbo-queue[metrics]'``); ``import turbo_queue`` does not.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Iterable, Iterator

try:
    from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import REGISTRY, Collector
except ImportError:  # pragma: no cover - said to the user in one line
    raise ImportError("turbo_queue.metrics needs prometheus_client: "
                      "pip install 'turbo-queue[metrics]'") from None

from turbo_queue import _folder
from turbo_queue._core import STATES, owner_of_lock_name, parse_name, process_counters

__all__ = ["FolderCollector", "ProcessCollector", "register_process_metrics", "serve", "write_textfile"]

# What the counters of a folder follow from one scrape to the next, per queue.
_FOLDER_COUNTERS = ("events_published", "batches_published", "events_consumed", "batches_consumed",
                    "reclaims", "quarantines", "dead_letter_events")


class _QueueMemory:
    """What one queue's folder held at the last scrape, and the counters derived since."""

    def __init__(self) -> None:
        self.batches: dict[str, tuple[int, int]] | None = None  # base -> (events, attempts)
        self.dead_held: set[str] = set()  # bases held by dead consumers
        self.invalid: set[str] = set()
        self.dead: dict[str, int] = {}
        self.totals = dict.fromkeys(_FOLDER_COUNTERS, 0)


class FolderCollector(Collector):
    """Metrics of every queue under `root` (or of the named `queues`), computed from the folder at each
    scrape: names carry the event counts, so no batch file is opened except batches written by the
    pure-Python package (counted) and lock files (to tell live owners from dead ones).

    Gauges say what the folder holds now; counters (`..._total`) are derived from what changed
    between two scrapes of this collector, so they start at 0 with it and miss a batch published and
    consumed between two scrapes (see the README)."""

    def __init__(self, root: str | os.PathLike[str], queues: Iterable[str] | None = None) -> None:
        self.root = os.fspath(root)
        self.queues = list(queues) if queues else None
        self._memory: dict[str, _QueueMemory] = {}
        self._lock = threading.Lock()  # (two scrapes at once must not count one change twice)

    def _folders(self) -> list[str]:
        if self.queues is None:
            return _folder.queue_folders(self.root)
        return [f for q in self.queues for f in _folder.queue_folders(self.root, q)]

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        waiting = GaugeMetricFamily("turbo_queue_events_waiting", "Events in batches ready for a consumer", labels=["queue"])
        batches = GaugeMetricFamily("turbo_queue_batches", "Batch files by state", labels=["queue", "state"])
        oldest = GaugeMetricFamily("turbo_queue_oldest_ready_age_seconds",
                                   "Age of the oldest ready batch (0 when none waits)", labels=["queue"])
        loading = GaugeMetricFamily("turbo_queue_oldest_loading_age_seconds",
                                    "Age of the oldest batch a producer has open (0 when none)",
                                    labels=["queue"])
        held = GaugeMetricFamily("turbo_queue_batches_held", "Claimed batches, by whether their consumer lives",
                                 labels=["queue", "owner"])
        live = GaugeMetricFamily("turbo_queue_live_processes",
                                 "Producers and consumers alive (owner locks held)", labels=["queue"])
        dead = GaugeMetricFamily("turbo_queue_dead_letters", "Events kept as dead letters",
                                 labels=["queue"])
        counters = {
            "events_published": CounterMetricFamily(
                "turbo_queue_events_published", "Events of batches seen appearing ready or claimed",
                labels=["queue"]),
            "batches_published": CounterMetricFamily(
                "turbo_queue_batches_published", "Batches seen appearing ready or claimed", labels=["queue"]),
            "events_consumed": CounterMetricFamily(
                "turbo_queue_events_consumed", "Events of batches seen leaving the ready and claimed "
                "states (finished, quarantined or dead-lettered)", labels=["queue"]),
            "batches_consumed": CounterMetricFamily(
                "turbo_queue_batches_consumed", "Batches seen leaving the ready and claimed states", labels=["queue"]),
            "reclaims": CounterMetricFamily(
                "turbo_queue_reclaims", "Batches given back after their consumer died or failed (their "
                "attempt count grew)", labels=["queue"]),
            "quarantines": CounterMetricFamily(
                "turbo_queue_quarantines", "Files seen quarantined (invalid)", labels=["queue"]),
            "dead_letter_events": CounterMetricFamily(
                "turbo_queue_dead_letter_events", "Events seen set aside as dead letters", labels=["queue"]),
        }
        with self._lock:
            for folder in self._folders():
                try:
                    self._collect_queue(folder, waiting, batches, oldest, loading, held, live, dead, counters)
                except FileNotFoundError:
                    continue  # removed meanwhile
        yield from (waiting, batches, oldest, loading, held, live, dead, *counters.values())
        took = GaugeMetricFamily("turbo_queue_scrape_duration_seconds", "How long reading the folders took")
        took.add_metric([], time.monotonic() - started)
        yield took

    def _collect_queue(self, folder: str, waiting: GaugeMetricFamily, batches: GaugeMetricFamily,
                       oldest: GaugeMetricFamily, loading: GaugeMetricFamily, held: GaugeMetricFamily,
                       live: GaugeMetricFamily, dead: GaugeMetricFamily,
                       counters: dict[str, CounterMetricFamily]) -> None:
        now = time.time()
        queue = os.path.basename(os.path.normpath(folder))
        names = os.listdir(folder)
        files = dict.fromkeys(STATES, 0)
        present: dict[str, tuple[int, int]] = {}
        invalid: set[str] = set()
        dead_files: dict[str, int] = {}
        events_waiting = 0
        oldest_ready = oldest_loading = None
        held_by: dict[str, int] = {}
        holder_of: dict[str, str] = {}
        locks = 0
        for name in names:
            if owner_of_lock_name(name) is not None:
                locks += 1
                continue
            b = parse_name(name)
            if b is None:
                continue
            files[b.state] += 1
            if b.state in ("ready", "chosen"):
                # (a claim of the pure-Python package carries no count: 0)
                events = _folder.events_in_batch(folder, b) if b.state == "ready" else (b.events or 0)
                present[b.base] = (events, b.attempts)
                if b.state == "ready":
                    events_waiting += events
                    if b.epoch is not None and (oldest_ready is None or b.epoch < oldest_ready):
                        oldest_ready = b.epoch
                else:
                    holder = b.owner or "(pure-Python consumer)"
                    held_by[holder] = held_by.get(holder, 0) + 1
                    holder_of[b.base] = holder
            elif b.state == "loading":
                if b.epoch is not None and (oldest_loading is None or b.epoch < oldest_loading):
                    oldest_loading = b.epoch
            elif b.state == "invalid":
                invalid.add(name)
            elif b.state == "dead":
                dead_files[name] = _folder.events_in_batch(folder, b)
        waiting.add_metric([queue], events_waiting)
        for state in STATES:
            batches.add_metric([queue, state], files[state])
        oldest.add_metric([queue], 0.0 if oldest_ready is None else max(0.0, now - oldest_ready))
        loading.add_metric([queue], 0.0 if oldest_loading is None else max(0.0, now - oldest_loading))
        dead_tokens = {h for h in held_by if not h.startswith("(") and _folder.owner_alive(folder, h) is not True}
        dead_held = {base for base, h in holder_of.items() if h in dead_tokens}
        held.add_metric([queue, "live"], len(holder_of) - len(dead_held))
        held.add_metric([queue, "dead"], len(dead_held))
        live.add_metric([queue], _live_owners(folder, names) if locks else 0)
        dead.add_metric([queue], sum(dead_files.values()))

        memory = self._memory.setdefault(folder, _QueueMemory())
        totals = memory.totals
        if memory.batches is not None:  # the first scrape only remembers
            # A reclaim: a batch a dead consumer held is no longer held by it (given back, claimed
            # again or finished since), or a batch's attempt count grew (seen between two scrapes).
            reclaimed = memory.dead_held - dead_held
            totals["reclaims"] += len(reclaimed)
            for base, (events, attempts) in present.items():
                before = memory.batches.get(base)
                if before is None:
                    totals["events_published"] += events
                    totals["batches_published"] += 1
                elif attempts > before[1]:
                    totals["reclaims"] += max(0, attempts - before[1] - (base in reclaimed))
            for base, (events, _attempts) in memory.batches.items():
                if base not in present:
                    totals["events_consumed"] += events
                    totals["batches_consumed"] += 1
            totals["quarantines"] += len(invalid - memory.invalid)
            totals["dead_letter_events"] += sum(n for f, n in dead_files.items() if f not in memory.dead)
        memory.batches, memory.invalid, memory.dead = present, invalid, dead_files
        memory.dead_held = dead_held
        for key, family in counters.items():
            family.add_metric([queue], totals[key])


def _live_owners(folder: str, names: list[str]) -> int:
    """Owner locks held now (read-only: a shared lock tried and dropped, nothing created)."""
    n = 0
    for name in names:
        token = owner_of_lock_name(name)
        if token is not None and _folder.owner_alive(folder, token) is True:
            n += 1
    return n


class ProcessCollector(Collector):
    """This process's producers and consumers, closed ones included (exact: counted as they work, at no
    cost per event). Across many processes, each serves its own, or use FolderCollector (one exporter
    for the host): prometheus_client's multiprocess mode does not take custom collectors."""

    def collect(self) -> Iterator[Metric]:
        specs = [  # (metric, help, role, counter key)
            ("turbo_queue_process_events_published", "Events this process published", "producer", "events"),
            ("turbo_queue_process_batches_published", "Batches this process published", "producer", "batches"),
            ("turbo_queue_process_events_consumed", "Events this process's consumers handed out", "consumer", "events"),
            ("turbo_queue_process_batches_consumed", "Batches this process's consumers claimed", "consumer", "batches"),
            ("turbo_queue_process_wait_seconds", "Seconds this process's consumers waited for a batch", "consumer",
             "wait_seconds"),
            ("turbo_queue_process_waits", "Times this process's consumers slept for a batch (woken or timed "
             "out): about one per batch and per wait_timeout, however many consumers wait", "consumer", "waits"),
            ("turbo_queue_process_batches_left_to_busy", "Looks at the folder where this process's consumers left "
             "the ready batches to consumers already busy (no CPU free for one more, or the watcher takes them)",
             "consumer", "left_to_busy"),
            ("turbo_queue_process_reclaims", "Batches of dead processes this process's consumers reclaimed",
             "consumer", "reclaimed"),
            ("turbo_queue_process_quarantines", "Files this process's consumers quarantined", "consumer",
             "quarantined"),
            ("turbo_queue_process_undecodable_events", "Events this process's consumers set aside as undecodable",
             "consumer", "set_aside"),
            ("turbo_queue_process_dead_letter_events", "Events this process set aside as dead letters", None,
             "dead_lettered"),
        ]
        counts = process_counters()
        for metric, help_text, role, key in specs:
            family = CounterMetricFamily(metric, help_text, labels=["queue"])
            per_queue: dict[str, float] = {}
            for (r, folder), values in counts.items():
                if role is None or r == role:
                    queue = os.path.basename(os.path.normpath(folder))
                    per_queue[queue] = per_queue.get(queue, 0) + values.get(key, 0)
            for queue, value in sorted(per_queue.items()):
                family.add_metric([queue], value)
            yield family


def register_process_metrics(registry: CollectorRegistry = REGISTRY) -> ProcessCollector:
    """Register this process's producer and consumer counters with `registry` (default: the global
    one that prometheus_client's start_http_server serves)."""
    collector = ProcessCollector()
    registry.register(collector)
    return collector


def folder_registry(root: str, queues: Iterable[str] | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FolderCollector(root, queues))
    return registry


def serve(root: str, queues: Iterable[str] | None, host: str, port: int) -> tuple[object, int]:
    """Serve /metrics of the queues under root on host:port (0: any free port) from a thread;
    returns (server, port). Text format, or OpenMetrics when the scraper asks for it."""
    server, _thread = start_http_server(port, addr=host, registry=folder_registry(root, queues))
    return server, int(server.server_port)


def write_textfile(path: str, registry: CollectorRegistry) -> None:
    """Write the metrics for node_exporter's textfile collector, atomically (a file beside, renamed)."""
    write_to_textfile(path, registry)
