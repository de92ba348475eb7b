"""Kafka connectors with at-least-once delivery: topics -> a local queue, a local queue -> a topic.

``KafkaSource`` consumes topics into a turbo-queue folder and commits a Kafka offset only once every
event up to it is in a published batch. ``KafkaSink`` claims batches, produces every event, and
deletes a batch only once every event of it was delivered (or, failing every attempt, requeued).
Nothing is lost; an event is delivered twice only after a crash (or a sink stopped while delivery
reports were outstanding).

Needs the ``kafka`` extra: ``pip install "turbo-queue[kafka]"`` (confluent-kafka and msgpack).

What travels through the queue depends on ``value_format``:

- ``"record"`` (default): a :class:`Record` per message: the value bytes untouched, with the key,
  headers, timestamp and where it came from. Workers read and write it with
  ``serializer=turbo_queue.kafka.RECORDS``.
- ``"bytes"``: the value bytes only (the fastest; keys and headers are dropped).
- ``"json"``: the value decoded as JSON, stored as the original turbo-queue stores events, so
  workers written for the pure-Python package (0.8's ``KafkaEnqueue``) read plain dicts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from typing import Any, Callable, Iterable, Literal, NamedTuple, Optional, Sequence, Tuple

try:
    import msgpack
    from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
except ImportError as e:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        f"turbo_queue.kafka needs confluent-kafka and msgpack ({e}): "
        "pip install 'turbo-queue[kafka]'") from e

import orjson

from turbo_queue._core import Dequeue, Enqueue
from turbo_queue._kafka_codec import pack_messages, produce_packed, unpack_record
from turbo_queue._signals import Stopper

__all__ = ["RECORDS", "KafkaDequeue", "KafkaEnqueue", "KafkaSink", "KafkaSource", "Record",
           "RecordSerializer"]

logger = logging.getLogger("turbo_queue")

VALUE_FORMATS = ("record", "bytes", "json")
# How each format is stored in the queue: records as the packed bytes they are (packed in C by the
# source, produced straight from those bytes by the sink).
_STORED_AS = {"record": "raw", "bytes": "raw", "json": "json"}
Headers = Tuple[Tuple[str, Optional[bytes]], ...]


class Record(NamedTuple):
    """One Kafka message in the queue. ``timestamp`` is in milliseconds since the epoch."""

    value: Optional[bytes]
    key: Optional[bytes] = None
    headers: Optional[Headers] = None
    timestamp: Optional[int] = None
    topic: Optional[str] = None
    partition: Optional[int] = None
    offset: Optional[int] = None


class RecordSerializer:
    """Stores a :class:`Record` as a msgpack array (bytes stay bytes; nothing is re-encoded)."""

    def dumps(self, record: Any) -> bytes:
        if isinstance(record, (bytes, str)):
            record = Record(record if isinstance(record, bytes) else record.encode())
        elif not isinstance(record, Record):
            raise TypeError(f"a Record, bytes or str is needed, not {type(record).__name__}")
        return msgpack.packb(record, use_bin_type=True)  # type: ignore[no-any-return]

    def loads(self, data: bytes) -> Record:
        try:
            return unpack_record(data, Record)  # type: ignore[no-any-return]  # compiled reader
        except ValueError:
            pass  # a form the compiled reader does not know: msgpack decides
        fields = msgpack.unpackb(data, raw=False, use_list=False)
        if not isinstance(fields, tuple) or len(fields) != len(Record._fields):
            raise ValueError(f"not a turbo_queue.kafka Record ({type(fields).__name__})")
        value, key, headers, timestamp = fields[:4]
        if not (isinstance(value, (bytes, type(None))) and isinstance(key, (bytes, type(None)))
                and isinstance(headers, (tuple, type(None)))
                and isinstance(timestamp, (int, type(None)))):
            raise ValueError("not a turbo_queue.kafka Record (its fields have other types)")
        return Record._make(fields)


RECORDS = RecordSerializer()


def _timestamp(msg: Any) -> Optional[int]:
    kind, ts = msg.timestamp()
    return None if kind == 0 else int(ts)  # 0: TIMESTAMP_NOT_AVAILABLE


def _check_format(value_format: str) -> str:
    if value_format not in VALUE_FORMATS:
        raise ValueError(f"turbo_queue.kafka: value_format must be one of {VALUE_FORMATS}, "
                         f"not {value_format!r}")
    return value_format


class _Connector:
    """Settings shared by source and sink, in the 0.8 names (settable as attributes before start)."""

    def __init__(self, *, kafka_brokers: Optional[str], kafka_client_id: Optional[str],
                 turbo_queue_queue_name: Optional[str], turbo_queue_root_path: Optional[str],
                 value_format: str, config: Optional[dict[str, Any]],
                 turbo_queue_mode: Optional[int] = None) -> None:
        self.kafka_brokers = kafka_brokers
        self.kafka_client_id = kafka_client_id
        self.turbo_queue_queue_name = turbo_queue_queue_name
        self.turbo_queue_root_path = turbo_queue_root_path
        self.turbo_queue_mode = turbo_queue_mode  # permission bits of the queue's files (None: umask)
        self.value_format = _check_format(value_format)
        self.config = dict(config or {})
        self._stop = threading.Event()

    def _client_config(self, defaults: dict[str, Any]) -> dict[str, Any]:
        if not (self.kafka_brokers or "bootstrap.servers" in self.config):
            raise ValueError("turbo_queue.kafka: kafka_brokers (or config['bootstrap.servers']) is required")
        # librdkafka's own log lines go to our logger, not to stderr.
        conf = {"logger": logger, **defaults}
        if self.kafka_brokers:
            conf["bootstrap.servers"] = self.kafka_brokers
        if self.kafka_client_id:
            conf["client.id"] = self.kafka_client_id
        conf.update(self.config)
        return conf

    def _queue_settings(self) -> dict[str, Any]:
        if not self.turbo_queue_root_path or not self.turbo_queue_queue_name:
            raise ValueError("turbo_queue.kafka: turbo_queue_root_path and turbo_queue_queue_name "
                             "are required")
        return {"root_path": self.turbo_queue_root_path, "queue_name": self.turbo_queue_queue_name,
                "mode": self.turbo_queue_mode}

    def stop(self) -> None:
        """Ask `run()` to stop cleanly (from another thread or a signal handler)."""
        self._stop.set()

    def run(self, *, handle_signals: bool = True) -> None:
        """Work until `stop()` or SIGTERM/SIGINT, then close cleanly: the source publishes its open
        batch, commits and leaves the group; the sink finishes the batches being delivered (or gives
        them back after `stop_grace` seconds)."""
        if not self._opened():
            self.open()
        with Stopper(self._stop, "turbo_queue.kafka") if handle_signals else contextlib.nullcontext():
            try:
                while not self._stop.is_set():
                    self.poll_once()
            finally:
                self.close()

    def start(self, *, handle_signals: bool = True) -> None:
        """The 0.8 name of `run()`."""
        self.run(handle_signals=handle_signals)

    def _opened(self) -> bool:
        raise NotImplementedError

    def open(self) -> None:
        raise NotImplementedError

    def poll_once(self, timeout: float = 0.1) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class KafkaSource(_Connector):
    """Consume Kafka topics into a local queue, committing offsets only for published events.

    Backpressure: while the queue holds ``turbo_queue_max_ready_files`` ready batches, the source
    pauses its partitions and keeps polling (so it stays in the consumer group), and resumes when
    the queue has drained. On a rebalance it publishes the open batch and commits the revoked
    partitions before giving them up.
    """

    def __init__(self, topics: Optional[Iterable[str]] = None, *, kafka_brokers: Optional[str] = None,
                 kafka_group_id: Optional[str] = None, kafka_client_id: Optional[str] = None,
                 turbo_queue_queue_name: Optional[str] = None,
                 turbo_queue_root_path: Optional[str] = None,
                 turbo_queue_max_ready_files: int = 10,
                 turbo_queue_max_events_per_file: int = 10000,
                 kafka_auto_offset_reset: str = "earliest", value_format: str = "record",
                 max_batch_age: float = 1.0, durability: Literal["process", "os"] = "process",
                 config: Optional[dict[str, Any]] = None,
                 turbo_queue_mode: Optional[int] = None) -> None:
        super().__init__(kafka_brokers=kafka_brokers, kafka_client_id=kafka_client_id,
                         turbo_queue_queue_name=turbo_queue_queue_name,
                         turbo_queue_root_path=turbo_queue_root_path, value_format=value_format,
                         config=config, turbo_queue_mode=turbo_queue_mode)
        self.topics = list(topics or [])
        self.kafka_group_id = kafka_group_id
        self.turbo_queue_max_ready_files = turbo_queue_max_ready_files
        self.turbo_queue_max_events_per_file = turbo_queue_max_events_per_file
        self.kafka_auto_offset_reset = kafka_auto_offset_reset
        self.max_batch_age = max_batch_age
        self.durability = durability
        self.events = 0          # events added to the queue
        self.commits = 0         # offset commits sent
        self.paused = False      # partitions paused by backpressure
        self._consumer: Any = None
        self._queue: Optional[Enqueue] = None
        self._uncommitted = False
        self._batch_started = 0.0
        self._failed = False

    def _opened(self) -> bool:
        return self._consumer is not None

    def kafka_subscribe(self, topic: str) -> None:
        """Add a topic (the 0.8 spelling)."""
        self.topics.append(topic)

    # -- lifecycle

    def open(self) -> None:
        if not self.topics:
            raise ValueError("turbo_queue.kafka: KafkaSource needs at least one topic")
        if not self.kafka_group_id and "group.id" not in self.config:
            raise ValueError("turbo_queue.kafka: kafka_group_id (or config['group.id']) is required")
        conf = self._client_config({
            # Offsets are committed by us, and only for events in published batches.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": self.kafka_auto_offset_reset,
            "on_commit": self._on_commit,
        })
        if self.kafka_group_id:
            conf["group.id"] = self.kafka_group_id
        conf["enable.auto.commit"] = False  # at-least-once depends on it: never overridden
        self._queue = Enqueue(**self._queue_settings(), serializer=_STORED_AS[self.value_format],
                              max_events_per_file=self.turbo_queue_max_events_per_file,
                              max_ready_files=self.turbo_queue_max_ready_files,
                              # No age thread: _poll_once publishes by age, then commits.
                              max_batch_age=math.inf, durability=self.durability)
        self._consumer = Consumer(conf)
        self._consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_lost)
        logger.info("turbo_queue.kafka: source %s -> %s/%s started", self.topics,
                    self.turbo_queue_root_path, self.turbo_queue_queue_name)

    def poll_once(self, timeout: float = 0.1) -> int:
        """One round: consume what is there (up to the end of the open batch) and queue it."""
        if self._failed:
            raise RuntimeError("turbo_queue.kafka: this source failed; close it and start a new one")
        try:
            return self._poll_once(timeout)
        except BaseException:
            # Messages consume() returned may not all be queued: from here on no offset is
            # committed (close() only publishes), so they are consumed again after a restart.
            self._failed = True
            raise

    def _poll_once(self, timeout: float) -> int:
        queue = self._queue
        assert queue is not None and self._consumer is not None, "call open() first"
        pending = queue.pending()
        if pending:
            # The batch age is kept here, not by the queue's timer thread, so that every publish
            # is followed by the commit of exactly what it published.
            left = self._batch_started + self.max_batch_age - time.monotonic()
            if left <= 0:
                queue.flush()
                pending = 0
            else:
                timeout = min(timeout, left)
        room = queue.max_events_per_file - pending
        msgs = self._consumer.consume(num_messages=min(room, 100000), timeout=timeout)
        added = self._add(msgs) if msgs else 0
        if added and not pending:
            self._batch_started = time.monotonic()
        if self._uncommitted and queue.pending() == 0:
            # Everything consume() returned is in published batches now.
            self._commit(asynchronous=True)
        self._backpressure()
        return added

    def close(self) -> None:
        """Publish the open batch, commit, leave the group, release the queue. Idempotent."""
        consumer, self._consumer = self._consumer, None
        queue, self._queue = self._queue, None
        try:
            if queue is not None:
                queue.flush()
                if consumer is not None and self._uncommitted and not self._failed:
                    self._commit(asynchronous=False, consumer=consumer)
                elif self._failed:
                    logger.warning("turbo_queue.kafka: the source stopped on an error; offsets since "
                                   "the last commit were not committed, so those events will be "
                                   "consumed again")
        finally:
            if consumer is not None:
                consumer.close()
            if queue is not None:
                queue.close()
        logger.info("turbo_queue.kafka: source stopped after %d events", self.events)

    # -- the work

    def _add(self, msgs: list[Any]) -> int:
        queue = self._queue
        assert queue is not None
        errors: list[Any] = []
        if self.value_format == "record":
            events = pack_messages(msgs, errors)  # compiled: the per-message cost of the source
        else:
            good = [m for m in msgs if m.error() is None]
            if len(good) != len(msgs):
                errors = [m for m in msgs if m.error() is not None]
            events = ([m.value() or b"" for m in good] if self.value_format == "bytes"
                      else self._decode_json(good))
        for m in errors:
            self._on_error(m.error())
        if events:
            queue.add_many(events)
            self.events += len(events)
            self._uncommitted = True
        return len(events)

    def _decode_json(self, msgs: list[Any]) -> list[Any]:
        docs = []
        for m in msgs:
            try:
                docs.append(orjson.loads(m.value()))
            except orjson.JSONDecodeError as e:
                assert self._queue is not None
                self._queue.add_many(docs)
                self._queue.flush()
                raise ValueError(
                    f"turbo_queue.kafka: the message at {m.topic()}[{m.partition()}] offset "
                    f"{m.offset()} is not JSON ({e}); the messages before it are queued. Use "
                    f"value_format='bytes' or 'record' to pass values through undecoded.") from e
        return docs

    def _commit(self, *, asynchronous: bool, consumer: Any = None,
                partitions: Optional[list[Any]] = None) -> None:
        consumer = consumer or self._consumer
        # position() is the offset after the last message consume() returned; all of those are in
        # published batches whenever this is called.
        offsets = [tp for tp in consumer.position(partitions or consumer.assignment()) if tp.offset >= 0]
        self._uncommitted = False
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=asynchronous)
            self.commits += 1
        except KafkaException as e:
            # The events are safe in the queue; a missing commit only means they may come again.
            logger.warning("turbo_queue.kafka: committing %s failed (%s); those events may be "
                           "delivered again", offsets, e)

    def _backpressure(self) -> None:
        queue = self._queue
        assert queue is not None
        queue.update_enqueue_active_state()
        if self.paused == (not queue.enqueue_active):
            if self.paused:  # re-pause partitions assigned meanwhile (a rebalance)
                self._consumer.pause(self._consumer.assignment())
            return
        assignment = self._consumer.assignment()
        if queue.enqueue_active:
            self._consumer.resume(assignment)
            self.paused = False
            logger.info("turbo_queue.kafka: queue drained, resumed %d partitions", len(assignment))
        else:
            self._consumer.pause(assignment)
            self.paused = True
            logger.info("turbo_queue.kafka: %d ready batches waiting, paused %d partitions",
                        queue.get_ready_length(), len(assignment))

    # -- callbacks (run inside consume(), on this thread)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        logger.info("turbo_queue.kafka: assigned %s", _names(partitions))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        # Publish what was consumed from these partitions, and commit before another member
        # starts from the committed offsets: nothing is skipped, and little is read twice.
        if self._queue is not None:
            self._queue.flush()
            self._commit(asynchronous=False, consumer=consumer, partitions=partitions)
            self._uncommitted = True  # partitions that remain still need their commit
        logger.info("turbo_queue.kafka: revoked %s", _names(partitions))

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        # The group moved on without us: our commits would be refused. Publish anyway; the new
        # owner reads from the last commit, so those events arrive twice, never zero times.
        if self._queue is not None:
            self._queue.flush()
        logger.warning("turbo_queue.kafka: lost %s; events since the last commit may be duplicated",
                       _names(partitions))

    def _on_commit(self, err: Any, partitions: list[Any]) -> None:
        if err is not None:
            logger.warning("turbo_queue.kafka: offset commit failed: %s (those events may be "
                           "delivered again)", err)

    def _on_error(self, err: Any) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise KafkaException(err)
        logger.warning("turbo_queue.kafka: consumer error: %s", err)


class KafkaSink(_Connector):
    """Produce the events of a local queue to a Kafka topic; delete a batch only once every event
    of it was acknowledged by the broker.

    The sink claims up to ``max_in_flight`` batches, produces all their events, then waits until the
    client has a delivery report for every one of them (a fence). Only failures are reported
    (``delivery.report.only.error``): no Python call per event, which is what a per-event callback
    costs. Failed events are produced again (only those), up to ``max_attempts`` rounds with
    backoff; those that still fail are put back into the queue as a new batch, to be retried later,
    except those the broker refused for good (too large for the topic, invalid: errors that are not
    retriable), which are set aside as dead letters (``turbo-queue dead``). ``max_attempts`` is also
    the queue's: a batch that killed that many sinks has the event in hand set aside.
    Then the claimed batches are deleted: an event that was delivered is never produced again
    unless the sink is killed (or stopped while reports are outstanding: then the claimed batches
    are given back whole).
    """

    def __init__(self, topic: Optional[str] = None, *, kafka_brokers: Optional[str] = None,
                 kafka_client_id: Optional[str] = None, kafka_producer_topic: Optional[str] = None,
                 turbo_queue_queue_name: Optional[str] = None,
                 turbo_queue_root_path: Optional[str] = None, value_format: str = "record",
                 max_in_flight: int = 4, max_attempts: int = 5, retry_backoff: float = 0.5,
                 stop_grace: float = 30.0, config: Optional[dict[str, Any]] = None,
                 turbo_queue_mode: Optional[int] = None) -> None:
        super().__init__(kafka_brokers=kafka_brokers, kafka_client_id=kafka_client_id,
                         turbo_queue_queue_name=turbo_queue_queue_name,
                         turbo_queue_root_path=turbo_queue_root_path, value_format=value_format,
                         config=config, turbo_queue_mode=turbo_queue_mode)
        self.kafka_producer_topic = topic or kafka_producer_topic
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.stop_grace = stop_grace
        self.events = 0         # events acknowledged by the broker
        self.batches = 0        # batches deleted after every event was acknowledged
        self.given_back = 0     # batches returned to the queue whole (stopped or an error)
        self.requeued = 0       # events put back into the queue after failing every attempt
        self.dead_lettered = 0  # events set aside as dead letters: refused for good every attempt
        self._producer: Any = None
        self._queues: list[Dequeue] = []
        # (value, key, headers, timestamp, reason, permanent: the error is not retriable)
        self._failed: list[tuple[Any, ...]] = []
        self._produce_one: Optional[Callable[[Any], None]] = None

    def open(self) -> None:
        if not self.kafka_producer_topic:
            raise ValueError("turbo_queue.kafka: KafkaSink needs a topic")
        conf = self._client_config({
            # Every event acknowledged by all in-sync replicas, with no duplicates from retries.
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "delivery.report.only.error": True,
        })
        conf["on_delivery"] = self._report  # every batch's fate depends on it: never overridden
        self._producer = Producer(conf)
        self._produce_one = self._producer_for(self.value_format)
        settings = self._queue_settings()
        self._queues = [Dequeue(**settings, serializer=_STORED_AS[self.value_format],
                                max_attempts=self.max_attempts) for _ in range(self.max_in_flight)]
        logger.info("turbo_queue.kafka: sink %s/%s -> %s started", self.turbo_queue_root_path,
                    self.turbo_queue_queue_name, self.kafka_producer_topic)

    def _opened(self) -> bool:
        return self._producer is not None

    def _report(self, err: Any, msg: Any) -> None:
        if err is not None:  # successes too, if the user's config asked for them
            self._failed.append((msg.value(), msg.key(), msg.headers(), _timestamp(msg), str(err),
                                 _permanent(err)))

    def _producer_for(self, value_format: str) -> Callable[[Any], None]:
        produce = self._producer.produce
        topic = self.kafka_producer_topic

        if value_format == "json":
            def one(doc: Any) -> None:
                produce(topic, orjson.dumps(doc))
        else:
            def one(doc: Any) -> None:
                produce(topic, doc)
        return one

    def poll_once(self, timeout: float = 0.1) -> int:
        """One round: claim up to max_in_flight batches, produce them, wait for their delivery,
        then delete them (or give them back). Returns how many events were delivered."""
        claimed: list[tuple[Dequeue, int]] = []
        requeued = 0
        try:
            for queue in self._queues:
                events = queue.get_batch(timeout=0 if claimed else timeout)
                if not events:
                    break
                claimed.append((queue, len(events)))
                self._produce_batch(queue, events)
            if not claimed:
                return 0
            reported = self._fence() and self._retry_failed()
            if reported and self._failed:
                requeued = self._requeue_failed()
        except BaseException:
            self._give_back(claimed, "an error")
            raise
        if not reported:
            # Stopped before every report came in: which events arrived is unknown.
            self._give_back(claimed, "stopped while deliveries were outstanding")
            return 0
        count = 0
        for queue, n in claimed:
            queue.clean_up()  # every event acknowledged (or requeued): only now is the batch deleted
            count += n
        count -= requeued
        self.events += count
        self.batches += len(claimed)
        return count

    def _fence(self) -> bool:
        """Wait until every event produced so far has its delivery report; False if stopped first
        and stop_grace ran out."""
        deadline = None
        while self._producer.flush(0.5) > 0:
            if self._stop.is_set():
                deadline = deadline or time.monotonic() + self.stop_grace
                if time.monotonic() >= deadline:
                    return False
        return True

    def _retry_failed(self) -> bool:
        """Produce failed events again, up to max_attempts rounds. False if a round's reports did
        not all come in (stopped); True otherwise, with what still failed left in self._failed."""
        attempt = 1
        while self._failed and attempt < self.max_attempts:
            failed = self._failed
            logger.warning("turbo_queue.kafka: %d events were not delivered (%s); producing them "
                           "again (attempt %d of %d)", len(failed), failed[0][4], attempt + 1,
                           self.max_attempts)
            if self._stop.wait(self.retry_backoff * 2 ** (attempt - 1)):
                return True  # stopping: what failed is requeued below
            self._failed = []
            attempt += 1
            produce, topic = self._producer.produce, self.kafka_producer_topic
            for value, key, headers, ts, _reason, refused in failed:
                self._produce_retrying(lambda: produce(topic, value, key, headers=headers,
                                                       timestamp=ts or 0),
                                       (value, key, headers, ts))
                # A broker refuses a whole request for one event in it (too large): each such event
                # goes again alone, so that only the one at fault keeps failing.
                if refused and not self._fence():
                    return False
            if not self._fence():
                return False
        return True

    def _requeue_failed(self) -> int:
        """Publish the events that still failed as a new batch of this queue, so that the batches
        they came from can be deleted: they are retried later, and the events that were delivered
        are not produced twice. Those refused for good go to a dead_ batch instead."""
        failed, self._failed = self._failed, []
        dead = [f for f in failed if f[5]]
        again = [f for f in failed if not f[5]]
        serializer: Any = {"record": RECORDS, "bytes": "raw", "json": "json"}[self.value_format]
        with Enqueue(**self._queue_settings(), serializer=serializer,
                     max_events_per_file=len(failed) + 1) as queue:
            if again:
                queue.add_many(self._as_events(again))
            if dead:
                queue.add_dead_letters(self._as_events(dead))
        if again:
            self.requeued += len(again)
            logger.error("turbo_queue.kafka: %d events could not be delivered after %d attempts (%s); "
                         "they were put back into the queue as a new batch, to be retried",
                         len(again), self.max_attempts, again[0][4])
        if dead:
            self.dead_lettered += len(dead)
            logger.error("turbo_queue.kafka: %d events were refused by the broker for good, %d times "
                         "each (%s); they were set aside as dead letters in %s/%s: see them with "
                         "`turbo-queue dead`, return them with `turbo-queue requeue`", len(dead),
                         self.max_attempts, dead[0][4], self.turbo_queue_root_path,
                         self.turbo_queue_queue_name)
        return len(failed)

    def _as_events(self, failed: list[tuple[Any, ...]]) -> list[Any]:
        """Failed deliveries as the queue's events again."""
        if self.value_format == "record":
            return [Record(v, k, tuple(h) if h else None, ts) for v, k, h, ts, *_ in failed]
        if self.value_format == "bytes":
            return [v for v, *_ in failed]
        return [orjson.loads(v) for v, *_ in failed]

    def _produce_batch(self, queue: Dequeue, events: list[Any]) -> None:
        if self.value_format == "record":
            produce = self._producer.produce
            topic = self.kafka_producer_topic
            assert topic is not None
            i, n = 0, len(events)
            while i < n:
                errors: list[tuple[int, BaseException]] = []
                i_next = produce_packed(produce, topic, events, i, None, KafkaException, errors)
                for k, e in errors:
                    record = self._record_at(queue, events, k)
                    self._failed.append((record.value, record.key,
                                         list(record.headers) if record.headers else None,
                                         record.timestamp, str(e), _permanent(e)))
                if i_next < n:
                    self._producer.poll(0.05)  # the client's queue is full: let it drain
                i = i_next
            return
        one = self._produce_one
        assert one is not None
        for event in events:
            try:
                one(event)
            except BufferError:
                self._produce_retrying(lambda: one(event), event)
            except KafkaException as e:
                self._failed.append(self._as_failed(event, e))

    def _produce_retrying(self, call: Callable[[], None], event: Any) -> None:
        while True:
            try:
                call()
                return
            except BufferError:
                self._producer.poll(0.05)  # the client's queue is full: let it drain
            except KafkaException as e:
                # Refused before sending (too large for the client, say): a failed delivery, so
                # the batch is never deleted with this event missing.
                self._failed.append(self._as_failed(event, e))
                return

    def _record_at(self, queue: Dequeue, packed: list[bytes], k: int) -> Record:
        try:
            return RECORDS.loads(packed[k])
        except Exception as e:
            raise ValueError(
                f"turbo_queue.kafka: event {k} of {queue.batch_path} is not a turbo_queue.kafka "
                f"Record ({e}). The batch was given back. Producers into this queue must use "
                f"serializer=turbo_queue.kafka.RECORDS, or run the sink with value_format='bytes'.") from e

    def _as_failed(self, event: Any, error: BaseException) -> tuple[Any, ...]:
        reason, permanent = str(error), _permanent(error)
        if isinstance(event, tuple):
            return (*event[:4], reason, permanent)
        if self.value_format == "json":
            return (orjson.dumps(event), None, None, None, reason, permanent)
        return (event, None, None, None, reason, permanent)

    def _give_back(self, claimed: list[tuple[Dequeue, int]], reason: str) -> None:
        if not claimed:
            return
        logger.error("turbo_queue.kafka: %d batches given back to the queue, to be produced again "
                     "whole (%s): %s", len(claimed), reason, ", ".join(str(q.batch_path) for q, _ in claimed))
        for queue, _ in claimed:
            queue.roll_back()
        self.given_back += len(claimed)
        self._failed = []

    def close(self) -> None:
        """Release the queue and the producer. Idempotent."""
        if self._producer is None:
            return
        try:
            for queue in self._queues:
                queue.close()
        finally:
            self._queues = []
            self._producer = None
        logger.info("turbo_queue.kafka: sink stopped after %d events", self.events)


# Errors that refuse the event itself, so that producing it again cannot succeed; any other (the
# broker away, no such topic, not authorized) is the pipeline's, and its events are retried.
_REFUSES_THE_EVENT = frozenset(getattr(KafkaError, name) for name in (
    "MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "INVALID_MSG", "INVALID_MSG_SIZE", "INVALID_RECORD",
    "RECORD_LIST_TOO_LARGE", "INVALID_TIMESTAMP", "_BAD_MSG") if hasattr(KafkaError, name))


def _permanent(error: Any) -> bool:
    """Whether a delivery failed for good (see _REFUSES_THE_EVENT): a KafkaError, or a
    KafkaException holding one."""
    err = error.args[0] if isinstance(error, KafkaException) and error.args else error
    code = getattr(err, "code", None)
    return callable(code) and code() in _REFUSES_THE_EVENT


def _names(partitions: Iterable[Any]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"


class KafkaEnqueue(KafkaSource):
    """The 0.8 ``KafkaEnqueue``: JSON values decoded into the queue as the original did; set the
    0.8 properties, ``kafka_subscribe(topic)``, then ``start()``. Unlike 0.8 it commits offsets only
    for published events, and starts a new group at the earliest offset (``kafka_auto_offset_reset``)."""

    def __init__(self, **settings: Any) -> None:
        settings.setdefault("value_format", "json")
        super().__init__(**settings)


class KafkaDequeue(KafkaSink):
    """The 0.8 ``KafkaDequeue``: JSON events of the queue produced to ``kafka_producer_topic``."""

    def __init__(self, **settings: Any) -> None:
        settings.setdefault("value_format", "json")
        super().__init__(**settings)
