#!/usr/bin/env bash
# The turbo-queue command on a small queue.
set -euo pipefail
root=$(mktemp -d)
python - "$root" <<'PY'
import sys, turbo_queue
with turbo_queue.enqueue(root_path=sys.argv[1], queue_name="jobs", max_events_per_file=100) as e:
    e.add_many({"n": i} for i in range(250))
PY
turbo-queue stats "$root"                      # a table: files, events waiting, oldest batch, holders
turbo-queue stats "$root" jobs --json          # the same for scripts
turbo-queue peek "$root" jobs -n 3             # the next events, left in place
turbo-queue watch "$root" --count 3            # live view with events/s in and out
turbo-queue recover "$root" jobs               # return batches of dead processes to ready_
turbo-queue drain "$root" jobs --to "$root/jobs.jsonl"
wc -l "$root/jobs.jsonl"
