"""A hostile folder: while producers and consumers run, every kind of file is planted under every kind
of batch name and the owner lock files are removed or replaced. Then every event whose publish
returned must have been delivered, nothing outside the folder may have changed, every process must
have ended in bounded time with no exception in its consumer loop, and every CLI command must end
with status 0 or 2 and a message.

Used by test_hostile_folder.py, and runnable on its own:
    python tests/hostile.py --runs 20
    python tests/hostile.py producer ROOT WHO SEED | consumer ROOT WHO   (the roles it starts)
    python tests/hostile.py killed-writer PATH TABLE journal|wal        (a database left mid-write)
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import traceback

from wakeup import LEASE_AT, lease_from_another_boot

# Under emulation (qemu-user: TURBO_QUEUE_EMULATED) a process takes seconds to start: kill less
# often and run longer, so that a run still publishes and delivers between kills.
SLOWDOWN = 20 if os.environ.get("TURBO_QUEUE_EMULATED") else 1


HERE = os.path.abspath(__file__)
# Each process must be done this long after it is told to stop, each CLI command after it starts.
BOUND_S = 60


def dump_stacks_on_sigusr1():
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)


def producer(root, who, seed):
    import turbo_queue

    dump_stacks_on_sigusr1()
    rng = random.Random(seed)
    e = turbo_queue.enqueue(root_path=root, queue_name="q", max_events_per_file=rng.randint(3, 50),
                            max_batch_age=0.05)
    with open(os.path.join(root, f"pub-{who}.txt"), "a", buffering=1) as confirmed:
        i = 0
        while not os.path.exists(os.path.join(root, "STOP")):
            ids = [f"{who}.{i + k}" for k in range(rng.randint(1, 20))]
            i += len(ids)
            e.add_many(ids)
            e.flush()  # returns once they are published: from here on they must never be lost
            confirmed.write(" ".join(ids) + "\n")
            time.sleep(rng.uniform(0, 0.01))
    e.close()


def consumer(root, who):
    import turbo_queue

    dump_stacks_on_sigusr1()
    d = turbo_queue.dequeue(root_path=root, queue_name="q", wait_timeout=0.02, reclaim_interval=0.05)
    with open(os.path.join(root, f"del-{who}.txt"), "a", buffering=1) as out:
        try:
            for event in d.get():  # the plain loop of the README: nothing may reach it
                if event is None:
                    if os.path.exists(os.path.join(root, "DRAINED")):
                        break
                    continue
                out.write(event + "\n")
        except BaseException:
            with open(os.path.join(root, f"error-{who}.txt"), "w") as f:
                f.write(traceback.format_exc())
            raise
    d.close()


# -- What is planted -----------------------------------------------------------------------------------

def outside_files(outside):
    """Files outside the queue folder that planted symlinks point at: a plain file, a database with a
    hot journal (a writer killed mid-transaction), and a WAL database with an un-checkpointed -wal."""
    with open(os.path.join(outside, "plain.txt"), "w") as f:
        f.write("not a batch\n" * 100)
    for name, how in (("journal.db", "journal"), ("wal.db", "wal")):
        killed_writer(os.path.join(outside, name), "logs", how)
    assert os.path.getsize(os.path.join(outside, "journal.db-journal")) > 0
    assert os.path.getsize(os.path.join(outside, "wal.db-wal")) > 0


def killed_writer(path, table, how):
    """Leave `path` as an SQLite writer killed mid-way leaves it: 2,000 rows of `table` committed,
    then, with how="journal", a transaction begun (a hot journal beside it) or, with "wal", a WAL
    database with an un-checkpointed -wal."""
    subprocess.run([sys.executable, HERE, "killed-writer", path, table, how], check=True)


def _killed_writer(path, table, how):
    c = sqlite3.connect(path)
    c.execute("PRAGMA cache_size=1")  # so that the transaction spills into the file
    c.execute(f"CREATE TABLE {table} (log_data json)")
    c.executemany(f"INSERT INTO {table} VALUES (?)", [(f'"kept {i}"',) for i in range(2000)])
    c.commit()
    if how == "wal":
        c.execute("PRAGMA journal_mode=WAL")
        c.execute(f"INSERT INTO {table} VALUES (1)")
        c.commit()
    else:
        c.execute("BEGIN")
        c.execute(f"DELETE FROM {table}")
        for _ in range(500):
            c.execute(f"INSERT INTO {table} VALUES (?)", (b"y" * 500,))
    os._exit(0)


def plant_special(path, kind, target=None):
    """Put a file that is no batch at `path`: a FIFO, a socket, a directory, or a symlink to `target`."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":  # bound where the path is short enough for AF_UNIX, then moved in
        short = f"/tmp/tq-sock-{os.getpid()}"
        s = socket.socket(socket.AF_UNIX)
        s.bind(short)
        s.close()
        os.rename(short, path)
    elif kind == "directory":
        os.mkdir(path)
    else:
        os.symlink(target, path)


def checksums(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def foreign_database(path, rng):
    con = sqlite3.connect(path)
    kind = rng.choice(["other table", "view", "two tables", "wal", "virtual"])
    if kind == "other table":
        con.execute("CREATE TABLE other (x)")
    elif kind == "view":
        con.execute("CREATE TABLE data (log_data)")
        con.execute("CREATE VIEW logs AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                    "SELECT x AS log_data FROM c")
    elif kind == "two tables":
        con.execute("CREATE TABLE logs (log_data json)")
        con.execute("CREATE TABLE extra (x)")
        con.execute("INSERT INTO logs VALUES ('\"planted\"')")
    elif kind == "wal":
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE logs (log_data json)")
        con.execute("INSERT INTO logs VALUES ('\"planted\"')")
    else:
        con.execute("CREATE VIRTUAL TABLE logs USING fts5(log_data)") if _has_fts5(con) else \
            con.execute("CREATE TABLE other (y)")
    con.commit()
    con.close()


def _has_fts5(con):
    try:
        con.execute("CREATE VIRTUAL TABLE temp.probe USING fts5(x)")
        con.execute("DROP TABLE temp.probe")
        return True
    except sqlite3.Error:
        return False


def plant_one(folder, outside, rng, n):
    token = "%012x" % rng.randrange(1 << 48)
    name = rng.choice([
        f"ready_{n}_planted.db", f"ready_{n}_{n}-{token}-n5.db", f"loading_{n}_planted.db",
        f"loading_{n}_000000001-{token}.db", f"chosen_{n}_planted.db_{token}", f"chosen_{n}_planted.db",
        f"avail_{n}_x.db", f"ready_{n}_x.db_temp_hold",
        # Names that match the grammar only in part.
        "ready_.db", f"ready_{n}", f"ready_x{n}.db", f"chosen_{n}", f"loading_{n}", f"invalid_{n}.db",
        # Dead letters (and names like them): shown by `dead`, moved by `requeue --all`, never opened.
        f"dead_{n}_planted.db", f"dead_{n}_{n}-{token}-n5-e3+a3.db", f"dead_{n}", f"ready_{n}_x+a9+e1,2.db",
        f"chosen_{n}_x.db_{token}+h3",
    ])
    path = os.path.join(folder, name)
    if os.path.lexists(path):
        return
    # Regular files are made beside the folder and moved in whole, as a careless operator's copy is.
    staging = os.path.join(os.path.dirname(folder), f".staging-{n}")
    kind = rng.choice(["fifo", "socket", "directory", "symlink plain", "symlink journal", "symlink wal",
                       "symlink dangling", "foreign", "empty", "truncated", "garbage"])
    if kind in ("fifo", "socket", "directory"):
        plant_special(path, kind)
    elif kind.startswith("symlink"):
        target = {"symlink plain": "plain.txt", "symlink journal": "journal.db", "symlink wal": "wal.db",
                  "symlink dangling": "missing.db"}[kind]
        plant_special(path, "symlink", os.path.join(outside, target))
    else:
        if kind == "foreign":
            foreign_database(staging, rng)
        elif kind == "empty":
            open(staging, "w").close()
        elif kind == "truncated":
            with open(os.path.join(outside, "journal.db"), "rb") as f:
                head = f.read(rng.choice([50, 100, 4096]))
            with open(staging, "wb") as f:
                f.write(head)
        else:
            with open(staging, "wb") as f:
                f.write(os.urandom(rng.randint(1, 5000)))
        os.rename(staging, path)


def tamper_with_locks(folder, outside, rng):
    for name in os.listdir(folder):
        # Owner locks, and the files every process shares: the doorbell and the watch lock.
        if not (name.startswith(".owner_") or name in SHARED_FILES) or rng.random() >= 0.5:
            continue
        try:
            tamper_with_lock(os.path.join(folder, name), rng.choice(TAMPERINGS),
                             os.path.join(outside, rng.choice(["plain.txt", "journal.db", "wal.db"])))
        except OSError:
            pass  # its owner removed or remade it meanwhile


SHARED_FILES = (".doorbell", ".watch.lock", ".reclaim.lock")

# What a cleaner or a hostile user can do to a lock file.
TAMPERINGS = ("removed", "replaced by a file", "replaced by a directory", "replaced by a FIFO",
              "truncated", "replaced by a symlink", "given a lease from another boot",
              "replaced by a hard link to a file outside")


def tamper_with_lock(path, how, outside_file):
    if how in ("truncated", "given a lease from another boot") and os.lstat(path).st_nlink > 1:
        return  # (a hard link planted earlier: this would change the file outside, not the queue)
    if how == "truncated":  # (in place: processes that mapped the doorbell keep their mapping)
        os.truncate(path, 0)
        return
    if how == "given a lease from another boot":  # (the doorbell's lease, days ahead of this clock)
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.pwrite(fd, lease_from_another_boot(), LEASE_AT)
        finally:
            os.close(fd)
        return
    if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)
    else:
        os.unlink(path)
    if how == "replaced by a file":
        open(path, "w").close()
    elif how == "replaced by a directory":
        os.mkdir(path)
    elif how == "replaced by a FIFO":
        os.mkfifo(path)
    elif how == "replaced by a symlink":
        os.symlink("/dev/null", path)
    elif how == "replaced by a hard link to a file outside":
        os.link(outside_file, path)


# -- One run -------------------------------------------------------------------------------------------

def read_words(root, prefix):
    words = []
    for name in os.listdir(root):
        if name.startswith(prefix):
            with open(os.path.join(root, name)) as f:
                words += f.read().split()
    return words


def wait_for(procs, role, problems):
    for who in [w for w in procs if w.startswith(role)]:
        try:
            procs[who].wait(BOUND_S)
        except subprocess.TimeoutExpired:
            problems.append(f"{who} did not stop within {BOUND_S} s")
            stop_hung(procs[who])


def stop_hung(p):
    """Kill a process that did not stop, after it wrote where it was stuck (faulthandler)."""
    import signal

    p.send_signal(signal.SIGUSR1)
    time.sleep(1)
    p.kill()
    p.wait()


def run_cli(args, timeout=BOUND_S):
    start = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "turbo_queue", *args], capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout, p.stderr, time.monotonic() - start


def run_once(seed, producers=2, consumers=2, duration=2.0):
    rng = random.Random(seed)
    base = tempfile.mkdtemp(prefix="tq-hostile-")
    root, outside = os.path.join(base, "root"), os.path.join(base, "outside")
    os.mkdir(root)
    os.mkdir(outside)
    folder = os.path.join(root, "q")
    outside_files(outside)
    before = checksums(outside)
    problems = []

    def start(role, who):
        args = [sys.executable, HERE, role, root, who] + ([str(rng.randrange(1 << 30))] if role == "producer" else [])
        # stderr to a file: a pipe nobody reads until the end would block a process that logs much.
        log = open(os.path.join(base, f"{who}.log"), "wb")
        try:
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        finally:
            log.close()

    procs = {f"p{k}": start("producer", f"p{k}") for k in range(producers)}
    procs.update({f"c{k}": start("consumer", f"c{k}") for k in range(consumers)})
    planted = 0
    end = time.monotonic() + duration * SLOWDOWN
    while time.monotonic() < end:
        time.sleep(rng.uniform(0.005, 0.03) * SLOWDOWN)
        if not os.path.isdir(folder):
            continue
        for _ in range(rng.randint(1, 3)):
            plant_one(folder, outside, rng, planted)
            planted += 1
        if rng.random() < 0.3:
            tamper_with_locks(folder, outside, rng)
    open(os.path.join(root, "STOP"), "w").close()
    wait_for(procs, "p", problems)
    # Producers are done: consumers drain what is ready, then stop.
    deadline = time.monotonic() + BOUND_S
    import turbo_queue

    while time.monotonic() < deadline and any(
            n.startswith("ready_") and n.endswith(".db") and os.path.isfile(os.path.join(folder, n))
            and not os.path.islink(os.path.join(folder, n)) for n in os.listdir(folder)):
        time.sleep(0.05)
    open(os.path.join(root, "DRAINED"), "w").close()
    wait_for(procs, "c", problems)
    for who, p in procs.items():
        with open(os.path.join(base, f"{who}.log"), "rb") as f:
            err = f.read().decode(errors="replace")
        if p.returncode != 0:
            problems.append(f"{who} exited {p.returncode}: {err[-4000:]}")
        if os.path.exists(os.path.join(root, f"error-{who}.txt")):
            with open(os.path.join(root, f"error-{who}.txt")) as f:
                problems.append(f"an exception reached {who}'s consumer loop: {f.read()[-1500:]}")
    # Every CLI command on the folder ends with 0 or 2 and, with 2, a message.
    drained = os.path.join(base, "drained.jsonl")
    for args in (["stats", root], ["stats", root, "q", "--json"], ["watch", root, "--count", "1"],
                 ["peek", root, "q", "-n", "50"], ["recover", root, "q"], ["recover", root, "q", "--json"],
                 ["dead", root, "q"], ["dead", root, "q", "--json", "-n", "20"],
                 ["requeue", root, "q", "--all"], ["drain", root, "q", "--to", drained]):
        try:
            rc, out, err, took = run_cli(args)
        except subprocess.TimeoutExpired:
            problems.append(f"turbo-queue {' '.join(args)} did not end within {BOUND_S} s")
            continue
        if rc not in (0, 2) or (rc == 2 and not err.strip()) or "Traceback" in err:
            problems.append(f"turbo-queue {' '.join(args[:1])} ended {rc}: {err[-1500:]}")
    published = set(read_words(root, "pub-"))
    delivered = read_words(root, "del-")
    if os.path.exists(drained):
        with open(drained) as f:
            delivered += [json.loads(line) for line in f if line.strip()]
    lost = published - set(delivered)
    after = checksums(outside)
    if after != before:
        problems.append(f"files outside the folder changed: {sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))}")
    stats = {"seed": seed, "published": len(published), "delivered": len(delivered), "lost": len(lost),
             "lost_ids": sorted(lost)[:10], "planted": planted,
             "duplicates": len(delivered) - len(set(delivered)),
             "quarantined": len([n for n in os.listdir(folder) if n.startswith("invalid_")]),
             "problems": problems}
    shutil.rmtree(base, ignore_errors=True)
    return stats


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "killed-writer":
        _killed_writer(*sys.argv[2:5])
    if len(sys.argv) > 1 and sys.argv[1] in ("producer", "consumer"):
        if sys.argv[1] == "producer":
            producer(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        else:
            consumer(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    totals = {"runs": 0, "published": 0, "lost": 0, "planted": 0, "quarantined": 0, "problems": 0}
    for seed in range(args.runs):
        s = run_once(seed)
        for k in ("published", "lost", "planted", "quarantined"):
            totals[k] += s[k]
        totals["problems"] += len(s["problems"])
        totals["runs"] += 1
        if s["lost"] or s["problems"]:
            print("FAILED RUN", json.dumps(s), flush=True)
    print(json.dumps(totals))
    return 1 if totals["lost"] or totals["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
