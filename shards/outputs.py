"""Where ltpipe writes beside a shard directory.

An output (``ltpipe train``'s RUN, ``ltpipe preview``'s grid, ``ltpipe inspect --plot``) never
lies inside the shards, is never the shard directory and never holds it (symlinks followed):
what ltpipe writes would mix into the shards or overwrite them, or a shard writer's files would
mix into the run. An image output replaces only an earlier PNG, never another file (a manifest,
a tar, a run's checkpoint), and its folder must exist (a typo in it is not made into new
folders). Each refusal is a one-line ValueError naming the option.
"""

from __future__ import annotations

from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_apart(out: Path, shards: Path, option: str = "--out") -> None:
    """``out`` and ``shards`` are neither one directory nor one inside the other."""
    run, data = out.resolve(), shards.resolve()
    if run == data or data in run.parents:
        raise ValueError(f"{option} {out}: is inside the shard directory {shards} (what ltpipe "
                         f"writes there would mix into the shards); choose an {option} outside it")
    if run in data.parents:
        raise ValueError(f"{option} {out}: holds the shard directory {shards}; choose an "
                         f"{option} that does not contain the shards")


def check_png_out(out: Path, shards: Path, option: str, command: str) -> None:
    """``out`` may be written as a PNG: apart from the shards, in an existing folder, and new or
    an earlier PNG."""
    check_apart(out, shards, option)
    if not out.parent.is_dir():
        raise ValueError(f"{option} {out}: no such directory {out.parent}")
    if out.exists() or out.is_symlink():
        if not out.is_file():
            raise ValueError(f"{option} {out}: exists and is not a file")
        with open(out, "rb") as fh:
            if fh.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                raise ValueError(f"{option} {out}: exists and is not a PNG; {command} "
                                 "overwrites only a PNG (choose another name)")
