"""Which code produced a run or a measurement: the commit of a source checkout, else the version."""

from __future__ import annotations

import subprocess
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]  # the folder that holds train/, shards/, ...


def git_hash() -> str:
    """``abc1234`` (``-dirty`` with uncommitted changes to tracked files) in a source checkout;
    ``ltpipe-<version>`` for an installed wheel, whose folder may sit inside an unrelated git
    repository (a virtual environment in a project, say) whose commit would mislead."""
    if not (_CHECKOUT / ".git").exists():
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"ltpipe-{version('ltpipe')}"
        except PackageNotFoundError:
            return "unknown"
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=_CHECKOUT)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], capture_output=True,
                               text=True, cwd=_CHECKOUT).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
