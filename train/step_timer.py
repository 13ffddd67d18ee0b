"""Is the device waiting for data? Per-step loader wait and device idle time.

``wait``: host milliseconds inside ``next(loader)``. ``idle``: device milliseconds between one
step's end and the next step's start. On CUDA that gap is read from two events per step recorded
on the current (compute) stream, so a step whose inputs are not ready shows as idle time even when
the host itself never blocks; the events are read only in ``collect()``, after the caller has
synchronized, so timing adds no host sync per step. On the CPU the host is the device: idle is
the wait. ``issue``: host milliseconds to enqueue the step (near the step time on CUDA means the
host, not the GPU, sets the pace). Used by the trainer (metrics.jsonl) and bench/e2e.py.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch


class StepTimer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._wait: list[float] = []
        self._issue: list[float] = []
        self._marks: list[tuple] = []  # (start, end) CUDA events per step

    def iterate(self, steps):
        """``steps`` with each ``next`` timed as loader wait."""
        it = iter(steps)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self._wait.append((time.perf_counter() - t0) * 1e3)
            yield item

    @contextmanager
    def step(self):
        """Around one step: its issue time, and (CUDA) the events that bound it on the device."""
        t0 = time.perf_counter()
        start = self._event()
        yield
        if self.cuda:
            self._marks.append((start, self._event()))
        self._issue.append((time.perf_counter() - t0) * 1e3)

    def _event(self):
        if not self.cuda:
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def collect(self) -> dict[str, list[float]]:
        """Per-step milliseconds since the last collect (CUDA: call after a synchronize; the gap
        across two collects is not counted): {"wait", "idle", "issue"}."""
        if self.cuda:
            idle = [a[1].elapsed_time(b[0]) for a, b in zip(self._marks, self._marks[1:])]
        else:
            idle = list(self._wait)
        out = {"wait": self._wait, "idle": idle, "issue": self._issue}
        self._wait, self._issue, self._marks = [], [], []
        return out


def tail(ms: list[float]) -> dict[str, float | None]:
    """{"p50", "p99", "max"} of per-step milliseconds (None with no steps): a loader that
    stalls one step in four hides in a mean but not in p99 and max."""
    if not len(ms):
        return {"p50": None, "p99": None, "max": None}
    values = np.asarray(ms, dtype=np.float64)
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "max": float(values.max())}
