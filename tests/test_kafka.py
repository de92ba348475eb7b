"""Kafka connectors against a real Apache Kafka broker (tests/conftest.py: kafka_broker).

Every component runs as its own process (the `turbo-queue kafka-source` / `kafka-sink` commands and
the example's workers), and crashes are real SIGKILLs.
"""

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import orjson
import pytest

from helpers import REPO, batch_files, drain_all, run_script

ck = pytest.importorskip("confluent_kafka", reason="the kafka extra is not installed")
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic  # noqa: E402

import turbo_queue  # noqa: E402
from turbo_queue._core import events_in_name  # noqa: E402

kafka = pytest.importorskip("turbo_queue.kafka")

EXAMPLE = REPO / "examples" / "kafka_pipeline.py"
# The tests' own clients log through logging (captured), not on stderr.
QUIET = {"logger": logging.getLogger("tests.kafka.clients")}
# Short session timeouts so that a SIGKILLed member leaves the group in seconds, not 45 s.
# Message timestamps (kept end to end): recent, as a broker's time-based retention expects.
BASE_TS = int(time.time()) * 1000 - 3_600_000
FAST_GROUP = ["--config", "session.timeout.ms=6000", "--config", "heartbeat.interval.ms=1000"]


def _example():
    spec = importlib.util.spec_from_file_location("kafka_pipeline", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wait_for(condition, timeout, what):
    """Poll `condition` until it is true; fail saying `what` did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def new_topic(broker, partitions=4, config=None):
    name = f"t-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({**QUIET, "bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(name, partitions, 1, config=config or {})]).values():
        future.result(30)
    return name


def produce_ids(broker, topic, start, count):
    """Values {"id": i, ...} with a key and a header each, so that both can be checked at the end."""
    p = Producer({**QUIET, "bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for i in range(start, start + count):
        p.produce(topic, orjson.dumps({"id": i, "pad": "x" * 40}), key=b"k%d" % (i % 16),
                  headers=[("seq", str(i).encode())], timestamp=BASE_TS + i)
        if i % 5000 == 0:
            p.poll(0)
    assert p.flush(30) == 0


def high_watermarks(broker, topic):
    c = Consumer({**QUIET, "bootstrap.servers": broker.bootstrap, "group.id": "watermarks"})
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in meta.partitions}
    finally:
        c.close()


_admins = {}


def admin_for(broker):
    """One admin client per broker: creating one costs tens of milliseconds, which matters where a
    test polls offsets to catch a moment mid-stream."""
    if broker.bootstrap not in _admins:
        _admins[broker.bootstrap] = AdminClient({**QUIET, "bootstrap.servers": broker.bootstrap})
    return _admins[broker.bootstrap]


def committed(broker, group):
    admin = admin_for(broker)
    for _ in range(100):
        (future,) = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)]).values()
        try:
            return {tp.partition: tp.offset for tp in future.result(10).topic_partitions}
        except ck.KafkaException as e:
            if not e.args[0].retriable():  # e.g. the group coordinator is still loading
                raise
            time.sleep(0.1)
    raise AssertionError(f"the offsets of group {group} could not be read")


def committed_total(broker, group):
    """Offsets committed over all partitions (a partition without a commit counts 0, not -1001)."""
    return sum(max(offset, 0) for offset in committed(broker, group).values())


def read_all(broker, topic, want_ids, timeout=120):
    """Every message of `topic` until each of want_ids was seen (and the topic is read to its end)."""
    c = Consumer({**QUIET, "bootstrap.servers": broker.bootstrap, "group.id": f"check-{uuid.uuid4().hex}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got, seen = [], set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for m in c.consume(10000, 0.5):
                assert m.error() is None, m.error()
                got.append(m)
                seen.add(orjson.loads(m.value())["id"])
            if want_ids <= seen:
                ends = high_watermarks(broker, topic)
                if sum(ends.values()) <= len(got):
                    return got
        missing = sorted(want_ids - seen)
        raise AssertionError(f"{len(missing)} events never reached {topic}, e.g. {missing[:10]}")
    finally:
        c.close()


class Pipeline:
    """source -> queue "in" -> workers -> queue "out" -> sink, each a real process."""

    def __init__(self, broker, root, in_topic, out_topic, group, logs):
        self.broker, self.root, self.in_topic, self.out_topic, self.group = broker, str(root), in_topic, out_topic, group
        self.logs = logs
        self.procs = {}

    def _start(self, name, argv):
        with open(self.logs / f"{name}-{len(self.procs)}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        return self.procs[name]

    def source(self, *extra):
        return self._start("source", [
            sys.executable, "-m", "turbo_queue", "kafka-source", "--brokers", self.broker.bootstrap,
            "--root-path", self.root, "--queue-name", "in", "--topic", self.in_topic,
            "--group", self.group, *FAST_GROUP, *extra])

    def sink(self, *extra):
        return self._start("sink", [
            sys.executable, "-m", "turbo_queue", "kafka-sink", "--brokers", self.broker.bootstrap,
            "--root-path", self.root, "--queue-name", "out", "--topic", self.out_topic, *extra])

    def workers(self, n):
        for i in range(n):
            self._start(f"worker{i}", [sys.executable, str(EXAMPLE), "worker", self.root, "in", "out"])

    def stop(self, name, sig=signal.SIGTERM):
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        return proc.wait(60)

    def stop_all(self):
        codes = {}
        for name in ["source", *[n for n in self.procs if n.startswith("worker")], "sink"]:
            if name in self.procs:
                codes[name] = self.stop(name)
        return codes

    def log_text(self):
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.logs.iterdir()))


@pytest.fixture
def pipeline(kafka_broker, tmp_path):
    root = tmp_path / "queues"
    logs = tmp_path / "logs"
    logs.mkdir()
    p = Pipeline(kafka_broker, root, new_topic(kafka_broker, 4), new_topic(kafka_broker, 4),
                 f"g-{uuid.uuid4().hex[:8]}", logs)
    yield p
    for proc in p.procs.values():
        proc.kill()
        proc.wait()


def check_output(msgs, n, report):
    """Every id 0..n-1 is in the output with the right content, key, header and timestamp."""
    transform = _example().transform
    ids = Counter()
    for m in msgs:
        doc = orjson.loads(m.value())
        i = doc["id"]
        ids[i] += 1
        if ids[i] == 1:
            source = kafka.Record(orjson.dumps({"id": i, "pad": "x" * 40}))
            assert m.value() == transform(source).value
            assert m.key() == b"k%d" % (i % 16)
            assert m.headers() == [("seq", str(i).encode())]
            assert m.timestamp()[1] == BASE_TS + i
    assert set(ids) == set(range(n)), f"missing: {sorted(set(range(n)) - set(ids))[:10]}"
    duplicates = sum(c - 1 for c in ids.values())
    report(f"{n} events in, {len(msgs)} out: {duplicates} duplicates")
    return duplicates


@pytest.fixture
def report(request):
    """Say a measured figure (duplicates) in the test report, not only on failure."""
    def say(text):  # shown at the end of the run by conftest.pytest_terminal_summary
        request.node.user_properties.append(("figure", text))
    return say


# -- without a broker


def test_turbo_queue_imports_without_confluent_kafka_and_kafka_says_what_to_install():
    proc = run_script("""
        import sys
        sys.modules["confluent_kafka"] = None  # as if not installed
        import turbo_queue
        assert turbo_queue.Enqueue
        try:
            import turbo_queue.kafka
        except ImportError as e:
            print(e)
        else:
            raise SystemExit("turbo_queue.kafka imported without confluent_kafka")
    """)
    assert "pip install 'turbo-queue[kafka]'" in proc.stdout


def test_record_serializer_keeps_bytes_keys_headers_and_none():
    records = [
        kafka.Record(b"\x00\xff value", b"key", (("a", b"1"), ("b", None)), 1234, "t", 3, 99),
        kafka.Record(None),  # a tombstone
        kafka.Record(b""),
    ]
    for r in records:
        assert kafka.RECORDS.loads(kafka.RECORDS.dumps(r)) == r
    assert kafka.RECORDS.loads(kafka.RECORDS.dumps(b"raw")) == kafka.Record(b"raw")
    with pytest.raises(TypeError, match="dict"):
        kafka.RECORDS.dumps({"not": "a record"})


class FakeMessage:
    """The accessors of confluent_kafka.Message, for the packer (which only calls them)."""

    def __init__(self, value, key=None, headers=None, timestamp=(0, -1), topic="t", partition=0,
                 offset=0, error=None):
        self._f = dict(value=value, key=key, headers=headers, timestamp=timestamp, topic=topic,
                       partition=partition, offset=offset, error=error)

    def value(self): return self._f["value"]
    def key(self): return self._f["key"]
    def headers(self): return self._f["headers"]
    def timestamp(self): return self._f["timestamp"]
    def topic(self): return self._f["topic"]
    def partition(self): return self._f["partition"]
    def offset(self): return self._f["offset"]
    def error(self): return self._f["error"]


def test_compiled_packer_writes_what_msgpack_reads():
    from turbo_queue._kafka_codec import pack_messages

    big = bytes(range(256)) * 300  # 76,800 bytes: the 32-bit length form
    msgs = [
        FakeMessage(b"v", b"k", [("h1", b"x"), ("h2", None)], (1, 1_700_000_000_123), "topic", 3, 2**40),
        FakeMessage(None, None, None, (0, -1), "t" * 40, 0, 0),  # tombstone, no timestamp, str8 topic
        FakeMessage(b"x" * 300, b"y" * 70_000, [("k" * 33, b"z" * 5)] * 17, (2, 5), "\u00e9t\u00e9", 2**31 - 1, 7),
        FakeMessage(big, b"", [], (1, 0), "t", 1, 1),
        FakeMessage(b"bad", error="a consumer error"),
    ]
    errors = []
    packed = pack_messages(msgs, errors)
    assert [e.error() for e in errors] == ["a consumer error"]
    expected = [
        kafka.Record(b"v", b"k", (("h1", b"x"), ("h2", None)), 1_700_000_000_123, "topic", 3, 2**40),
        kafka.Record(None, None, None, None, "t" * 40, 0, 0),
        kafka.Record(b"x" * 300, b"y" * 70_000, (("k" * 33, b"z" * 5),) * 17, 5, "\u00e9t\u00e9", 2**31 - 1, 7),
        kafka.Record(big, b"", (), 0, "t", 1, 1),
    ]
    assert [kafka.RECORDS.loads(b) for b in packed] == expected
    with pytest.raises(TypeError):
        pack_messages([FakeMessage("not bytes")], [])


from hypothesis import given, settings, strategies as st  # noqa: E402

_maybe_bytes = st.none() | st.binary(max_size=70_000)
_records = st.builds(
    kafka.Record, _maybe_bytes, _maybe_bytes,
    st.none() | st.lists(st.tuples(st.text(max_size=40), st.none() | st.binary(max_size=40)), max_size=20).map(tuple),
    st.none() | st.integers(-2**63, 2**63 - 1), st.text(min_size=1, max_size=300),
    st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1))


@settings(max_examples=200, deadline=None)
@given(_records)
def test_compiled_reader_and_writer_agree_with_msgpack(record):
    import msgpack

    from turbo_queue._kafka_codec import pack_messages, unpack_record

    written_by_msgpack = kafka.RECORDS.dumps(record)
    assert unpack_record(written_by_msgpack, kafka.Record) == record
    ts = (0, -1) if record.timestamp is None else (1, record.timestamp)
    (written_by_us,) = pack_messages([FakeMessage(record.value, record.key,
                                                  None if record.headers is None else list(record.headers),
                                                  ts, record.topic, record.partition, record.offset)], [])
    assert msgpack.unpackb(written_by_us, raw=False, use_list=False) == tuple(record)
    assert kafka.RECORDS.loads(written_by_us) == record


def test_bad_settings_are_refused_before_connecting(tmp_path):
    with pytest.raises(ValueError, match="value_format"):
        kafka.KafkaSource(["t"], value_format="xml")
    with pytest.raises(ValueError, match="kafka_group_id"):
        kafka.KafkaSource(["t"], kafka_brokers="127.0.0.1:1", turbo_queue_root_path=str(tmp_path),
                          turbo_queue_queue_name="q").open()
    with pytest.raises(ValueError, match="topic"):
        kafka.KafkaSink(kafka_brokers="127.0.0.1:1", turbo_queue_root_path=str(tmp_path),
                        turbo_queue_queue_name="q").open()


# -- against the broker


def test_end_to_end_100k_events_through_source_workers_and_sink(pipeline, kafka_broker, report):
    n = 100_000
    produce_ids(kafka_broker, pipeline.in_topic, 0, n)
    pipeline.source("--max-events-per-file", "5000")
    pipeline.workers(4)
    pipeline.sink()
    msgs = read_all(kafka_broker, pipeline.out_topic, set(range(n)))
    assert check_output(msgs, n, report) == 0  # no crash, no duplicate
    codes = pipeline.stop_all()
    assert codes == {"source": 0, "worker0": 0, "worker1": 0, "worker2": 0, "worker3": 0, "sink": 0}, \
        pipeline.log_text()
    # A clean stop committed every offset, and left no batch behind.
    assert committed(kafka_broker, pipeline.group) == high_watermarks(kafka_broker, pipeline.in_topic)
    for q in ("in", "out"):
        assert batch_files(os.path.join(pipeline.root, q)) == []


def _queued(root, queue):
    folder = os.path.join(root, queue)
    return sum(events_in_name(n) or 0 for n in batch_files(folder, "ready_")) if os.path.isdir(folder) else 0


def test_source_killed_mid_stream_loses_nothing(pipeline, kafka_broker, report):
    n = 100_000
    produce_ids(kafka_broker, pipeline.in_topic, 0, n)
    # Small batches and a short ready list: the source runs at the workers' pace, so that the
    # kill lands while it is consuming.
    args = ("--max-events-per-file", "1000", "--max-ready-files", "2")
    pipeline.source(*args)
    pipeline.workers(2)
    pipeline.sink()
    wait_for(lambda: 10_000 <= committed_total(kafka_broker, pipeline.group), 60,
             "the source to commit 10,000 offsets")
    done = committed_total(kafka_broker, pipeline.group)
    assert pipeline.stop("source", signal.SIGKILL) == -signal.SIGKILL
    assert done < n, "the source finished before the kill: the test did not test a crash"
    pipeline.source(*args)
    msgs = read_all(kafka_broker, pipeline.out_topic, set(range(n)))
    check_output(msgs, n, report)
    assert pipeline.stop_all()["source"] == 0


def test_source_killed_between_a_publish_and_its_commit_delivers_that_batch_again(pipeline, kafka_broker, report):
    """The narrowest window: the batch is ready_ but its offsets are not committed. The core's crash
    hook SIGKILLs the source right after its third publish, before the commit that follows."""
    n = 20_000
    produce_ids(kafka_broker, pipeline.in_topic, 0, n)
    args = ("--max-events-per-file", "1000", "--max-ready-files", "1000")
    with open(pipeline.logs / "source-crash.log", "wb") as log:
        crashed = subprocess.Popen(
            [sys.executable, "-m", "turbo_queue", "kafka-source", "--brokers", kafka_broker.bootstrap,
             "--root-path", pipeline.root, "--queue-name", "in", "--topic", pipeline.in_topic,
             "--group", pipeline.group, *FAST_GROUP, *args],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, TURBO_QUEUE_CRASH_AT="published:3"))
    assert crashed.wait(60) == -signal.SIGKILL
    assert _queued(pipeline.root, "in") == 3000  # three batches published...
    # ...and the third one's commit never sent (commits are asynchronous, so the second one's may
    # not have reached the broker either).
    done = committed_total(kafka_broker, pipeline.group)
    assert done in (0, 1000, 2000), done
    pipeline.source(*args)
    pipeline.workers(2)
    pipeline.sink()
    msgs = read_all(kafka_broker, pipeline.out_topic, set(range(n)))
    duplicates = check_output(msgs, n, report)
    # Exactly the published events whose commit was lost: a commit the source sent before the kill
    # can reach the broker after `done` was read (it only lowers the count, by whole batches).
    assert duplicates in range(1000, 3000 - done + 1, 1000), (duplicates, done)
    assert pipeline.stop_all()["source"] == 0


def test_sink_killed_mid_stream_loses_nothing(pipeline, kafka_broker, report):
    n = 100_000
    produce_ids(kafka_broker, pipeline.in_topic, 0, n)
    pipeline.source("--max-events-per-file", "2000")
    pipeline.workers(2)
    pipeline.sink()
    wait_for(lambda: sum(high_watermarks(kafka_broker, pipeline.out_topic).values()) >= 10_000, 60,
             "the sink to deliver 10,000 events")
    assert pipeline.stop("sink", signal.SIGKILL) == -signal.SIGKILL
    delivered = sum(high_watermarks(kafka_broker, pipeline.out_topic).values())
    assert delivered < n, "the sink finished before the kill: the test did not test a crash"
    pipeline.sink()
    msgs = read_all(kafka_broker, pipeline.out_topic, set(range(n)))
    check_output(msgs, n, report)
    assert pipeline.stop_all()["sink"] == 0


def test_sink_killed_after_delivery_before_deleting_delivers_those_batches_again(kafka_broker, tmp_path, report):
    """The sink's narrowest window: the broker has every event of the claimed batches, but the
    batches are not deleted yet. The core's crash hook SIGKILLs it as it deletes the second one."""
    topic = new_topic(kafka_broker, 4)
    n = 5000
    with turbo_queue.Enqueue(root_path=str(tmp_path), queue_name="out", serializer=kafka.RECORDS,
                             max_events_per_file=1000) as q:
        q.add_many(kafka.Record(orjson.dumps({"id": i})) for i in range(n))
    argv = [sys.executable, "-m", "turbo_queue", "kafka-sink", "--brokers", kafka_broker.bootstrap,
            "--root-path", str(tmp_path), "--queue-name", "out", "--topic", topic, "--max-in-flight", "4"]
    with open(tmp_path / "sink.log", "wb") as log:
        crashed = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, TURBO_QUEUE_CRASH_AT="delete:2"))
    assert crashed.wait(60) == -signal.SIGKILL, (tmp_path / "sink.log").read_text()
    # Four batches were claimed and delivered; one was deleted before the kill.
    assert sum(high_watermarks(kafka_broker, topic).values()) == 4000
    assert len(batch_files(tmp_path / "out")) == 4
    with open(tmp_path / "sink2.log", "wb") as log:
        sink = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        msgs = read_all(kafka_broker, topic, set(range(n)))
    finally:
        sink.send_signal(signal.SIGTERM)
        assert sink.wait(60) == 0
    ids = Counter(orjson.loads(m.value())["id"] for m in msgs)
    assert set(ids) == set(range(n))
    duplicates = sum(c - 1 for c in ids.values())
    report(f"{n} events, {len(msgs)} delivered: {duplicates} duplicates")
    assert duplicates == 3000  # the three delivered batches that were not deleted yet
    assert batch_files(tmp_path / "out") == []


def test_two_sources_in_one_group_split_partitions_and_survive_a_rebalance(kafka_broker, tmp_path, report):
    topic, group = new_topic(kafka_broker, 4), f"g-{uuid.uuid4().hex[:8]}"
    for i in (0, 1):
        (tmp_path / f"logs{i}").mkdir()
    hosts = [Pipeline(kafka_broker, tmp_path / f"host{i}", topic, "-", group, tmp_path / f"logs{i}")
             for i in (0, 1)]
    try:
        for h in hosts:
            h.source("--max-events-per-file", "1000", "--max-batch-age", "0.2", "--max-ready-files", "1000")
        # Both members hold partitions before anything is produced.
        def both_assigned():
            logs = [p.read_text() for p in tmp_path.glob("logs*/source-*.log")]
            lasts = [[line for line in text.splitlines() if "assigned" in line] for text in logs]
            return len(lasts) == 2 and all(l and not l[-1].endswith("nothing") for l in lasts)
        wait_for(both_assigned, 60, "both sources to be assigned partitions")
        produce_ids(kafka_broker, topic, 0, 50_000)
        wait_for(lambda: sum(_queued(h.root, "in") for h in hosts) >= 50_000, 60,
                 "the two sources to queue the first 50,000 events")
        assert hosts[1].stop("source") == 0  # a clean stop: publish, commit, leave the group
        produce_ids(kafka_broker, topic, 50_000, 50_000)
        wait_for(lambda: _queued(hosts[0].root, "in") + _queued(hosts[1].root, "in") >= 100_000, 60,
                 "host 0 to take over every partition")
        assert hosts[0].stop("source") == 0
    finally:
        for h in hosts:
            for proc in h.procs.values():
                proc.kill()
    got = [drain_all(h.root, "in", serializer=kafka.RECORDS) for h in hosts]
    parts = [{r.partition for r in g if orjson.loads(r.value)["id"] < 50_000} for g in got]
    assert parts[0] and parts[1] and not parts[0] & parts[1], f"partitions were not split: {parts}"
    assert {r.partition for r in got[0] if orjson.loads(r.value)["id"] >= 50_000} == {0, 1, 2, 3}
    ids = Counter(orjson.loads(r.value)["id"] for g in got for r in g)
    assert set(ids) == set(range(100_000))
    report(f"host0 {len(got[0])}, host1 {len(got[1])} events; "
           f"{sum(c - 1 for c in ids.values())} duplicates")


def test_backpressure_pauses_partitions_without_leaving_the_group(kafka_broker, tmp_path):
    topic, group = new_topic(kafka_broker, 2), f"g-{uuid.uuid4().hex[:8]}"
    n = 20_000
    produce_ids(kafka_broker, topic, 0, n)
    host = Pipeline(kafka_broker, tmp_path, topic, "-", group, tmp_path)
    host.source("--max-events-per-file", "1000", "--max-ready-files", "3",
                "--config", "max.poll.interval.ms=6000")
    try:
        wait_for(lambda: _queued(host.root, "in") >= 3000, 60, "three ready batches")
        admin = AdminClient({**QUIET, "bootstrap.servers": kafka_broker.bootstrap})

        def group_state():
            (f,) = admin.describe_consumer_groups([group]).values()
            g = f.result(10)
            return str(g.state), len(g.members)

        before = group_state()
        # Longer than max.poll.interval.ms and session.timeout.ms: a source that stopped polling
        # would have been thrown out of the group by now. Polled, not slept through blindly.
        deadline = time.monotonic() + 8
        peak = 0
        while time.monotonic() < deadline:
            peak = max(peak, len(batch_files(os.path.join(host.root, "in"), "ready_")))
            time.sleep(0.1)
        assert peak <= 4, f"{peak} ready batches: the source did not pause at 3"
        assert group_state() == before == ("ConsumerGroupState.STABLE", 1)
        assert _queued(host.root, "in") < n
        # Drain: the source resumes and queues the rest.
        got = []
        consumer = turbo_queue.Dequeue(root_path=host.root, queue_name="in", serializer=kafka.RECORDS,
                                       wait_timeout=0.5)
        deadline = time.monotonic() + 60
        while len(got) < n and time.monotonic() < deadline:
            got += consumer.get_batch()
        consumer.close()
        assert sorted(orjson.loads(r.value)["id"] for r in got) == list(range(n))
        assert "paused" in (tmp_path / "source-0.log").read_text()
        assert "resumed" in (tmp_path / "source-0.log").read_text()
        assert "revoked" not in (tmp_path / "source-0.log").read_text()
    finally:
        assert host.stop("source") == 0


def test_sink_sets_aside_what_the_broker_refuses_for_good_and_produces_nothing_twice(kafka_broker, tmp_path, caplog, report):
    # The topic refuses record batches over 20,000 bytes, and one large event is keyed to one of its
    # two partitions: the requests that carry it fail whole, with the small events beside it.
    topic = new_topic(kafka_broker, 2, config={"max.message.bytes": "20000"})
    root = str(tmp_path)
    folder = os.path.join(root, "out")
    big = 7
    with turbo_queue.Enqueue(root_path=root, queue_name="out", serializer=kafka.RECORDS) as q:
        q.add_many(kafka.Record(orjson.dumps({"id": i, "pad": "y" * (50_000 if i == big else 10)}),
                                b"k%d" % i) for i in range(100))
    sink = kafka.KafkaSink(topic, kafka_brokers=kafka_broker.bootstrap, turbo_queue_root_path=root,
                           turbo_queue_queue_name="out", max_attempts=3, retry_backoff=0.1)
    thread = threading.Thread(target=sink.run, kwargs={"handle_signals": False})
    caplog.set_level(logging.WARNING, "turbo_queue")
    thread.start()
    try:
        # Retried alone, the small events are delivered; the large one, refused 3 times, is set
        # aside as a dead letter instead of going round the queue without end.
        wait_for(lambda: sink.events >= 99, 60, "every event but the large one to be delivered")
        assert sink.dead_lettered == 1 and sink.requeued == 0
        letters = turbo_queue.dead_letters(folder)
        assert [orjson.loads(kafka.RECORDS.loads(d.value).value)["id"] for d in letters] == [big]
        assert "MSG_SIZE_TOO_LARGE" in caplog.text or "too large" in caplog.text.lower()
        assert [n for n in os.listdir(folder) if n.startswith(("ready_", "chosen_"))] == []
        # The fault is fixed and the dead letter requeued: the sink delivers it.
        admin = AdminClient({**QUIET, "bootstrap.servers": kafka_broker.bootstrap})
        entry = ConfigEntry("max.message.bytes", "100000", incremental_operation=AlterConfigOpType.SET)
        resource = ConfigResource("topic", topic, incremental_configs=[entry])
        for f in admin.incremental_alter_configs([resource]).values():
            f.result(10)
        assert len(turbo_queue.requeue(folder, all=True)) == 1
        wait_for(lambda: sink.events >= 100, 60, "the requeued event to be delivered")
    finally:
        sink.stop()
        thread.join(60)
    msgs = read_all(kafka_broker, topic, set(range(100)))
    ids = Counter(orjson.loads(m.value())["id"] for m in msgs)
    assert set(ids) == set(range(100))
    assert len(msgs) == 100, f"{len(msgs) - 100} events were produced twice"
    assert batch_files(folder) == []
    report(f"99 of 100 delivered at first, 1 set aside after 3 refusals, requeued, {len(msgs)} "
           f"delivered in all")


def test_08_style_json_connectors(kafka_broker, tmp_path):
    """KafkaEnqueue/KafkaDequeue as 0.8 used them: properties, kafka_subscribe, JSON in the queue."""
    in_topic, out_topic = new_topic(kafka_broker, 2), new_topic(kafka_broker, 1)
    produce_ids(kafka_broker, in_topic, 0, 1000)
    src = kafka.KafkaEnqueue()
    src.kafka_brokers = kafka_broker.bootstrap
    src.kafka_group_id = f"g-{uuid.uuid4().hex[:8]}"
    src.kafka_client_id = "test"
    src.turbo_queue_queue_name = "docs"
    src.turbo_queue_root_path = str(tmp_path)
    src.turbo_queue_max_events_per_file = 100
    src.kafka_subscribe(in_topic)
    thread = threading.Thread(target=src.start, kwargs={"handle_signals": False})
    thread.start()
    wait_for(lambda: src.events >= 1000, 60, "1,000 events queued")
    src.stop()
    thread.join(60)
    # The queue holds plain JSON documents, as the pure-Python package wrote them.
    docs = turbo_queue.Dequeue(root_path=str(tmp_path), queue_name="docs", wait_timeout=0)
    first = docs.get_many(1)
    assert isinstance(first[0], dict) and "id" in first[0]
    docs.roll_back()
    docs.close()
    sink = kafka.KafkaDequeue(kafka_brokers=kafka_broker.bootstrap, turbo_queue_root_path=str(tmp_path),
                              turbo_queue_queue_name="docs", kafka_producer_topic=out_topic)
    thread = threading.Thread(target=sink.start, kwargs={"handle_signals": False})
    thread.start()
    wait_for(lambda: sink.events >= 1000, 60, "1,000 events delivered")
    sink.stop()
    thread.join(60)
    msgs = read_all(kafka_broker, out_topic, set(range(1000)))
    assert sorted(orjson.loads(m.value())["id"] for m in msgs) == list(range(1000))


def test_a_slow_trickle_is_published_and_committed_within_max_batch_age(kafka_broker, tmp_path):
    """At a low rate the open batch never fills: it is published by age, and its offsets committed,
    while messages keep arriving."""
    topic, group = new_topic(kafka_broker, 1), f"g-{uuid.uuid4().hex[:8]}"
    src = kafka.KafkaSource([topic], kafka_brokers=kafka_broker.bootstrap, kafka_group_id=group,
                            turbo_queue_root_path=str(tmp_path), turbo_queue_queue_name="q",
                            max_batch_age=0.2)
    thread = threading.Thread(target=src.run, kwargs={"handle_signals": False})
    thread.start()
    stop = threading.Event()

    def trickle():
        p = Producer({**QUIET, "bootstrap.servers": kafka_broker.bootstrap, "linger.ms": 0})
        i = 0
        while not stop.is_set():
            p.produce(topic, orjson.dumps({"id": i}))
            p.flush(5)
            i += 1
            stop.wait(0.02)

    producer = threading.Thread(target=trickle)
    producer.start()
    try:
        wait_for(lambda: committed(kafka_broker, group).get(0, -1) >= 40, 30,
                 "offsets to be committed while the trickle goes on")
        assert producer.is_alive() and not stop.is_set()
        assert _queued(str(tmp_path), "q") >= 40  # committed only what is in published batches
    finally:
        stop.set()
        producer.join(10)
        src.stop()
        thread.join(30)
    # Stopped cleanly: the open batch was published and exactly what was queued is committed.
    assert committed(kafka_broker, group)[0] == src.events == _queued(str(tmp_path), "q")


def test_a_message_that_is_not_json_stops_the_source_without_skipping_anything(kafka_broker, tmp_path):
    topic, group = new_topic(kafka_broker, 1), f"g-{uuid.uuid4().hex[:8]}"
    p = Producer({**QUIET, "bootstrap.servers": kafka_broker.bootstrap})
    for value in [b'{"id": 0}', b'{"id": 1}', b"not json", b'{"id": 3}', b'{"id": 4}']:
        p.produce(topic, value)
    assert p.flush(10) == 0
    settings = dict(kafka_brokers=kafka_broker.bootstrap, kafka_group_id=group,
                    turbo_queue_root_path=str(tmp_path), turbo_queue_queue_name="q")
    src = kafka.KafkaSource([topic], value_format="json", **settings)
    with pytest.raises(ValueError, match=rf"{topic}\[0\] offset 2 is not JSON"):
        src.run(handle_signals=False)
    # The two good messages before it are queued; no offset past them was committed, so the bad
    # message and those after it are still there for a source that can take them.
    assert drain_all(tmp_path) == [{"id": 0}, {"id": 1}]
    assert committed(kafka_broker, group).get(0, -1001) <= 2
    src = kafka.KafkaSource([topic], value_format="bytes", **settings)
    src.open()
    wait_for(lambda: src.poll_once() >= 0 and src.events >= 3, 30, "the rest of the partition")
    src.close()
    values = drain_all(tmp_path, serializer="raw")
    assert values[-3:] == [b"not json", b'{"id": 3}', b'{"id": 4}']


def test_sink_stops_on_events_that_are_not_records_and_keeps_the_batch(kafka_broker, tmp_path):
    topic = new_topic(kafka_broker, 1)
    with turbo_queue.Enqueue(root_path=str(tmp_path), queue_name="out", serializer="raw") as q:
        q.add_many([b"\x97 plain bytes, not a record", b"more"])
    sink = kafka.KafkaSink(topic, kafka_brokers=kafka_broker.bootstrap, turbo_queue_root_path=str(tmp_path),
                           turbo_queue_queue_name="out")
    with pytest.raises(ValueError, match="value_format='bytes'"):
        sink.run(handle_signals=False)
    assert len(batch_files(os.path.join(tmp_path, "out"), "ready_")) == 1  # given back, not deleted
    bytes_sink = kafka.KafkaSink(topic, kafka_brokers=kafka_broker.bootstrap, value_format="bytes",
                                 turbo_queue_root_path=str(tmp_path), turbo_queue_queue_name="out")
    bytes_sink.open()
    wait_for(lambda: bytes_sink.poll_once() >= 0 and bytes_sink.events == 2, 30, "the bytes sink")
    bytes_sink.close()


def test_the_pipeline_example_runs_and_stops_cleanly_on_sigint(kafka_broker, tmp_path):
    in_topic, out_topic = new_topic(kafka_broker, 4), new_topic(kafka_broker, 4)
    produce_ids(kafka_broker, in_topic, 0, 5000)
    with open(tmp_path / "example.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--brokers", kafka_broker.bootstrap, "--in-topic", in_topic,
             "--out-topic", out_topic, "--group", f"g-{uuid.uuid4().hex[:8]}",
             "--root", str(tmp_path / "queues"), "--workers", "2"], stdout=log, stderr=subprocess.STDOUT)
    try:
        msgs = read_all(kafka_broker, out_topic, set(range(5000)))
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    assert sorted(orjson.loads(m.value())["id"] for m in msgs) == list(range(5000))
    assert code == 0, (tmp_path / "example.log").read_text()
    for q in ("in", "out"):
        assert batch_files(tmp_path / "queues" / q) == []
