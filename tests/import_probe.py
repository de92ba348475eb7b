"""Run by test_imports.py in a fresh interpreter: import turbo_queue, round-trip events through a
producer and a consumer, and print as JSON which of the watched modules were loaded at each step."""

import json
import sys
import tempfile

WATCHED = ("multiprocessing", "socket", "subprocess", "prometheus_client")


def loaded():
    return sorted(m for m in WATCHED if m in sys.modules)


def main():
    steps = {"before": loaded()}
    import turbo_queue

    steps["import"] = loaded()
    with tempfile.TemporaryDirectory() as root:
        with turbo_queue.enqueue(root_path=root, queue_name="q", max_events_per_file=2,
                                 max_batch_age=0.01) as producer:
            producer.add_many([{"n": i} for i in range(5)])
        with turbo_queue.dequeue(root_path=root, queue_name="q", wait_timeout=0) as consumer:
            got = list(iter(consumer.get().__next__, None))
        recovered = turbo_queue.recover_folder(root + "/q")
    steps["round_trip"] = loaded()
    steps["events"] = got
    steps["recovered"] = recovered
    turbo_queue.Queue  # noqa: B018 - the attribute that loads multiprocessing
    steps["queue"] = loaded()
    print(json.dumps(steps))


if __name__ == "__main__":
    main()
