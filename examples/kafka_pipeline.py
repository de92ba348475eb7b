"""A Kafka pipeline: topic -> KafkaSource -> queue -> N CPU-bound workers -> queue -> KafkaSink -> topic.

    python examples/kafka_pipeline.py --brokers 127.0.0.1:9092 --in-topic events \\
        --out-topic results --group pipeline --root /var/lib/pipeline --workers 8

Each input value is a JSON object with an "id"; each worker computes a digest of it (the CPU work)
and writes {"id": ..., "digest": ...} with the input's key, headers and timestamp. Stop it with
Ctrl-C or SIGTERM: the source publishes and commits, the workers finish their batch, the sink waits
for its delivery reports.

On several hosts at once: run the same command on each host with the same --group and a local
--root. Kafka spreads the input partitions over the hosts' sources; each host's workers and sink
handle what its source consumed. A host that stops hands its partitions to the others; what it had
queued but not yet produced stays in its --root and goes out when it starts again.

Delivery is at-least-once: after a crash some events come out twice, never zero times. Workers keep
that promise by publishing their output batch before asking for the next input batch (the input
batch is deleted only then).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import orjson

import turbo_queue
from turbo_queue.kafka import RECORDS, Record


def transform(record: Record) -> Record:
    """The CPU-bound work on one event: here, a digest of its value, repeated to cost ~20 us."""
    doc = orjson.loads(record.value or b"null")
    digest = record.value or b""
    for _ in range(20):
        digest = hashlib.sha256(digest).digest()
    out = {"id": doc.get("id") if isinstance(doc, dict) else None, "digest": digest.hex()}
    return record._replace(value=orjson.dumps(out))


def worker(root: str, in_queue: str, out_queue: str, stop: threading.Event | None = None) -> None:
    """Move events from in_queue to out_queue through `transform` until SIGTERM/SIGINT."""
    stop = stop or _stop_on_signals()
    with turbo_queue.Dequeue(root_path=root, queue_name=in_queue, serializer=RECORDS) as inbox, \
            turbo_queue.Enqueue(root_path=root, queue_name=out_queue, serializer=RECORDS,
                                max_events_per_file=10000) as outbox:
        while not stop.is_set():
            records = inbox.get_batch(timeout=0.2)
            if records:
                outbox.add_many([transform(r) for r in records])
                # Published before the next get_batch() deletes the input batch: a crash in
                # between repeats this batch, never loses it.
                outbox.flush()


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def main() -> int:
    if sys.argv[1:2] == ["worker"]:
        # One worker as its own program: worker ROOT IN_QUEUE OUT_QUEUE (the tests start them so).
        root, in_queue, out_queue = sys.argv[2:5]
        worker(root, in_queue, out_queue)
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--brokers", required=True)
    p.add_argument("--in-topic", required=True)
    p.add_argument("--out-topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--root", required=True, help="a local folder for the two queues")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()

    cli = [sys.executable, "-m", "turbo_queue"]
    common = ["--brokers", args.brokers, "--root-path", args.root]
    source = subprocess.Popen([*cli, "kafka-source", *common, "--queue-name", "in",
                               "--topic", args.in_topic, "--group", args.group])
    sink = subprocess.Popen([*cli, "kafka-sink", *common, "--queue-name", "out",
                             "--topic", args.out_topic])
    workers = [multiprocessing.Process(target=worker, args=(args.root, "in", "out"))
               for _ in range(args.workers)]
    for w in workers:
        w.start()
    stop = _stop_on_signals()
    stop.wait()
    # Stop in the order events flow, so that each stage publishes what it holds before the next
    # stage finishes.
    source.send_signal(signal.SIGTERM)
    source.wait()
    for w in workers:
        os.kill(w.pid or 0, signal.SIGTERM)
    for w in workers:
        w.join()
    sink.send_signal(signal.SIGTERM)
    sink.wait()
    return max(source.returncode, sink.returncode, *(w.exitcode or 0 for w in workers))


if __name__ == "__main__":
    sys.exit(main())
