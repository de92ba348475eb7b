"""The original README's quickstart, as written (with its typo fast_queue.dequeue fixed): it is
examples/quickstart.py, run here as a user would run it."""

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


def test_original_quickstart_runs_and_events_flow(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLE)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # the library never prints nor warns
    m = re.fullmatch(r"(\d+) events went through (\S+)\n", proc.stdout)
    assert m, proc.stdout
    # Backpressure stopped the producer at max_ready_files=5 full batches of max_events_per_file=1000,
    # and the consumer loop `while data:` got every one of them.
    assert int(m.group(1)) == 5000
    assert os.listdir(tmp_path) == []  # no log file written into the working directory
    folder = m.group(2)
    assert [f for f in os.listdir(folder) if not f.startswith(".")] == []
