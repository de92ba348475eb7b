"""What `import turbo_queue` costs: a process that only produces and consumes never loads
multiprocessing, socket or subprocess (about 40 ms of import time); Queue loads them when used."""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_import_and_round_trip_load_no_multiprocessing_socket_or_subprocess():
    out = subprocess.run([sys.executable, "-I", os.path.join(HERE, "import_probe.py")],
                         capture_output=True, text=True, check=True, cwd="/").stdout
    steps = json.loads(out)
    assert steps["before"] == []
    assert steps["import"] == []
    assert steps["events"] == [{"n": i} for i in range(5)]  # the round trip did happen
    assert steps["round_trip"] == []
    # The probe can see these modules: Queue is what brings them.
    assert "multiprocessing" in steps["queue"]
