"""`turbo-queue kafka-source` and `turbo-queue kafka-sink`: the Kafka connectors as processes."""

from __future__ import annotations

import argparse
import logging
from typing import Any


def _config(pairs: list[str]) -> dict[str, Any]:
    conf: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"turbo-queue: --config takes KEY=VALUE, not {pair!r}")
        conf[key] = value
    return conf


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(process)d %(levelname)s %(message)s")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """What source and sink take alike, from the options of _common()."""
    _logging(args.log_level)
    return dict(kafka_brokers=args.brokers, kafka_client_id=args.client_id,
                turbo_queue_root_path=args.root_path, turbo_queue_queue_name=args.queue_name,
                value_format=args.value_format, config=_config(args.config))


def cmd_source(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from turbo_queue.kafka import KafkaSource

    source = KafkaSource(
        args.topic, kafka_group_id=args.group, turbo_queue_max_ready_files=args.max_ready_files,
        turbo_queue_max_events_per_file=args.max_events_per_file, max_batch_age=args.max_batch_age,
        kafka_auto_offset_reset=args.offset_reset, durability=args.durability, **settings)
    source.run()  # SIGTERM/SIGINT: publish the open batch, commit, leave the group
    logging.getLogger("turbo_queue").info("kafka-source: %d events queued, %d commits", source.events,
                                          source.commits)
    return 0


def cmd_sink(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from turbo_queue.kafka import KafkaSink

    sink = KafkaSink(args.topic, max_in_flight=args.max_in_flight, max_attempts=args.max_attempts,
                     **settings)
    sink.run()  # SIGTERM/SIGINT: wait for delivery reports, delete delivered batches, close
    logging.getLogger("turbo_queue").info(
        "kafka-sink: %d events delivered in %d batches; %d events requeued after failing, %d batches "
        "given back", sink.events, sink.batches, sink.requeued, sink.given_back)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--brokers", required=True, help="bootstrap servers, host:port[,host:port]")
    p.add_argument("--root-path", required=True, help="folder holding the queue")
    p.add_argument("--queue-name", required=True)
    p.add_argument("--client-id", default=None)
    p.add_argument("--value-format", choices=("record", "bytes", "json"), default="record",
                   help="what the queue holds (see turbo_queue.kafka)")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="a confluent-kafka setting; repeat for more")
    p.add_argument("--log-level", default="info")


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("kafka-source", help="consume Kafka topics into a queue (at-least-once)")
    _common(s)
    s.add_argument("--topic", action="append", required=True, help="repeat for more topics")
    s.add_argument("--group", required=True, help="consumer group id")
    s.add_argument("--max-ready-files", type=int, default=10, help="pause partitions at this many")
    s.add_argument("--max-events-per-file", type=int, default=10000)
    s.add_argument("--max-batch-age", type=float, default=1.0)
    s.add_argument("--offset-reset", choices=("earliest", "latest"), default="earliest")
    s.add_argument("--durability", choices=("process", "os"), default="process")
    s.set_defaults(func=cmd_source)

    k = sub.add_parser("kafka-sink", help="produce a queue's events to a Kafka topic (at-least-once)")
    _common(k)
    k.add_argument("--topic", required=True)
    k.add_argument("--max-in-flight", type=int, default=4, help="batches produced before waiting for their delivery reports")
    k.add_argument("--max-attempts", type=int, default=5,
                   help="rounds of producing failed events before they are requeued as a new batch")
    k.set_defaults(func=cmd_sink)
