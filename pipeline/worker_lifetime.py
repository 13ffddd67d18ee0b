"""Q's DALI worker processes end with the process that forked them, and leave Ctrl-C and
SIGTERM to it.

DALI forks its ``external_source`` workers, and a forked worker inherits both ends of the pipes it
waits on, so it never sees them close: after a SIGKILL of the trainer (an OOM kill, a scheduler's
preemption) the workers would live on, holding memory and mmapped shards. Linux's
PR_SET_PDEATHSIG has the kernel kill them instead (``tie_to_parent``, shards/lifetime.py, which
``ltpipe shard``'s workers use too), from birth (``tied_at_fork``): a worker that has not yet
had a task when the trainer dies would otherwise never learn of it. Elsewhere this is a no-op.
Ctrl-C reaches the whole process group, and so does a scheduler's SIGTERM; the trainer handles
both (and its exit ends the workers), so the workers ignore them rather than each print a
traceback or die before the trainer has said what it saved. They must ignore them from birth:
a worker that has not yet run its first task would otherwise still hold the trainer's handlers
when the signal comes. A forked worker does so from its first instruction (``tied_at_fork``),
while the trainer keeps its handlers; a spawned one inherits only an ignored disposition
(``sigint_ignored_while_forking``), so the trainer ignores the signals while it spawns.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading

from ltpipe.shards.lifetime import LEFT_TO_THE_PARENT, tie_to_parent

# (pid, thread id) of a ``tied_at_fork`` block while it runs; a fork from that thread ties the child
_forking: tuple[int, int] | None = None


def _tie_child_of_the_block() -> None:
    global _forking
    block, _forking = _forking, None  # the child's own forks (if any) are not tied to us
    if block is not None and threading.get_ident() == block[1]:  # forked by the block's thread
        tie_to_parent(block[0], ignore=LEFT_TO_THE_PARENT)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_tie_child_of_the_block)


@contextlib.contextmanager
def tied_at_fork():
    """Processes forked (``os.fork``, multiprocessing's "fork") by this thread inside the block are
    tied to this process from their first instruction in Python: the kernel kills them when it
    dies, and they ignore Ctrl-C and SIGTERM. Spawned processes are not forked: they tie
    themselves on their first task (``MinoritySource``)."""
    global _forking
    _forking = (os.getpid(), threading.get_ident())
    try:
        yield
    finally:
        _forking = None


@contextlib.contextmanager
def sigint_ignored_while_forking():
    """Ignore SIGINT and SIGTERM in this process while the block forks or spawns workers, so
    they start with them ignored (both inherit the disposition; a spawned Python keeps an
    inherited SIG_IGN), then restore the caller's handlers. A Ctrl-C or SIGTERM that comes
    during the block (while a loader starts its workers) is lost: blocking it instead would hold
    it only where no other thread (torch's, DALI's) takes it first. Off the main thread, where
    handlers cannot be changed, a no-op: the workers then ignore them from their first task.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.signal(signum, signal.SIG_IGN) for signum in LEFT_TO_THE_PARENT}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


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
