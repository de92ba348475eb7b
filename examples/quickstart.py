"""The pure-Python turbo-queue's README quickstart, unchanged but for its typo
(`fast_queue.dequeue` -> `turbo_queue.dequeue`) and a temporary folder.

    python examples/quickstart.py
"""

import tempfile

import turbo_queue

queue_name = "data_in"
root_path = tempfile.mkdtemp(prefix="turbo-queue-quickstart-")

### cleanup queues from previous restarts
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
    data = """{"data":"add_to_queue"}"""
    enqueue.add(data)
    enqueue.update_enqueue_active_state()
# update_enqueue_active_state needs to be run at some frequency
# if the number of ready files exceeds the max, the state will be set to False
# this is the mechanism used to address downstream backup in the queue

### Dequeue data
dequeue = turbo_queue.dequeue(1)
dequeue.queue_name = queue_name
dequeue.root_path = root_path
get_data = dequeue.get()
data = next(get_data)
count = 0
while data:
    count += 1
    data = next(get_data)
# data = None when the queue is currently empty
# call next(get_data) again to check the queue for more data
print(f"{count} events went through {root_path}/{queue_name}")
