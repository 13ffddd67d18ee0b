"""Worker processes end with the process that forked them, and leave Ctrl-C (and, for the loaders'
readers, SIGTERM) to it.

A forked worker inherits both ends of the pipes it waits on, so it never sees them close: after
a SIGKILL of its parent (the out-of-memory killer, a scheduler's preemption) it would live on,
holding memory. Linux's PR_SET_PDEATHSIG has the kernel kill it instead; elsewhere this is a
no-op. Used by `ltpipe shard`'s encoding workers and by the loaders' Q workers
(pipeline/worker_lifetime.py).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# What the trainer answers for its whole process group. Only the loaders' reader processes leave
# SIGTERM to it: `ltpipe shard`'s pool stops its own workers with SIGTERM when one of them dies.
LEFT_TO_THE_PARENT = (signal.SIGINT, signal.SIGTERM)


def tie_to_parent(parent_pid: int, ignore=(signal.SIGINT,)) -> None:
    """Ignore the signals ``ignore`` (Ctrl-C reaches the whole group; the parent answers for it),
    and ask the kernel to SIGKILL this process when its parent dies (exit now if it already
    has).

    The signal follows the parent *thread* that forked this process: fork from a thread that
    lives as long as the parent (DALI forks from the thread that builds the pipeline, the
    trainer's main thread; ``ltpipe shard`` from its main thread).
    """
    for signum in ignore:
        signal.signal(signum, signal.SIG_IGN)
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0 and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before the request: nothing would signal
