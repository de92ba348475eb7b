# Crash points, a test hook: SIGKILL this process the n-th time it reaches a named step of the protocol.
#
# Set with set_crash_point() or TURBO_QUEUE_CRASH_AT=step:n. A step costs one pointer comparison when
# no crash point is set. docs/design.md lists where each step sits.

CRASH_POINTS = ("add", "insert", "commit", "write", "publish", "published", "claim", "read",
                "delete", "recover", "hold", "dead", "requeue")
cdef object _crash_at = None
cdef long _crash_countdown = 0


def set_crash_point(point, after=1):
    """Test hook: SIGKILL this process the `after`-th time it reaches `point` (one of CRASH_POINTS);
    None clears it."""
    global _crash_at, _crash_countdown
    if point is not None and point not in CRASH_POINTS:
        raise ValueError(f"unknown crash point {point!r}")
    _crash_at = point
    _crash_countdown = after


cdef inline int _crash_point(str point) except -1:
    global _crash_countdown
    if _crash_at is not None and _crash_at == point:
        _crash_countdown -= 1
        if _crash_countdown <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
    return 0


if os.environ.get("TURBO_QUEUE_CRASH_AT"):
    _p, _, _n = os.environ["TURBO_QUEUE_CRASH_AT"].partition(":")
    set_crash_point(_p, int(_n or 1))
