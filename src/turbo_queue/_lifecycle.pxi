# Process life: every live producer and consumer is closed when its process exits, and forgets the
# parent's files in a forked child.

_live = weakref.WeakSet()

def process_counters():
    """{(role, queue folder): counters} of this process's producers (role "producer") and consumers
    ("consumer"), closed ones included: totals that only grow, for turbo_queue.metrics."""
    out = {key: dict(v) for key, v in _retired_counters.items()}
    for obj in list(_live):
        if (<_QueueBase>obj)._counted_out:
            continue
        role = "producer" if isinstance(obj, Enqueue) else "consumer"
        total = out.setdefault((role, os.path.join(obj.root_path, obj.queue_name)), {})
        for k, v in obj.counters().items():
            total[k] = total.get(k, 0) + v
    return out


def _after_fork_in_child():
    forget_cpus()
    for obj in list(_live):
        if isinstance(obj, Enqueue):
            (<Enqueue>obj).after_fork_in_child()
        elif isinstance(obj, Dequeue):
            (<Dequeue>obj).after_fork_in_child()


def _close_all_at_exit():
    # A process leaving by an uncaught exception (the main script's is sys.last_value; a
    # multiprocessing child's is still in flight here) failed with what its consumers held: their
    # batches go back with one more attempt, as from a `with` block (see Dequeue.max_attempts).
    exc = sys.exc_info()[1] or getattr(sys, "last_value", None)
    cdef bint failed = isinstance(exc, Exception)
    for obj in list(_live):
        try:
            if failed and isinstance(obj, Dequeue):
                (<Dequeue>obj).close_failed()
            else:
                obj.close()
        except Exception:
            logger.exception("turbo_queue: closing %r at exit failed", obj)


cdef long _exit_hook_pid = 0


cdef int _ensure_exit_hook() except -1:
    """Close every live producer and consumer when this process exits: through atexit, and, in a
    process that multiprocessing started (it leaves with os._exit, skipping atexit), through
    multiprocessing's exit function. A process without multiprocessing loaded is no such child,
    so multiprocessing is not imported for it."""
    global _exit_hook_pid
    cdef long pid = os.getpid()
    if pid != _exit_hook_pid:
        util = sys.modules.get("multiprocessing.util")
        if util is None:
            return 0
        _exit_hook_pid = pid
        util.Finalize(None, _close_all_at_exit, exitpriority=100)
    return 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
