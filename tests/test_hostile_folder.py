"""The hostile-folder runs (tests/hostile.py): every kind of file planted under every batch name, lock
files removed and replaced, while producers and consumers run. The default run does two; `pytest -m
chaos` does TURBO_QUEUE_HOSTILE_RUNS (default 20)."""

import os

import pytest

from hostile import run_once

HOSTILE_RUNS = int(os.environ.get("TURBO_QUEUE_HOSTILE_RUNS", "20"))


def check(stats):
    assert stats["problems"] == []
    assert stats["lost"] == 0, stats  # every event whose publish returned was delivered
    assert stats["published"] > 0 and stats["planted"] > 0 and stats["quarantined"] > 0


@pytest.mark.parametrize("seed", range(2))
def test_hostile_folder_quick(seed, record_property):
    stats = run_once(1000 + seed)
    check(stats)
    record_property("figure", f"{stats['planted']} files planted, {stats['quarantined']} quarantined, "
                              f"{stats['published']} events published, 0 lost")


@pytest.mark.chaos
def test_hostile_folder_many():
    totals = {"published": 0, "planted": 0, "quarantined": 0, "duplicates": 0}
    for seed in range(HOSTILE_RUNS):
        stats = run_once(seed)
        check(stats)
        for k in totals:
            totals[k] += stats[k]
    print(f"\nhostile folder: {HOSTILE_RUNS} runs, {totals['planted']} files planted, "
          f"{totals['quarantined']} quarantined, {totals['published']} events published, 0 lost, "
          f"{totals['duplicates']} duplicates")
