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
    try:
        time.sleep(600)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
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


def start(shards, **kwargs):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(shards)], stdout=subprocess.PIPE,
                            text=True, **kwargs)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_workers_exit_when_the_trainer_is_killed(tiny_shards):
    proc = start(tiny_shards)
    try:
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


def test_ctrl_c_is_left_to_the_trainer(tiny_shards, tmp_path):
    """Ctrl-C signals the whole process group: the workers stay quiet (no KeyboardInterrupt
    traceback each) and end with the trainer."""
    err = tmp_path / "stderr"
    with open(err, "w") as fh:
        proc = start(tiny_shards, stderr=fh, start_new_session=True)
        try:
            workers = children(proc.pid)
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.stdout.readline().strip() == "interrupted"
            assert proc.wait(30) == 0
        finally:
            proc.kill()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert "Traceback" not in err.read_text(), err.read_text()[-2000:]
    assert not [w for w in workers if alive(w)]
