"""Kafka connectors against plain confluent-kafka loops, side by side in one run, on a real broker.

    python bench/kafka_bench.py [--events 500000] [--repeat 3] [--size 100] [--json out.json]

Starts a single-node broker (scripts/kafka_broker.py; needs Java and, once, Maven), then:

- consume: a topic of N messages (4 partitions) read by a plain `Consumer.consume()` loop, and by
  `KafkaSource` into a queue (value_format "record" and "bytes"), each with a fresh group. Timed
  from the first message to the last one handed over (for the source: published in a batch).
- produce: N messages written by a plain `Producer.produce()` loop + `flush()`, and by `KafkaSink`
  from a prepared queue (record and bytes), with the same producer settings (acks=all,
  idempotence, linger.ms=5). Timed until every message was acknowledged (for the sink: until every
  batch was deleted after its delivery reports).
- like for like: the source's records carry every field of a message, so it is also compared with
  a plain loop that reads them all; the sink looks at every delivery report, so it is also compared
  with a plain loop that passes `on_delivery`.

Each system runs --repeat times, alternating; the best and the median are reported, with the ratio
of each connector to the plain client (the target is >= 80%), and the CPU time of this process
(librdkafka's threads included) per message over the timed part: on a host whose cores the broker
shares, that is the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from confluent_kafka import Consumer, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from kafka_broker import KafkaBroker  # noqa: E402

import turbo_queue  # noqa: E402
from turbo_queue.kafka import RECORDS, KafkaSink, KafkaSource, Record  # noqa: E402

PRODUCER = {"acks": "all", "enable.idempotence": True, "linger.ms": 5}


def topic(broker: KafkaBroker, partitions: int = 4) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for f in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        f.result(30)
    return name


def payloads(n: int, size: int) -> list[tuple[bytes, bytes]]:
    return [((b"%012d" % i) + b"v" * (size - 12), b"k%d" % (i % 64)) for i in range(n)]


def cpu_s() -> float:
    """CPU seconds of this process, librdkafka's threads included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def plain_consume(broker: KafkaBroker, t: str, n: int, all_fields: bool = False) -> tuple[float, float]:
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": uuid.uuid4().hex,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([t])
    got, start, cpu0 = 0, None, 0.0
    while got < n:
        msgs = c.consume(10000, 1.0)
        if msgs and start is None:
            start, cpu0 = time.perf_counter(), cpu_s()
        for m in msgs:
            if m.error() is None:
                m.value()
                if all_fields:  # what a record carries: the like-for-like loop
                    m.key(), m.headers(), m.timestamp(), m.topic(), m.partition(), m.offset()
                got += 1
    elapsed, cpu = time.perf_counter() - (start or 0.0), cpu_s() - cpu0
    c.close()
    return n / elapsed, cpu / n * 1e6


def source_consume(broker: KafkaBroker, t: str, n: int, value_format: str, root: str) -> tuple[float, float]:
    src = KafkaSource([t], kafka_brokers=broker.bootstrap, kafka_group_id=uuid.uuid4().hex,
                      turbo_queue_root_path=root, turbo_queue_queue_name=uuid.uuid4().hex,
                      turbo_queue_max_ready_files=10**6, value_format=value_format)
    src.open()
    start, cpu0 = None, 0.0
    while src.events < n:
        if src.poll_once(1.0) and start is None:
            start, cpu0 = time.perf_counter(), cpu_s()
    assert src._queue is not None
    src._queue.flush()
    elapsed, cpu = time.perf_counter() - (start or 0.0), cpu_s() - cpu0
    src.close()
    return n / elapsed, cpu / n * 1e6


def plain_produce(broker: KafkaBroker, t: str, data: list[tuple[bytes, bytes]],
                  reports: bool = False) -> tuple[float, float]:
    p = Producer({"bootstrap.servers": broker.bootstrap, **PRODUCER})
    failed = []

    def report(err: Any, msg: Any) -> None:  # what an at-least-once loop must look at
        if err is not None:
            failed.append(msg)
    p.list_topics(t, timeout=10)  # connected before the clock starts, as the sink is
    start, cpu0 = time.perf_counter(), cpu_s()
    for value, key in data:
        while True:
            try:
                if reports:
                    p.produce(t, value, key, on_delivery=report)
                else:
                    p.produce(t, value, key)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(60) == 0 and not failed
    return len(data) / (time.perf_counter() - start), (cpu_s() - cpu0) / len(data) * 1e6


def sink_produce(broker: KafkaBroker, t: str, data: list[tuple[bytes, bytes]], value_format: str,
                 root: str) -> tuple[float, float]:
    qname = uuid.uuid4().hex
    serializer = RECORDS if value_format == "record" else "raw"
    with turbo_queue.Enqueue(root_path=root, queue_name=qname, serializer=serializer,
                             max_events_per_file=10000) as q:
        if value_format == "record":
            q.add_many(Record(v, k) for v, k in data)
        else:
            q.add_many(v for v, _ in data)
    sink = KafkaSink(t, kafka_brokers=broker.bootstrap, turbo_queue_root_path=root,
                     turbo_queue_queue_name=qname, value_format=value_format, config=PRODUCER)
    sink.open()
    sink._producer.list_topics(t, timeout=10)
    start, cpu0 = time.perf_counter(), cpu_s()
    while sink.events < len(data):
        sink.poll_once()
    elapsed, cpu = time.perf_counter() - start, cpu_s() - cpu0
    sink.close()
    return len(data) / elapsed, cpu / len(data) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=100, help="value bytes")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", default="", help="run only the systems whose name contains this")
    args = ap.parse_args()
    n = args.events
    data = payloads(n, args.size)
    results: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    root = tempfile.mkdtemp(prefix="tq-kafka-bench-")
    with KafkaBroker(heap="1g") as broker:
        t_in = topic(broker)
        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20})
        for value, key in data:
            while True:
                try:
                    p.produce(t_in, value, key)
                    break
                except BufferError:
                    p.poll(0.05)
        assert p.flush(60) == 0
        runs = {
            "consume: plain Consumer loop": lambda: plain_consume(broker, t_in, n),
            "consume: plain loop, all fields": lambda: plain_consume(broker, t_in, n, True),
            "consume: KafkaSource record": lambda: source_consume(broker, t_in, n, "record", root),
            "consume: KafkaSource bytes": lambda: source_consume(broker, t_in, n, "bytes", root),
            "produce: plain Producer loop": lambda: plain_produce(broker, topic(broker), data),
            "produce: plain loop, delivery reports": lambda: plain_produce(broker, topic(broker), data, True),
            "produce: KafkaSink record": lambda: sink_produce(broker, topic(broker), data, "record", root),
            "produce: KafkaSink bytes": lambda: sink_produce(broker, topic(broker), data, "bytes", root),
        }
        runs = {k: v for k, v in runs.items() if args.only in k or "plain" in k}
        for r in range(args.repeat):
            for name, run in (runs.items() if r % 2 == 0 else reversed(runs.items())):
                rate, cpu_us = run()
                results.setdefault(name, []).append(rate)
                cpu.setdefault(name, []).append(cpu_us)
                print(f"[{r + 1}/{args.repeat}] {name:32s} {rate:12,.0f} msg/s {cpu_us:6.2f} us CPU/msg",
                      flush=True)
    print(f"\n{n:,} messages of {args.size} B, best / median of {args.repeat}, "
          f"{os.cpu_count()} CPUs (the broker runs on the same host)\n"
          f"{'':32s} {'best':>12s} {'median':>12s}   ratio: best median   CPU of this process")
    summary = {}
    for name, rates in results.items():
        side = name.split(":")[0]
        plain = results[f"{side}: plain {'Consumer' if side == 'consume' else 'Producer'} loop"]
        # Like for like: a record carries every field, so also compare it with a plain loop that
        # reads them all.
        like = plain
        if "record" in name and side == "consume":
            like = results.get("consume: plain loop, all fields", plain)
        elif "KafkaSink" in name:  # the sink checks every delivery report; so must a fair loop
            like = results.get("produce: plain loop, delivery reports", plain)
        best, median = max(rates), statistics.median(rates)
        cpu_us = statistics.median(cpu[name])
        summary[name] = {"best": best, "median": median, "ratio_best": best / max(plain),
                         "ratio_median": median / statistics.median(plain),
                         "ratio_median_like_for_like": median / statistics.median(like), "runs": rates,
                         "cpu_us_per_msg_median": cpu_us, "cpu_runs": cpu[name]}
        print(f"{name:32s} {best:12,.0f} {median:12,.0f}   {best / max(plain):5.0%} "
              f"{median / statistics.median(plain):5.0%}   {cpu_us:5.2f} us CPU/msg"
              + (f"   (median {median / statistics.median(like):.0%} of the like-for-like loop)"
                 if like is not plain else ""))
    if args.json:
        args.json.write_text(json.dumps({"events": n, "size": args.size, "cpus": os.cpu_count(),
                                         "results": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
