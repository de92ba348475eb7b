#!/usr/bin/env python3
"""A real, single-node Apache Kafka broker (KRaft mode) on 127.0.0.1, for tests and benchmarks.

Kafka's server jars come from Maven (scripts/kafka/pom.xml) into .side/kafka/libs, once:

    python scripts/kafka_broker.py fetch             # mvn copies the broker's runtime jars
    python scripts/kafka_broker.py run --port 9092   # a broker in the foreground; Ctrl-C stops it

Tests use `KafkaBroker` as a context manager (tests/conftest.py): free ports, a fresh storage
folder formatted with kafka-storage's StorageTool, the broker started with `java`, stopped after.
Needs Java 17+ and, to fetch, Maven.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POM = REPO / "scripts" / "kafka" / "pom.xml"
DEFAULT_LIBS = Path(os.environ.get("TURBO_QUEUE_KAFKA_LIBS") or REPO / ".side" / "kafka" / "libs")

SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=false
# Keep every message, whatever its timestamp (tests replay old timestamps).
log.retention.ms=-1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# One node: start a group's first rebalance at once, and let tests use short session timeouts.
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=2000
"""

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
"""


def java() -> str:
    found = shutil.which("java")
    if found is None:
        raise FileNotFoundError("java is not on PATH: the Kafka broker needs Java 17 or newer")
    return found


def fetch(libs: Path = DEFAULT_LIBS) -> Path:
    """Copy the broker's runtime jars into `libs` (skipped when they are already there)."""
    marker = libs / ".fetched"
    if marker.exists() and marker.read_text() == POM.read_text():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise FileNotFoundError(
            f"mvn is not on PATH and {libs} holds no Kafka jars: install Maven (apt-get install maven)")
    libs.mkdir(parents=True, exist_ok=True)
    subprocess.run([mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM), "dependency:copy-dependencies",
                    f"-DoutputDirectory={libs}", "-DincludeScope=runtime"], check=True)
    marker.write_text(POM.read_text())
    return libs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KafkaBroker:
    """Start a fresh single-node broker; `bootstrap` is its address. Use as a context manager."""

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *, port: int | None = None,
                 libs: Path = DEFAULT_LIBS, heap: str = "768m") -> None:
        self.libs = fetch(libs)
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="tq-kafka-"))
        self.port = port or free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log = self.workdir / "broker.log"
        self.heap = heap
        self.proc: subprocess.Popen[bytes] | None = None

    def _java(self, *args: str) -> list[str]:
        return [java(), f"-Xmx{self.heap}", "-XX:+UseG1GC",
                f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
                "-cp", str(self.libs / "*"), *args]

    def start(self, timeout: float = 90.0) -> "KafkaBroker":
        data = self.workdir / "data"
        props = self.workdir / "server.properties"
        props.write_text(SERVER_PROPERTIES.format(port=self.port, controller_port=self.controller_port,
                                                  data=data))
        (self.workdir / "log4j2.properties").write_text(LOG4J2.format(log=self.log))
        subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", str(uuid.uuid4()),
                                  "-c", str(props)),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with open(self.workdir / "broker.out", "wb") as out:
            self.proc = subprocess.Popen(self._java("kafka.Kafka", str(props)), stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Kafka broker exited with {self.proc.returncode}; see "
                                   f"{self.workdir / 'broker.out'} and {self.log}")
            if self.log.exists() and "Kafka Server started" in self.log.read_text(errors="replace"):
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the Kafka broker did not start within {timeout} s; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "KafkaBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="copy the broker's jars with Maven")
    f.add_argument("--libs", type=Path, default=DEFAULT_LIBS)
    r = sub.add_parser("run", help="run a broker in the foreground until Ctrl-C")
    r.add_argument("--port", type=int, default=9092)
    r.add_argument("--dir", help="storage folder (default: a fresh temporary one)")
    args = parser.parse_args()
    if args.command == "fetch":
        print(fetch(args.libs))
        return 0
    with KafkaBroker(args.dir, port=args.port) as broker:
        print(f"Kafka broker on {broker.bootstrap} (log: {broker.log}); Ctrl-C stops it", flush=True)
        try:
            while broker.proc is not None and broker.proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
