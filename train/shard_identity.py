"""The identity of a run's shards: recorded when the run starts, compared on ``--resume``.

``RUN/shards.json`` holds the SHA-256 of the shard directory's ``manifest.json`` and, for every
shard tar the manifest lists (each split), its bytes and sha256 as listed there plus the file's
size and mtime on disk. A resume compares the manifest's digest and each tar's size and mtime:
one ``stat`` per file, since re-hashing tens of GB on every resume is not wanted (``ltpipe
inspect --verify`` re-hashes). Other shards, or a tar replaced, cut or rewritten since, are one
line naming the file: a resumed run must train on the data it started on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ltpipe.shards.format import MANIFEST, load_manifest
from ltpipe.train.outputs import json_text, write_text_atomic

IDENTITY = "shards.json"

log = logging.getLogger(__name__)


def shard_identity(shards: str | Path) -> dict:
    """{"manifest_sha256", "shards": [{"path", "bytes", "sha256", "size", "mtime_ns"}]}."""
    manifest = load_manifest(shards)
    listed = []
    for split, info in sorted(manifest.splits.items()):
        for shard in info.shards:
            stat = (manifest.root / split / shard.name).stat()
            listed.append({"path": f"{split}/{shard.name}", "bytes": shard.bytes,
                           "sha256": shard.sha256, "size": stat.st_size,
                           "mtime_ns": stat.st_mtime_ns})
    digest = hashlib.sha256((manifest.root / MANIFEST).read_bytes()).hexdigest()
    return {"manifest_sha256": digest, "shards": listed}


def write_identity(run_dir: Path, shards: str | Path) -> None:
    """RUN/shards.json (temporary name, then rename)."""
    write_text_atomic(Path(run_dir) / IDENTITY, json_text(shard_identity(shards), indent=1) + "\n")


def check_identity(run_dir: Path, shards: str | Path) -> None:
    """Raise ValueError (one line) unless ``shards`` are the run's, unchanged since it started."""
    path = Path(run_dir) / IDENTITY
    if not path.is_file():  # a run started before ltpipe recorded its shards
        log.warning("warning: %s: missing, so the shards cannot be checked against the run's",
                    path)
        return
    try:
        saved = json.loads(path.read_text())
        recorded = {s["path"]: s for s in saved["shards"]}
        digest = saved["manifest_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: unreadable record of the run's shards") from None
    root = Path(shards)
    try:
        now = hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()
    except OSError as exc:  # moved or deleted shards: a one-line error, not a traceback
        raise ValueError(f"{root / MANIFEST}: {exc.strerror or exc}; resume with the shards "
                         f"this run started on (ltpipe train SHARDS --resume RUN)") from None
    if now != digest:
        raise ValueError(f"{root / MANIFEST}: not the manifest of the shards this run started on "
                         f"(its digest differs from {path}); resume with those shards")
    for rel, shard in recorded.items():
        tar = root / rel
        try:
            stat = tar.stat()
        except OSError:
            raise ValueError(f"{tar}: missing (this run started on it)") from None
        if (stat.st_size, stat.st_mtime_ns) != (shard["size"], shard["mtime_ns"]):
            raise ValueError(f"{tar}: changed since this run started (size or mtime differ from "
                             f"{path}); check it with `ltpipe inspect --verify {root}`")
