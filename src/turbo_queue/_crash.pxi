# Crash points, a test hook: SIGKILL (or SIGSTOP) this process the n-th time it reaches a named step of the protocol.
#
# Set with set_crash_point() or TURBO_QUEUE_CRASH_AT=step:n[:stop]. A step costs one pointer
# comparison when no crash point is set. docs/design.md lists where each step sits.

CRASH_POINTS = ("add", "insert", "commit", "write", "publish", "published", "claim", "read",
                "delete", "recover", "hold", "dead", "requeue", "wait", "woken", "watch", "watched")
cdef object _crash_at = None
cdef long _crash_countdown = 0
cdef int _crash_signal = signal.SIGKILL


def set_crash_point(point, after=1, stop=False):
    """Test hook: SIGKILL this process the `after`-th time it reaches `point` (one of CRASH_POINTS),
    or with `stop` SIGSTOP it there (once); None clears it."""
    global _crash_at, _crash_countdown, _crash_signal
    if point is not None and point not in CRASH_POINTS:
        raise ValueError(f"unknown crash point {point!r}")
    _crash_at = point
    _crash_countdown = after
    _crash_signal = signal.SIGSTOP if stop else signal.SIGKILL


cdef inline int _crash_point(str point) except -1:
    global _crash_countdown
    if _crash_at is not None and _crash_at == point:
        _crash_countdown -= 1
        if _crash_countdown == 0 or (_crash_countdown < 0 and _crash_signal == signal.SIGKILL):
            os.kill(os.getpid(), _crash_signal)
    return 0


if os.environ.get("TURBO_QUEUE_CRASH_AT"):
    _p, _, _n = os.environ["TURBO_QUEUE_CRASH_AT"].partition(":")
    _n, _, _how = _n.partition(":")
    set_crash_point(_p, int(_n or 1), stop=_how == "stop")
