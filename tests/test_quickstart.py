"""The original README's quickstart, as written (with its typo fast_queue.dequeue fixed)."""

import os

from conftest import run_script

QUICKSTART = '''
import turbo_queue
queue_name = 'data_in'
root_path = {root!r}
### cleanup queues from pervious restarts
clean_turbo_queue = turbo_queue.startup()
clean_turbo_queue.queue_name = queue_name
clean_turbo_queue.root_path = root_path
clean_turbo_queue.on_start_cleanup()
### enqueue data
enqueue = turbo_queue.enqueue()
enqueue.queue_name = queue_name
enqueue.root_path = root_path
enqueue.max_ready_files = 5
enqueue.max_events_per_file = 1000
enqueue.start()
enqueue.update_enqueue_active_state()
while enqueue.enqueue_active:
    data = """{{"data":"add_to_queue"}}"""
    enqueue.add(data)
    enqueue.update_enqueue_active_state()
### Dequeue data
dequeue = turbo_queue.dequeue(1)
dequeue.queue_name = queue_name
dequeue.root_path = root_path
get_data = dequeue.get()
data = next(get_data)
n = 0
while data:
    n += 1
    assert data == """{{"data":"add_to_queue"}}""", data
    data = next(get_data)
# data = None when the queue is currently empty
# call next(get_data) again to check the queue for more data
assert next(get_data) is None
import sys
sys.stderr.write(f"RESULT {{n}} {{enqueue.events_published}}\\n")
'''


def test_original_quickstart_runs_and_events_flow(tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    proc = run_script(QUICKSTART.format(root=str(tmp_path / "q")), cwd=work)
    assert proc.stdout == ""  # the library never prints
    assert os.listdir(work) == []  # and writes no log file into the working directory
    n, published = map(int, proc.stderr.split("RESULT")[1].split())
    # Backpressure stopped the producer at max_ready_files=5 full batches of 1000.
    assert published == 5000
    assert n == 5000
    left = [f for f in os.listdir(tmp_path / "q" / "data_in") if not f.startswith(".")]
    assert left == []
