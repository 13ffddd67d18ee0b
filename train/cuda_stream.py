"""The CUDA stream the training step runs on ("is my GPU ever waiting for data?").

DALI runs its decode and resize kernels on its own streams, at the default priority, which CUDA
counts as the lowest. When the step's kernels and the loader's are queued at the same time, the
GPU's block scheduler hands free SMs to the higher-priority stream first. Running the step on a
high-priority stream therefore lets the loader use only what the step leaves idle, instead of
slowing every step by the loader's share (bench/e2e.py measures both, ``prio=``).

The switch is ordered both ways: the new stream waits for the work queued so far on the current
one, and the current one waits for the new one on exit, so tensors made before (the model, the
optimizer state) and read after (a final evaluation) need no further care. Every tensor the step
creates inside is allocated on, and freed to, the same stream.
"""

from __future__ import annotations

import contextlib

import torch

from ltpipe.train.config import STREAM_PRIORITIES as PRIORITIES
# torch maps an out-of-range priority to the nearest valid one: this is the highest the device has
HIGHEST = -(1 << 20)


@contextlib.contextmanager
def compute_stream(device: torch.device, priority: str = "high"):
    """Run the body on a stream of ``priority`` ("high" | "default"); a no-op off CUDA."""
    if priority not in PRIORITIES:
        raise ValueError(f"compute_stream: must be one of {PRIORITIES}, got {priority!r}")
    if device.type != "cuda" or priority == "default":
        yield None
        return
    outer = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device, priority=HIGHEST)
    stream.wait_stream(outer)
    try:
        with torch.cuda.stream(stream):
            yield stream
    finally:
        outer.wait_stream(stream)
