"""turbo_queue.Queue in place of multiprocessing.Queue, with a process pool.

    python examples/mp_queue.py
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

from turbo_queue import Queue

results: Any = None


def init(q: Any) -> None:
    global results
    results = q


def square(x: int) -> int:
    results.put((x, x * x))
    return x


def main() -> None:
    q = Queue()
    with mp.Pool(4, initializer=init, initargs=(q,)) as pool:
        pool.map(square, range(100))
        pool.close()
        pool.join()
    got = dict(q.get(timeout=10) for _ in range(100))
    print(f"{len(got)} results, 7 squared is {got[7]}")


if __name__ == "__main__":
    main()
