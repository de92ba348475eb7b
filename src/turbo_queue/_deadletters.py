"""Dead letters: the events set aside after killing max_attempts consumers (or given up on with
Enqueue.add_dead_letters), listed for a person and returned to the queue when they say so."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

from turbo_queue._core import (
    BatchName,
    dead_letter_source,
    decode_value,
    parse_name,
    read_batch,
    requeue_dead_letter,
)
from turbo_queue.errors import SQLiteError


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered event: `file` (its dead_ file in the queue folder), `row` (its place in that
    file), `source` (the batch it came from, as its ready_ name, or None), `index` (its place in that
    batch, or None), `attempts` (consumers that died holding it, 0 when it was given up on), and
    `value` (its bytes as stored; decode() them with the queue's serializer)."""

    file: str
    row: int
    source: str | None
    index: int | None
    attempts: int
    value: bytes

    def decode(self, serializer: Any = "json") -> Any:
        """The event, decoded with `serializer` (a name or an object with loads())."""
        return decode_value(serializer, self.value)


def dead_files(folder: str) -> list[BatchName]:
    """The dead_ files of a queue folder, oldest first."""
    found = (parse_name(name) for name in os.listdir(folder))
    return sorted((b for b in found if b is not None and b.state == "dead"), key=lambda b: b.name)


def dead_letters(path: str | os.PathLike[str], limit: int | None = None) -> list[DeadLetter]:
    """The dead-lettered events of the queue folder `path` (root_path/queue_name), oldest first, at
    most `limit`. Read-only: a dead_ file that cannot be read is skipped (`turbo-queue stats` still
    counts it)."""
    folder = os.fspath(path)
    out: list[DeadLetter] = []
    for b in dead_files(folder):
        if limit is not None and len(out) >= limit:
            break
        try:
            values = read_batch(os.path.join(folder, b.name), -1 if limit is None else limit - len(out))
        except (SQLiteError, OSError):
            continue  # requeued meanwhile, or not readable
        source = dead_letter_source(b.name)
        for row, value in enumerate(values):
            index = None if b.index is None else b.index + row
            out.append(DeadLetter(b.name, row, source, index, b.attempts, value))
    return out


def requeue(path: str | os.PathLike[str], names: Iterable[str | DeadLetter] | None = None, *,
            all: bool = False) -> list[str]:
    """Return dead letters of the queue folder `path` to the queue, each where its batch was in line,
    with its attempts reset: the dead_ files `names` (names or DeadLetter objects), or every one with
    `all=True`. Returns the new ready_ names. A name that is not a dead letter of the folder raises
    ValueError before anything moves."""
    folder = os.fspath(path)
    if all == (names is not None):
        raise ValueError("turbo_queue: requeue() takes the names of dead letters, or all=True")
    found = {b.name: b for b in dead_files(folder)}
    present = set(found)
    chosen = present if all else {n.file if isinstance(n, DeadLetter) else os.path.basename(n) for n in names or ()}
    missing = sorted(chosen - present)
    if missing:
        raise ValueError(f"turbo_queue: no dead letter {missing[0]!r} in {folder} "
                         f"(dead letters there: {len(present)}; `turbo-queue dead` lists them)")
    moved = []
    for name in sorted(chosen):
        events = found[name].events
        new = requeue_dead_letter(folder, name, -1 if events is None else int(events))
        if new is not None:
            moved.append(new)
    return moved
