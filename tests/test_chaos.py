"""Random SIGKILLs of producers and consumers of a running pipeline: nothing published is lost.

The default run does a few; `pytest -m chaos` does TURBO_QUEUE_CHAOS_RUNS (default 200, CI 50).
"""

import os

import pytest

from chaos import run_once

CHAOS_RUNS = int(os.environ.get("TURBO_QUEUE_CHAOS_RUNS", "200"))


def check(stats):
    assert stats["errors"] == []
    assert stats["bad_ready_files"] == []  # every ready_ file passes PRAGMA integrity_check
    assert stats["lost"] == 0, stats  # every event confirmed published was delivered
    assert stats["left_in_folder"] == []
    assert stats["kills"] > 0 and stats["published"] > 0


@pytest.mark.parametrize("seed", range(3))
def test_random_kills_quick(seed):
    check(run_once(10_000 + seed))


@pytest.mark.chaos
def test_random_kills_many():
    totals = {"kills": 0, "published": 0, "duplicates": 0, "dead_lettered": 0, "lines_cut_by_kills": 0}
    for seed in range(CHAOS_RUNS):
        stats = run_once(seed)
        check(stats)
        for k in totals:
            totals[k] += stats[k]
    print(f"\nchaos: {CHAOS_RUNS} runs, {totals['kills']} kills, {totals['published']} events "
          f"confirmed published, 0 lost ({totals['dead_lettered']} set aside as dead letters after "
          f"killing max_attempts consumers), {totals['duplicates']} duplicates; "
          f"{totals['lines_cut_by_kills']} record lines cut short by a kill")
