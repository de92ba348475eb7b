"""Interop with the real pure-Python turbo-queue 0.5.2, in separate processes, both directions."""

import json

import pytest

from helpers import run_script
from legacy_programs import LEGACY_READER, LEGACY_WRITER

# Values the original itself round-trips (its own reader breaks on top-level numbers, defect 4).
VALUES_ORIGINAL_CAN_READ_BACK = [
    {"id": 1, "host": "h", "path": "/x", "status": 200, "bytes": 512, "ts": 1.5, "agent": None},
    {}, [], "", "0123", "  42 ", "text with ünïcödé ✓", {"nested": {"list": [1, 2.5, None, True]}},
    "x" * 10000, [[[]]], {"big": 2 ** 70}, {"nan": "NaN"}, False, True,
]
NUMERIC = [0, 42, -7, 1.5, 0.30000000000000004, 2 ** 62]

def ours_write(root, values):
    import turbo_queue

    with turbo_queue.enqueue(root_path=str(root), queue_name="q") as e:
        e.add_many(values)


def ours_read(root, count):
    import turbo_queue

    with turbo_queue.dequeue(root_path=str(root), queue_name="q", wait_timeout=0.5) as d:
        out = []
        for _ in range(50):
            out.extend(d.get_batch())
            if len(out) >= count:
                break
        assert d.get_many(1, timeout=0) == []
        return out


def test_original_writes_ours_reads(tmp_path, legacy_path):
    values = VALUES_ORIGINAL_CAN_READ_BACK + NUMERIC
    run_script(LEGACY_WRITER.format(legacy=str(legacy_path), values=json.dumps(values),
                                    log=str(tmp_path / "legacy.log"), root=str(tmp_path)),
               env_path=legacy_path)
    got = ours_read(tmp_path, len(values))
    assert got == values  # same content, same count, same order, numbers included


@pytest.mark.parametrize("with_numbers", [False, True])
def test_ours_writes_original_reads(tmp_path, legacy_path, with_numbers, batch_build):
    values = VALUES_ORIGINAL_CAN_READ_BACK + (NUMERIC if with_numbers else [])
    ours_write(tmp_path, values)
    proc = run_script(LEGACY_READER.format(legacy=str(legacy_path), log=str(tmp_path / "l.log"),
                                           root=str(tmp_path), count=len(values)),
                      env_path=legacy_path)
    got = json.loads(proc.stderr.split("RESULT", 1)[1])
    # Ours stores events as BLOBs, so even numbers reach the original intact.
    assert got == values


def test_ours_reads_original_leftovers_via_startup_cleanup(tmp_path, legacy_path):
    """A pure-Python producer that stopped mid-batch leaves loading_; our startup publishes it."""
    code = LEGACY_WRITER.format(legacy=str(legacy_path), values=json.dumps([1, 2, 3]),
                                log=str(tmp_path / "legacy.log"), root=str(tmp_path))
    code = code.replace("e.max_events_per_file = len(values)", "e.max_events_per_file = 1000")
    code += "\ne._db_conn.commit()\nimport os; os._exit(0)\n"
    run_script(code, env_path=legacy_path)
    import turbo_queue

    counts = turbo_queue.startup(root_path=str(tmp_path), queue_name="q").on_start_cleanup()
    assert counts["published"] == 1
    assert ours_read(tmp_path, 3) == [1, 2, 3]
