"""Helpers the tests share: run a program in a fresh interpreter, list batch files, drain a queue."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_script(code, *, env_path=None, cwd=None, timeout=120, check=True, env=None):
    """Run `code` in a fresh interpreter; with env_path, that folder shadows turbo_queue."""
    env = dict(os.environ, **(env or {}))
    if env_path is not None:
        env["PYTHONPATH"] = str(env_path)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"script failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def batch_files(folder, prefix=""):
    """Batch files of a queue folder (not owner locks, not SQLite journals)."""
    return sorted(n for n in os.listdir(folder)
                  if n.startswith(prefix) and not n.startswith(".") and not n.endswith("-journal"))


def drain_all(root, queue_name="q", **settings):
    """Every event left in a queue, read with a fresh consumer until none is ready."""
    import turbo_queue

    settings.setdefault("wait_timeout", 0)
    d = turbo_queue.dequeue(root_path=str(root), queue_name=queue_name, **settings)
    got = []
    while True:
        batch = d.get_batch()
        if not batch:
            break
        got += batch
    d.close()
    return got
