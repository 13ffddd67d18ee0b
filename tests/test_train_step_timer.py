"""StepTimer: the loader wait and device idle figures the trainer logs and bench/e2e.py reports."""

import time

import pytest
import torch

from ltpipe.train.step_timer import StepTimer

LOADER_MS = 30


def slow_loader(n):
    for i in range(n):
        time.sleep(LOADER_MS / 1e3)  # a loader that cannot keep up
        yield i


def test_a_slow_loader_shows_as_wait_and_idle():
    timer = StepTimer(torch.device("cpu"))
    seen = []
    for i in timer.iterate(slow_loader(4)):
        with timer.step():
            seen.append(i)
    got = timer.collect()
    assert seen == [0, 1, 2, 3]
    assert len(got["wait"]) == 4 and min(got["wait"]) >= LOADER_MS * 0.9
    assert got["idle"] == got["wait"]  # on the CPU the host is the device


def test_a_ready_loader_costs_no_wait_and_collect_resets():
    timer = StepTimer(torch.device("cpu"))
    for _ in timer.iterate(range(5)):
        with timer.step():
            time.sleep(LOADER_MS / 1e3)  # the step takes the time, not the loader
    got = timer.collect()
    assert len(got["wait"]) == len(got["issue"]) == 5
    # the median: one scheduling delay on a loaded machine must not fail the test
    assert sorted(got["wait"])[2] < LOADER_MS / 3 and min(got["issue"]) >= LOADER_MS * 0.9
    assert timer.collect() == {"wait": [], "idle": [], "issue": []}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_idle_is_the_gap_between_steps_on_the_device():
    dev = torch.device("cuda")
    x = torch.randn(2048, 2048, device=dev)
    timer = StepTimer(dev)
    for _ in timer.iterate(slow_loader(3)):  # the GPU finishes each step long before the next
        with timer.step():
            x @ x
    torch.cuda.synchronize()
    got = timer.collect()
    assert len(got["wait"]) == 3 and len(got["idle"]) == 2  # gaps between 3 steps
    assert min(got["idle"]) >= LOADER_MS * 0.8
