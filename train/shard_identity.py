"""The identity of a run's shards: recorded when the run starts, compared on ``--resume``.

``RUN/shards.json`` holds the SHA-256 of the shard directory's ``manifest.json`` and, for every
shard tar the manifest lists (each split), its size and the SHA-256 of its bytes when the run
started. A resume compares them in two steps: ``check_identity`` before anything is built (the
manifest's digest, and every tar present with its size: cheap), and ``check_contents`` once the
loaders have opened the splits, which hashes every tar for the corrupt-sample scan's cache key
(shards/shardscan.py) anyway: the digests compared then cost nothing more. A file's mtime is not
compared: a copy with new mtimes but the same bytes is the same data, and a tar damaged in place
with its mtime restored is not. Other shards, or a tar replaced, cut or rewritten since, are one
line naming the file: a resumed run must train on the data it started on.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from ltpipe.shards.bounded import ParseError, read_bytes, read_json
from ltpipe.shards.format import MANIFEST, MANIFEST_MAX_BYTES, load_manifest
from ltpipe.shards.shardscan import tar_digest
from ltpipe.train.outputs import json_text, write_text_atomic

IDENTITY = "shards.json"
IDENTITY_MAX_BYTES = 64 << 20

log = logging.getLogger(__name__)


def shard_identity(shards: str | Path) -> dict:
    """{"manifest_sha256", "shards": [{"path", "bytes", "sha256", "size", "content_sha256"}]}:
    ``sha256`` as the manifest lists it, ``content_sha256`` of the file's bytes now."""
    manifest = load_manifest(shards)
    listed = []
    for split, info in sorted(manifest.splits.items()):
        for shard in info.shards:
            path = manifest.root / split / shard.name
            listed.append({"path": f"{split}/{shard.name}", "bytes": shard.bytes,
                           "sha256": shard.sha256, "size": path.stat().st_size,
                           "content_sha256": tar_digest(path)})
    digest = hashlib.sha256((manifest.root / MANIFEST).read_bytes()).hexdigest()
    return {"manifest_sha256": digest, "shards": listed}


def write_identity(run_dir: Path, shards: str | Path) -> None:
    """RUN/shards.json (temporary name, then rename)."""
    write_text_atomic(Path(run_dir) / IDENTITY, json_text(shard_identity(shards), indent=1) + "\n")


def _recorded(run_dir: Path) -> tuple[Path, str, dict] | None:
    path = Path(run_dir) / IDENTITY
    if not path.is_file():  # a run started before ltpipe recorded its shards
        return None
    try:
        saved = read_json(path, IDENTITY_MAX_BYTES, IDENTITY)
        recorded = {str(s["path"]): s for s in saved["shards"]}
        digest = str(saved["manifest_sha256"])
        for shard in recorded.values():
            if not isinstance(shard["size"], int) or isinstance(shard["size"], bool):
                raise TypeError("size")
            if Path(shard["path"]).is_absolute() or ".." in Path(shard["path"]).parts:
                raise ValueError("path")
    except ParseError as exc:
        raise ValueError(str(exc)) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{path}: unreadable record of the run's shards") from None
    return path, digest, recorded


def check_identity(run_dir: Path, shards: str | Path) -> None:
    """Raise ValueError (one line) unless ``shards`` hold the run's manifest and every tar it
    started on, at its size (the bytes are compared by ``check_contents``)."""
    found = _recorded(run_dir)
    if found is None:
        log.warning("warning: %s: missing, so the shards cannot be checked against the run's",
                    Path(run_dir) / IDENTITY)
        return
    path, digest, recorded = found
    root = Path(shards)
    try:
        now = hashlib.sha256(read_bytes(root / MANIFEST, MANIFEST_MAX_BYTES,
                                        "manifest.json")).hexdigest()
    except ParseError as exc:
        raise ValueError(str(exc)) from None
    except OSError as exc:  # moved or deleted shards: a one-line error, not a traceback
        raise ValueError(f"{root / MANIFEST}: {exc.strerror or exc}; resume with the shards "
                         f"this run started on (ltpipe train SHARDS --resume RUN)") from None
    if now != digest:
        raise ValueError(f"{root / MANIFEST}: not the manifest of the shards this run started on "
                         f"(its digest differs from {path}); resume with those shards")
    for rel, shard in recorded.items():
        tar = root / rel
        try:
            size = tar.stat().st_size
        except OSError:
            raise ValueError(f"{tar}: missing (this run started on it)") from None
        if size != shard["size"]:
            raise ValueError(f"{tar}: changed since this run started ({size} bytes, {path} "
                             f"says {shard['size']}); check it with `ltpipe inspect --verify "
                             f"{root}`")


def check_contents(run_dir: Path, shards: str | Path) -> None:
    """Raise ValueError (one line) unless every tar holds the bytes it held when the run
    started. Runs after the loaders opened the splits, whose scan hashed every tar already."""
    found = _recorded(run_dir)
    if found is None:
        return
    path, _, recorded = found
    for rel, shard in recorded.items():
        tar = Path(shards) / rel
        # runs recorded before the content digest: the manifest's, which the tar had then
        want = shard.get("content_sha256", shard.get("sha256"))
        try:
            now = tar_digest(tar)
        except OSError as exc:
            raise ValueError(f"{tar}: {exc.strerror or exc} (this run started on it)") from None
        if now != want:
            raise ValueError(f"{tar}: changed since this run started (its SHA-256 differs from "
                             f"{path}); check it with `ltpipe inspect --verify {shards}`")
