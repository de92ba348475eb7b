"""What a consumer process pays for its first batches: CPU time and minor page faults per get_batch().

A process forked from one that imported turbo_queue attaches to an empty queue (owner lock,
doorbell, first recovery pass), then takes --batches batches one get_batch() at a time, the way a
consumer of a pool that was idle so far takes its first work. Its first batches touch memory it has
never used (SQLite's page cache, the batch's buffer, the events' objects), which the kernel hands
it a page at a time; later batches reuse it. Each round is a fresh process; prints each batch's
CPU time and page faults, and the median over the rounds.

    python bench/first_batches.py --batches 6 --per-file 1000 --rounds 5
"""

import argparse
import os
import resource
import statistics
import tempfile
import traceback

import turbo_queue  # (before forking: the child pays for no import)

RAW = b"x" * 100


def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_minflt


def one_round(root, batches, per_file):
    """One fresh consumer process taking `batches` batches: [(cpu_s, page_faults), ...] per batch."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            d = turbo_queue.dequeue(1, root_path=root, queue_name="q", serializer="raw")
            assert d.get_batch(timeout=0) == []  # attached, as a pool's consumers are
            os.write(ready_w, b".")
            os.read(go_r, 1)
            lines = []
            for _ in range(batches):
                c0, f0 = usage()
                got = d.get_batch(timeout=5)
                c1, f1 = usage()
                assert len(got) == per_file, len(got)
                lines.append(f"{c1 - c0!r} {f1 - f0}")
            d.close()
            os.write(out_w, "\n".join(lines).encode())
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)  # (never back into the parent's code)
    for fd in (ready_w, go_r, out_w):  # (the child's ends: out_r reads to the end once it exits)
        os.close(fd)
    os.read(ready_r, 1)
    e = turbo_queue.enqueue(root_path=root, queue_name="q", max_events_per_file=per_file,
                            max_ready_files=10**9, serializer="raw")
    e.start()
    for _ in range(batches):
        e.add_many([RAW] * per_file)
    e.close()
    os.write(go_w, b".")
    with os.fdopen(out_r, "rb") as f:
        text = f.read().decode()
    _, status = os.waitpid(pid, 0)
    os.close(ready_r)
    os.close(go_w)
    if status != 0 or text.count("\n") != batches - 1:
        raise SystemExit(f"the consumer process failed (status {status})")
    return [(float(c), int(f)) for c, f in (line.split() for line in text.splitlines())]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--per-file", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--root", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = ap.parse_args()
    rounds = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(dir=args.root) as root:
            res = one_round(root, args.batches, args.per_file)
        rounds.append(res)
        print(f"round {r + 1}: " + "; ".join(f"{c * 1e3:.2f} ms {f} faults" for c, f in res), flush=True)
    print(f"median of {args.rounds} rounds, {args.per_file} raw events of 100 bytes per batch:")
    for i in range(args.batches):
        print(f"  batch {i + 1}: {statistics.median(r[i][0] for r in rounds) * 1e3:.2f} ms of CPU, "
              f"{statistics.median(r[i][1] for r in rounds):.0f} minor page faults")


if __name__ == "__main__":
    main()
