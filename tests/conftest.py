"""Fixtures and report hooks of the test suite (shared helpers live in helpers.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import turbo_queue
from helpers import REPO

LEGACY_VERSION = "0.5.2"


def pytest_terminal_summary(terminalreporter):
    """Figures tests measured (duplicates after a crash, say), reported whatever the outcome."""
    lines = [f"{report.nodeid}: {value}"
             for reports in terminalreporter.stats.values() for report in reports
             if getattr(report, "when", None) == "call"
             for key, value in getattr(report, "user_properties", ()) if key == "figure"]
    if lines:
        terminalreporter.section("measured by the tests")
        for line in lines:
            terminalreporter.line(line)


def pytest_report_header(config):
    return (f"turbo_queue {turbo_queue.__version__} from {turbo_queue.__file__}, SQLite "
            f"{turbo_queue.SQLITE_VERSION}, batches built in {turbo_queue._core.batch_build()}")


@pytest.fixture(params=["memory", "file"])
def batch_build(request, monkeypatch):
    """Run a test with batches built in memory (SQLite 3.36+) and in their file (older SQLite), in
    this process and in the processes it starts."""
    from turbo_queue import _core

    if request.param == "memory" and not _core.MEMDB_AVAILABLE:
        pytest.skip(f"SQLite {turbo_queue.SQLITE_VERSION} has no memdb VFS: batches are built in files")
    previous = _core.set_batch_build(request.param)
    monkeypatch.setenv("TURBO_QUEUE_BATCH_BUILD", request.param)
    yield request.param
    _core.set_batch_build(previous)


@pytest.fixture(scope="session", autouse=True)
def _tests_use_the_installed_package():
    # The package must come from site-packages (built and installed), never from src/.
    assert "site-packages" in turbo_queue.__file__ or os.environ.get("TURBO_QUEUE_ALLOW_SOURCE")
    assert turbo_queue._core.__file__.endswith((".so", ".pyd"))


@pytest.fixture(scope="session")
def legacy_path():
    """A side folder holding the pure-Python turbo-queue 0.5.2 (both are named turbo_queue)."""
    path = Path(os.environ.get("TURBO_QUEUE_LEGACY_PATH", REPO / ".side" / f"tq{LEGACY_VERSION}")).resolve()
    if not (path / "turbo_queue" / "_turbo_queue.py").exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(path),
             f"turbo-queue=={LEGACY_VERSION}"],
            check=True,
        )
    return path


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """A real single-node Apache Kafka broker (KRaft) on 127.0.0.1, started once for the session.

    Its jars are fetched with Maven on first use (scripts/kafka_broker.py). Skipped only where Java
    is missing; a missing Maven or a broker that does not start fails the tests.
    """
    import shutil

    if shutil.which("java") is None:
        pytest.skip("Java is not installed: the Kafka connector tests run a real broker, which needs "
                    "Java 17+ (apt-get install openjdk-17-jre-headless)")
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from kafka_broker import KafkaBroker
    finally:
        sys.path.remove(str(REPO / "scripts"))
    with KafkaBroker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker
