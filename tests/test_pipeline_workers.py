"""Q's DALI worker processes do not outlive a SIGKILLed trainer (pipeline/worker_lifetime.py)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")

SCRIPT = textwrap.dedent("""
    import sys, time
    from ltpipe.pipeline.loader import make_loader
    loader = make_loader(sys.argv[1], batch_size=4, streams=("uniform", "minority"),
                         num_threads=1, py_workers=2)
    next(iter(loader))
    print("ready", flush=True)
    time.sleep(600)
""")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_workers_exit_when_the_trainer_is_killed(tiny_shards):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tiny_shards)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        workers = children(proc.pid)
        assert len(workers) >= 2  # DALI's py_workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [w for w in workers if alive(w)]
        for w in left:  # do not leave them behind when the assertion fails
            os.kill(w, signal.SIGKILL)
        assert not left, f"DALI workers outlived the trainer: {left}"
    finally:
        proc.kill()
