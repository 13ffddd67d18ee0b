"""Q's DALI worker processes end with the process that forked them, and leave Ctrl-C to it.

DALI forks its ``external_source`` workers, and a forked worker inherits both ends of the pipes it
waits on, so it never sees them close: after a SIGKILL of the trainer (an OOM kill, a scheduler's
preemption) the workers would live on, holding memory and mmapped shards. Linux's
PR_SET_PDEATHSIG has the kernel kill them instead (``tie_to_parent``, shards/lifetime.py, which
``ltpipe shard``'s workers use too). Elsewhere this is a no-op. Ctrl-C reaches the
whole process group; the trainer handles it (and its exit ends the workers), so the workers ignore
it rather than each print a KeyboardInterrupt traceback. They must ignore it from birth
(``sigint_ignored_while_forking``): a worker that has not yet run its first task would otherwise
still hold Python's handler when Ctrl-C comes.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import threading


@contextlib.contextmanager
def sigint_ignored_while_forking():
    """Ignore SIGINT in this process while the block forks or spawns workers, so they start with
    it ignored (both inherit the disposition; a spawned Python keeps an inherited SIG_IGN), then
    restore the caller's handler. A Ctrl-C during the block is lost. Off the main thread, where
    handlers cannot be changed, a no-op: the workers then ignore SIGINT from their first task.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before if before is not None else signal.SIG_DFL)


@contextlib.contextmanager
def no_garbage_across_fork():
    """Collect this process's garbage, then freeze what is left while the block forks workers.

    A forked worker starts with a copy of the parent's heap. Had that heap an unreachable DALI
    ``Pipeline`` in it (an earlier loader's, held in a reference cycle), the worker's first
    garbage collection would run its ``__del__`` on native state the fork did not copy, and the
    worker would die with a segfault (DALI then raises "Workers initialization failed"; seen in
    the test suite). Collected here, the ``__del__`` runs in the parent, where it is harmless,
    and frozen objects are never examined by a child's collector.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
