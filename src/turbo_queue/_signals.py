"""Stopping a long-running command or connector cleanly on SIGTERM or SIGINT.

A service manager stops a process with SIGTERM and a person with Ctrl-C (SIGINT); either should end
it the way its own code ends, not by the default action. The handlers are installed even where the
signal was ignored when the process started (a shell runs a background job with SIGINT ignored),
and the previous ones are restored after.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

logger = logging.getLogger("turbo_queue")


class Stopper:
    """Within `with Stopper(stop, what)`: SIGTERM and SIGINT set `stop` (in the main thread only:
    elsewhere signals cannot be handled, and nothing is installed)."""

    def __init__(self, stop: threading.Event, what: str) -> None:
        self._stop = stop
        self._what = what
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "Stopper":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        logger.info("%s: %s received, stopping cleanly", self._what, signal.Signals(signum).name)
        self._stop.set()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
