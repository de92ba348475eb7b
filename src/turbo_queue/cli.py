"""The `turbo-queue` command (also `python -m turbo_queue`)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
import time
from typing import Any, Sequence

from turbo_queue import _folder
from turbo_queue._core import STATES, decode_value, events_in_name
from turbo_queue._signals import Stopper
from turbo_queue.errors import TurboQueueError


def _rich() -> Any:
    try:
        import rich.console
        import rich.live
        import rich.table
    except ImportError:
        raise SystemExit("turbo-queue: this command needs rich: pip install 'turbo-queue[cli]'") from None
    return rich


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"$base64": base64.b64encode(bytes(value)).decode()}
    return value


def _fmt_age(age: float | None) -> str:
    if age is None:
        return "-"
    return f"{age:.0f} s" if age < 120 else f"{age / 60:.0f} min"


# States shown in the table only where some queue has such files: they need a person's eye.
_EXCEPTIONAL_STATES = ("invalid", "dead", "legacy")


def stats_table(rich: Any, snapshots: list[_folder.QueueStats], rates: dict[str, tuple[float, float]] | None = None) -> Any:
    table = rich.table.Table(title="turbo-queue", expand=False)
    states = [k for k in STATES
              if k not in _EXCEPTIONAL_STATES or any(s.files[k] for s in snapshots)]
    dead = "dead" in states
    for col in ("queue", *states, "events waiting", *(["dead events"] if dead else []),
                "oldest ready", "held per consumer"):
        table.add_column(col, justify="left" if col in ("queue", "held per consumer") else "right",
                         no_wrap=col == "queue")
    if rates is not None:
        table.add_column("in/s", justify="right")
        table.add_column("out/s", justify="right")
    for s in snapshots:
        held = ", ".join(f"{k}:{v}" + (" (dead)" if k in s.dead_holders else "")
                         for k, v in sorted(s.held_by.items())) or "-"
        row = [s.name, *(str(s.files[k]) for k in states), f"{s.events_waiting:,}",
               *([f"{s.dead_events:,}"] if dead else []), _fmt_age(s.oldest_ready_age_s), held]
        if rates is not None:
            rin, rout = rates.get(s.path, (0.0, 0.0))
            row += [f"{rin:,.0f}", f"{rout:,.0f}"]
        table.add_row(*row)
    return table


def cmd_stats(args: argparse.Namespace) -> int:
    snapshots = [_folder.queue_stats(f) for f in _folder.queue_folders(args.root, args.queue)]
    if args.json:
        print(json.dumps([s.as_dict() for s in snapshots], indent=2))
        return 0
    rich = _rich()
    rich.console.Console().print(stats_table(rich, snapshots))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    rich = _rich()
    folders = _folder.queue_folders(args.root, args.queue)
    seen: dict[str, dict[str, int]] = {}
    last = time.monotonic()
    rates: dict[str, tuple[float, float]] = {}
    with rich.live.Live(refresh_per_second=4, screen=False) as live:
        ticks = 0
        while args.count is None or ticks < args.count:
            now = time.monotonic()
            snapshots = []
            for f in folders:
                s = _folder.queue_stats(f)
                ready = {n: events_in_name(n) or 0 for n in s.ready_names}
                before = seen.get(f)
                if before is not None and now > last:
                    came = sum(v for n, v in ready.items() if n not in before)
                    went = sum(v for n, v in before.items() if n not in ready)
                    rates[f] = (came / (now - last), went / (now - last))
                seen[f] = ready
                snapshots.append(s)
            last = now
            live.update(stats_table(rich, snapshots, rates))
            ticks += 1
            if args.count is None or ticks < args.count:
                time.sleep(args.interval)
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from turbo_queue import recover_folder

    (folder,) = _folder.queue_folders(args.root, args.queue)
    counts = recover_folder(folder, legacy=True)
    print(json.dumps(counts) if args.json else
          ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items()))
    return 0


def cmd_peek(args: argparse.Namespace) -> int:
    (folder,) = _folder.queue_folders(args.root, args.queue)
    undecodable = 0
    for value in _folder.peek_rows(folder, args.n):
        try:
            event = decode_value(args.serializer, value)
        except Exception as e:  # any serializer's own error: the value is shown as stored
            undecodable += 1
            print(f"turbo-queue: an event cannot be decoded with --serializer {args.serializer} "
                  f"({type(e).__name__}: {e}); shown as stored", file=sys.stderr)
            event = value
        print(json.dumps(_jsonable(event), default=repr, ensure_ascii=False))
    return 2 if undecodable else 0


def cmd_dead(args: argparse.Namespace) -> int:
    from turbo_queue import dead_letters

    (folder,) = _folder.queue_folders(args.root, args.queue)
    letters = dead_letters(folder, args.n)
    undecodable = 0
    for d in letters:
        try:
            event, decoded = d.decode(args.serializer), True
        except Exception:  # any serializer's own error: shown as stored
            event, decoded = d.value, False
            undecodable += 1
        entry = {"file": d.file, "row": d.row, "source": d.source, "index": d.index,
                 "attempts": d.attempts, "decoded": decoded, "event": _jsonable(event)}
        if args.json:
            print(json.dumps(entry, default=repr, ensure_ascii=False))
        else:
            where = f"event {d.index} of {d.source}" if d.index is not None else f"row {d.row}"
            print(f"{d.file}: {where}, {d.attempts} attempts: "
                  f"{json.dumps(_jsonable(event), default=repr, ensure_ascii=False)}"
                  + ("" if decoded else f"  (bytes: not decodable with --serializer {args.serializer})"))
    if not args.json:
        print(f"{len(letters)} dead letters in {folder}" + (f" (first {args.n})" if args.n else "")
              + ("; return them with: turbo-queue requeue ROOT QUEUE --all" if letters else ""),
              file=sys.stderr)
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    from turbo_queue import requeue

    (folder,) = _folder.queue_folders(args.root, args.queue)
    if bool(args.names) == args.all:
        raise ValueError("requeue takes the names of dead letters (see `turbo-queue dead`), or --all")
    moved = requeue(folder, None if args.all else args.names, all=args.all)
    for name in moved:
        print(name)
    print(f"requeued {len(moved)} dead letters in {folder}", file=sys.stderr)
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    import turbo_queue

    (folder,) = _folder.queue_folders(args.root, args.queue)
    d = turbo_queue.dequeue(root_path=args.root, queue_name=args.queue, wait_timeout=0,
                            serializer=args.serializer, max_attempts=args.max_attempts)
    written = skipped = 0
    with open(args.to, "a", encoding="utf-8") as out:
        while True:
            # The previous batch is deleted only by this call, after its events were written and
            # synced: a crash in between writes them again, never loses them.
            try:
                batch = d.get_batch()
            except turbo_queue.DecodeError as e:
                # Set aside in an invalid_ batch of its own by the consumer; the rest follows.
                skipped += 1
                print(f"turbo-queue: skipped event {e.index} of {e.batch}: it cannot be decoded "
                      f"with --serializer {args.serializer} (set aside in {e.set_aside}; try "
                      f"--serializer raw to see its bytes)", file=sys.stderr)
                continue
            if not batch:
                break
            for event in batch:
                out.write(json.dumps(_jsonable(event), default=repr, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
            written += len(batch)
    d.close()
    print(f"drained {written} events from {folder} to {args.to}"
          + (f"; {skipped} could not be decoded and were set aside, each in a quarantined batch of its own" if skipped else ""),
          file=sys.stderr)
    return 2 if skipped else 0


def _metrics() -> Any:
    try:
        from turbo_queue import metrics
    except ImportError:
        raise SystemExit("turbo-queue: this command needs prometheus_client: "
                         "pip install 'turbo-queue[metrics]'") from None
    return metrics


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen takes HOST:PORT or PORT, not {text!r}")
    return (host.strip("[]") if sep and host else "127.0.0.1"), int(port)


def cmd_metrics(args: argparse.Namespace) -> int:
    metrics = _metrics()
    if not args.listen and not args.textfile:
        raise ValueError("metrics needs --listen HOST:PORT (serve /metrics) or --textfile PATH")
    queues = args.queues or None
    for q in queues or ():
        _folder.queue_folders(args.root, q)  # a missing queue: status 2, said now
    if args.listen:
        host, port = _listen_address(args.listen)
        server, port = metrics.serve(args.root, queues, host, port)
        print(f"turbo-queue: serving metrics of {args.root} on http://{host}:{port}/metrics",
              file=sys.stderr, flush=True)
    registry = metrics.folder_registry(args.root, queues) if args.textfile else None
    written = 0
    stop = threading.Event()
    try:
        with Stopper(stop, "turbo-queue metrics"):  # (SIGTERM or Ctrl-C: stop serving, exit 0)
            while not stop.is_set():
                if registry is not None:
                    metrics.write_textfile(args.textfile, registry)
                    written += 1
                    if args.count is not None and written >= args.count:
                        return 0
                stop.wait(args.interval)
        return 0
    finally:
        if args.listen:
            server.shutdown()


def cmd_demo(args: argparse.Namespace) -> int:
    from turbo_queue._demo import run_demo

    if args.events <= 0 or (args.consumers is not None and args.consumers <= 0):
        raise SystemExit("turbo-queue: --events and --consumers must be positive")
    run_demo(args.events, args.consumers, args.work_us)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from turbo_queue import SERIALIZERS

    p = argparse.ArgumentParser(prog="turbo-queue", description="Watch and manage turbo-queue folders.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("stats", help="files, events waiting and holders per queue (read-only)")
    s.add_argument("root")
    s.add_argument("queue", nargs="?")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_stats)

    w = sub.add_parser("watch", help="live view, refreshed every second, with events/s in and out (read-only)")
    w.add_argument("root")
    w.add_argument("queue", nargs="?")
    w.add_argument("--interval", type=float, default=1.0)
    w.add_argument("--count", type=int, default=None, help="stop after this many refreshes")
    w.set_defaults(func=cmd_watch)

    r = sub.add_parser("recover", help="return batches of dead processes to the queue (startup cleanup)")
    r.add_argument("root")
    r.add_argument("queue")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_recover)

    k = sub.add_parser("peek", help="show the next events without consuming them (read-only)")
    k.add_argument("root")
    k.add_argument("queue")
    k.add_argument("-n", type=int, default=10)
    k.add_argument("--serializer", choices=SERIALIZERS, default="json")
    k.set_defaults(func=cmd_peek)

    d = sub.add_parser("drain", help="consume every event into a JSON-lines file")
    d.add_argument("root")
    d.add_argument("queue")
    d.add_argument("--to", required=True, metavar="FILE.jsonl")
    d.add_argument("--serializer", choices=SERIALIZERS, default="json")
    d.add_argument("--max-attempts", type=int, default=3,
                   help="consumers that may die holding a batch before the event in hand is set aside (0: never)")
    d.set_defaults(func=cmd_drain)

    x = sub.add_parser("dead", help="show dead-lettered events: those that killed max_attempts consumers (read-only)")
    x.add_argument("root")
    x.add_argument("queue")
    x.add_argument("-n", type=int, default=None, help="show at most N")
    x.add_argument("--json", action="store_true", help="one JSON object per line")
    x.add_argument("--serializer", choices=SERIALIZERS, default="json")
    x.set_defaults(func=cmd_dead)

    q = sub.add_parser("requeue", help="return dead letters to the queue, attempts reset")
    q.add_argument("root")
    q.add_argument("queue")
    q.add_argument("names", nargs="*", metavar="NAME", help="dead_ files, as `turbo-queue dead` shows them")
    q.add_argument("--all", action="store_true", help="every dead letter of the queue")
    q.set_defaults(func=cmd_requeue)

    t = sub.add_parser("metrics", help="serve Prometheus metrics of every queue, from the folder alone (read-only)")
    t.add_argument("root")
    t.add_argument("queues", nargs="*", metavar="QUEUE", help="only these queues (default: every one)")
    t.add_argument("--listen", metavar="HOST:PORT", help="serve /metrics there (HOST defaults to 127.0.0.1)")
    t.add_argument("--textfile", metavar="PATH", help="write them there for node_exporter, every --interval")
    t.add_argument("--interval", type=float, default=15.0, help="seconds between textfile writes")
    t.add_argument("--count", type=int, default=None, help="stop after this many textfile writes")
    t.set_defaults(func=cmd_metrics)

    m = sub.add_parser("demo", help="one producer feeding many consumer processes, beside multiprocessing.Queue")
    m.add_argument("--events", type=int, default=500_000)
    m.add_argument("--consumers", type=int, default=None, help="default: CPUs, 2 to 8")
    m.add_argument("--work-us", type=float, default=0.0, help="CPU work per event, microseconds")
    m.set_defaults(func=cmd_demo)

    from turbo_queue import _kafka_cli

    _kafka_cli.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (OSError, ValueError, TurboQueueError) as e:
        # A folder missing or unreadable, a setting refused, a batch that cannot be read: said in a
        # line, not a traceback.
        message = str(e)
        print(message if message.startswith("turbo") else f"turbo-queue: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
