"""The output-directory lock: a live holder refuses with one line, a dead holder on this host is
taken over, a holder on another host always refuses, and the lock is gone after the block."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from ltpipe.shards.outlock import LOCK_NAME, OutputLockedError, output_lock


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _plant(directory, **holder):
    (directory / LOCK_NAME).write_text(json.dumps(holder) + "\n")


def test_lock_is_held_inside_and_removed_after(tmp_path):
    with output_lock(tmp_path, "ltpipe shard a b") as path:
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["command"] == "ltpipe shard a b"
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_is_removed_on_exception(tmp_path):
    with pytest.raises(RuntimeError), output_lock(tmp_path, "x"):
        raise RuntimeError("boom")
    assert not (tmp_path / LOCK_NAME).exists()


def test_live_holder_refuses_with_one_line(tmp_path):
    with output_lock(tmp_path, "ltpipe shard first\nrun"):
        with pytest.raises(OutputLockedError) as exc, output_lock(tmp_path, "second"):
            pass
    msg = str(exc.value)
    assert "\n" not in msg and f"pid {os.getpid()}" in msg and "delete" in msg
    assert "ltpipe shard first run" in msg


def test_live_holder_in_another_process_refuses(tmp_path):
    code = ("import sys, time; from ltpipe.shards.outlock import output_lock\n"
            "with output_lock(sys.argv[1], 'holder'):\n"
            "    print('held', flush=True); time.sleep(30)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=f"pid {child.pid} "), \
                output_lock(tmp_path, "second"):
            pass
    finally:
        child.kill()
        child.wait()


def test_dead_pid_on_this_host_is_taken_over(tmp_path):
    _plant(tmp_path, host=socket.gethostname(), pid=_dead_pid(), command="killed run")
    with output_lock(tmp_path, "new") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left aside either


def test_reused_pid_is_stale(tmp_path):
    """Our own pid, but a different process start time: the holder is gone."""
    _plant(tmp_path, host=socket.gethostname(), pid=os.getpid(), started=1, command="old")
    with output_lock(tmp_path, "new"):
        pass


def test_foreign_host_is_never_stale(tmp_path):
    _plant(tmp_path, host="some-other-node", pid=_dead_pid(), command="ltpipe shard x y")
    with pytest.raises(OutputLockedError, match="on host some-other-node"), \
            output_lock(tmp_path, "new"):
        pass
    assert (tmp_path / LOCK_NAME).exists()  # left for its owner


def test_unreadable_lock_refuses(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")
    with pytest.raises(OutputLockedError, match="unreadable lock file"), \
            output_lock(tmp_path, "new"):
        pass
