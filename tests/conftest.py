"""Test setup: numba's CUDA simulator must be chosen before numba is first imported."""

import os
import sys

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
# The simulator runs a block's threads as Python threads that take one lock on every
# device-function call, and a thread that waits for the GIL holds the others up for a whole
# switch interval: at Python's 5 ms the Sinkhorn kernel's test took 64 s, at 0.1 ms about 9 s
# (the element-wise kernels avoid it with one thread a block, kernels/numba_bridge.py).
sys.setswitchinterval(1e-4)

import pytest  # noqa: E402  (after the simulator switch above)


def _lock_simulated_shared_arrays() -> None:
    """numba's simulator creates a block's shared array on first use with an unlocked
    check-then-set, so two threads can each get an array of their own: the Sinkhorn kernel's
    warp reduction then read another thread's empty array and took log(0) (seen once in a full
    run, more likely with the short switch interval above). Same keying (the caller's file and
    line), under a lock."""
    import threading
    import traceback

    import numpy as np
    from numba.core import types
    from numba.cuda.simulator.kernelapi import FakeCUDAShared
    from numba.np import numpy_support

    original, lock = FakeCUDAShared.array, threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if alignment is not None or shape == 0:  # the original's errors and dynamic memory
            return original(self, shape, dtype, alignment)
        caller = tuple(traceback.extract_stack(sys._getframe(1), limit=1)[-1][0:2])
        with lock:
            if caller not in self._allocations:
                kind = numpy_support.as_dtype(dtype) if isinstance(dtype, types.Type) else dtype
                self._allocations[caller] = np.empty(shape, kind)
            return self._allocations[caller]

    FakeCUDAShared.array = array


if os.environ["NUMBA_ENABLE_CUDASIM"] == "1":
    _lock_simulated_shared_arrays()


def pytest_unconfigure(config):
    """A failed test's traceback can keep a DALI pipeline alive, and with it Q's worker
    processes; Python's exit then waits for them for ever (multiprocessing joins its children)
    and a failing run hangs instead of failing. Whatever is left is ended here, after the
    report."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()  # Q's workers ignore SIGTERM: it is the trainer's to handle
        child.join(5)


@pytest.fixture(scope="session", autouse=True)
def scan_cache(tmp_path_factory):
    """The JPEG pre-scan's cache (shards/jpegscan.py) in a temp folder, not the user's ~/.cache."""
    before = os.environ.get("LTPIPE_CACHE")
    os.environ["LTPIPE_CACHE"] = str(tmp_path_factory.mktemp("scan-cache"))
    yield
    if before is None:
        os.environ.pop("LTPIPE_CACHE", None)
    else:
        os.environ["LTPIPE_CACHE"] = before


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
    """A tiny synthetic shard directory (6 classes: 40,15,6,2,1,1 train images, 32 px)."""
    from ltpipe.shards.write import write_shards

    out = tmp_path_factory.mktemp("tiny") / "shards"
    write_shards("synthetic", out, classes=6, max_per_class=40, image_size=32, progress=False)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Shared CI cores: OpenMP threads spin-wait against each other; restore afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
