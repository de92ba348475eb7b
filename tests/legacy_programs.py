"""Programs run with the pure-Python turbo-queue 0.5.2 (`run_script(..., env_path=legacy_path)`):
its writer publishes `values` as one batch; its reader prints what it read to stderr after RESULT."""

LEGACY_WRITER = '''
import json, sys, logging
import turbo_queue
assert turbo_queue.__file__.startswith({legacy!r}), turbo_queue.__file__
values = json.loads({values!r})
e = turbo_queue.enqueue()
e.setup_logging(log_file={log!r})
e.root_path = {root!r}
e.queue_name = "q"
e.max_events_per_file = len(values)
e.max_ready_files = 100
e.start()
for v in values:
    e.add(v)          # the full batch is published on its last add
'''

LEGACY_READER = '''
import json, sys, time
import turbo_queue
assert turbo_queue.__file__.startswith({legacy!r}), turbo_queue.__file__
d = turbo_queue.dequeue(1)
d.setup_logging(log_file={log!r})
d.root_path = {root!r}
d.queue_name = "q"
out = []
deadline = time.time() + 60
while len(out) < {count} and time.time() < deadline:
    for x in d.get():
        if x is None:
            break
        out.append(x)
sys.stderr.write("RESULT" + json.dumps(out))
'''
