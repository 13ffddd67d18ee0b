"""An exclusive lock per output directory, so two ltpipe commands never write into one at once.

API::

    from ltpipe.shards.outlock import OutputLockedError, output_lock

    with output_lock(out_dir, command="ltpipe shard ..."):   # out_dir must exist
        ...  # this process is the only ltpipe writer of out_dir

``output_lock`` creates ``out_dir/.ltpipe.lock`` with ``O_CREAT | O_EXCL`` (atomic, also on NFS
v3+), holding one JSON line: hostname, pid, the process's start time (where /proc has it, so a
reused pid is not taken for the holder), a random token and the command. The file is removed when
the block exits, also on an exception; it is left behind only when the process is killed.

An existing lock is *stale* only when it names this host and its process is gone (dead pid, or a
pid now running a different process); a stale lock is taken over atomically (renamed away, so of
two processes taking it over only one wins). Any other lock raises ``OutputLockedError``, whose
message is one line naming the holder (pid, host, command) and how to clear it. A lock written
from another host is never treated as stale: output directories on shared filesystems are written
from several nodes, and this host cannot see their processes.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ltpipe.shards.bounded import parse_json, read_bytes

LOCK_NAME = ".ltpipe.lock"
UNREADABLE_RETRIES = 20  # x 50 ms: a lock just created may not hold its line yet
MAX_ATTEMPTS = 100  # create/take-over rounds before giving up (others keep racing for it)
LOCK_MAX_BYTES = 64 << 10  # one JSON line
MAX_PID = 1 << 22  # Linux's pid_max limit: a larger pid was never a process of this host


class OutputLockedError(ValueError):
    """The output directory is locked by another process; the message is one line."""


@contextmanager
def output_lock(directory: str | Path, command: str) -> Iterator[Path]:
    """Hold ``directory/.ltpipe.lock`` for the block (see the module docstring); yields its path."""
    path = Path(directory) / LOCK_NAME
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid()),
            "token": secrets.token_hex(8), "command": " ".join(str(command).split())}
    _acquire(path, mine)
    try:
        yield path
    finally:
        if _read(path) == mine:  # never remove a lock that someone else took over
            path.unlink(missing_ok=True)


def _acquire(path: Path, mine: dict) -> None:
    line = (json.dumps(mine, sort_keys=True) + "\n").encode()
    for _ in range(MAX_ATTEMPTS):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_settled(path)
            if holder is _GONE:
                continue  # released meanwhile: try again
            if holder is None or not _is_stale(holder):
                raise OutputLockedError(_message(path, holder)) from None
            _take_over(path, holder)
            continue
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    holder = _read(path)
    raise OutputLockedError(_message(path, holder if isinstance(holder, dict) else None))


_GONE = object()


def _read(path: Path):
    """The lock's JSON dict; None when unreadable or malformed; _GONE when absent."""
    try:
        doc = parse_json(read_bytes(path, LOCK_MAX_BYTES, "lock file"), str(path))
    except FileNotFoundError:
        return _GONE
    except (OSError, ValueError):  # ParseError: too large, not JSON, "pid": 1e999
        return None
    return doc if isinstance(doc, dict) else None


def _read_settled(path: Path):
    """Like _read, but gives a lock created a moment ago time to be written."""
    for _ in range(UNREADABLE_RETRIES):
        holder = _read(path)
        if holder is not None:
            return holder
        time.sleep(0.05)
    return None


def _is_stale(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return False  # another node's process: we cannot tell whether it is alive
    pid = holder.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= MAX_PID:
        return False  # not a pid this host can have written: never taken over
    if not _pid_alive(pid):
        return True
    started = holder.get("started")
    return started is not None and _start_time(pid) not in (None, started)  # pid reused


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    return True


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name may hold spaces
    except (OSError, IndexError, ValueError):
        return None


def _take_over(path: Path, stale: dict) -> None:
    """Move the stale lock aside; only the process whose rename still finds it wins. If another
    process replaced it in between (its content differs), put theirs back."""
    aside = path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another process took it over first
    if _read(aside) == stale:
        aside.unlink(missing_ok=True)
        return
    try:
        os.link(aside, path)  # not ours to remove: restore it, unless a newer one exists
    except FileExistsError:
        pass
    aside.unlink(missing_ok=True)


def _message(path: Path, holder: dict | None) -> str:
    if holder is None:
        return (f"{path}: output locked (unreadable lock file); delete it if no ltpipe "
                f"command is writing to {path.parent}")
    host, pid, command = (" ".join(str(holder.get(k, "?")).split())
                          for k in ("host", "pid", "command"))
    command = command if len(command) <= 120 else command[:117] + "..."
    return (f"{path.parent}: locked by pid {pid} on host {host} ({command}); wait for it, or "
            f"delete {path} if that process is gone")
