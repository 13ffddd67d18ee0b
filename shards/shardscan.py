"""The scan of one shard tar before training, cached per tar *content* in the user's cache.

For every payload the index lists, the scan records what the loaders must know before DALI reads
the tar: whether the JPEG passes the detector (shards/jpegscan.py: it would otherwise crash or
stop DALI's decoder), and what the tar itself says about the sample: its ``.id``, its ``.cls`` and
the class name in its ``.json`` member, which the loaders compare with index.npy and the manifest
(pipeline/shardset.py): labels that no longer match their images are refused, not trained on.

The cache key comes from the bytes: the SHA-256 of the whole tar (the digest the manifest lists
for it), with the payload list, the manifest's ``max_pixels`` and SCAN_VERSION. So a tar damaged
in place is scanned again whatever its size and mtime say. The price is one sequential read of
every tar at each open. Measured on one core of the shared 2-core CPU the tests run on
(bench/results/scan-key-cpu.json, page-cached shards of 500-800 px images): SHA-256 at 0.68 GB/s,
the full scan at 300 images/s. For iNat 2018 (437K images, ~300 GB) that is ~7 core-minutes of
hashing at every open, under a minute on a 16-core node, so in practice as long as the storage
takes to read 300 GB once (about one epoch's reads), against ~24 core-minutes for a full scan
(more for iNat's larger files), which then runs only for a tar whose bytes are new. A process
hashes a tar once (``tar_digest`` remembers it for the same file, size, mtime and ctime); the
ranks of a node share their digests (train/build.py). Entries are named by the tar's digest, so
copies of a shard directory share them and a rewritten tar gets a new entry; old entries stay
until the cache is cleared.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ltpipe.shards.bounded import ParseError, parse_json, read_bytes
from ltpipe.shards.format import payload_max_bytes
from ltpipe.shards.jpegscan import sample_problem

SCAN_VERSION = 2  # bump when the detector or the facts change: old cache entries are then ignored
BLOCK = 512
ENTRY_MAX_BYTES = 256 << 20
MEMBER_JSON_MAX_BYTES = 64 << 10  # a sample's .json member: its source path and class name


@dataclass
class ShardScan:
    digest: str  # SHA-256 of the tar's bytes
    bad: dict[int, str]  # position in the payload list -> why the sample cannot be decoded
    ids: np.ndarray  # int64 [K]: each payload's .id member (-1: unreadable)
    labels: np.ndarray  # int64 [K]: each payload's .cls member (-1: unreadable)
    names: list = field(default_factory=list)  # distinct [label, class name] of the .json members


# ---- the tar's digest, once per process ---------------------------------------------------------

_digests: dict[tuple, str] = {}
_lock = threading.Lock()


def _fingerprint(path: Path) -> tuple:
    st = os.stat(path)
    return (socket.gethostname(), str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns)


def tar_digest(path: str | Path) -> str:
    """SHA-256 of the file's bytes; a file hashed before in this process (same host, path,
    inode, size, mtime and ctime) is not read again."""
    path = Path(path).resolve()
    key = _fingerprint(path)
    with _lock:
        if key in _digests:
            return _digests[key]
    digest = sha256_file(path)
    with _lock:
        _digests[key] = digest
    return digest


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def known_digests(paths) -> list[tuple[tuple, str]]:
    """(fingerprint, digest) of the given files already hashed here (to share with other ranks)."""
    out = []
    for p in paths:
        key = _fingerprint(Path(p).resolve())
        with _lock:
            if key in _digests:
                out.append((key, _digests[key]))
    return out


def remember_digests(entries) -> None:
    """Digests other processes of this node computed (entries of ``known_digests``); one whose
    file has changed since no longer matches its fingerprint and is never used."""
    with _lock:
        for key, digest in entries:
            _digests[tuple(key)] = str(digest)


# ---- the scan -----------------------------------------------------------------------------------

def _header(block: bytes) -> tuple[str, int] | None:
    """(name, size) of a ustar header block, None when it is not a regular file's header."""
    if len(block) != BLOCK or block[156:157] not in (b"0", b"\0"):
        return None
    try:
        name = block[:100].split(b"\0", 1)[0].decode("ascii")
        size = int(block[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        return None
    return name, size


def _member(f, data_offset: int, ext: str, max_size: int) -> bytes | None:
    """The data of the member whose data starts at ``data_offset``, if its header names a
    ``.ext`` regular file of at most ``max_size`` bytes."""
    if data_offset < BLOCK:
        return None
    f.seek(data_offset - BLOCK)
    head = _header(f.read(BLOCK))
    if head is None or not head[0].endswith("." + ext) or head[1] > max_size:
        return None
    data = f.read(head[1])
    return data if len(data) == head[1] else None


def _facts(f, off: int, size: int) -> tuple[int, int, str | None]:
    """(.id, .cls, .json class) of the sample whose .jpg data starts at ``off`` (members in the
    order cls, id, jpg, json, each of the small ones one block of data): -1/None if unreadable."""
    raw_id = _member(f, off - 2 * BLOCK, "id", 8)
    raw_cls = _member(f, off - 4 * BLOCK, "cls", 10)
    sid = int.from_bytes(raw_id, "little", signed=True) if raw_id and len(raw_id) == 8 else -1
    label = int(raw_cls) if raw_cls and raw_cls.isdigit() else -1
    name = None
    meta = _member(f, off + -(-size // BLOCK) * BLOCK + BLOCK, "json", MEMBER_JSON_MAX_BYTES)
    if meta is not None:
        try:
            doc = parse_json(meta, "member")
            name = doc["class"] if isinstance(doc, dict) and isinstance(doc.get("class"), str) \
                else None
        except ParseError:
            pass
    return sid, label, name


def scan_shard(tar_path: str | Path, offsets, sizes, max_pixels: int,
               digest: str | None = None) -> ShardScan:
    """Scan the payloads (``offsets``/``sizes`` of their .jpg data) of one tar, uncached."""
    offsets, sizes = np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)
    bad, ids, labels, names = {}, np.full(offsets.size, -1), np.full(offsets.size, -1), set()
    limit = payload_max_bytes(max_pixels)
    with open(tar_path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        for k, (off, size) in enumerate(zip(offsets.tolist(), sizes.tolist())):
            if off < 0 or size <= 0 or off + size > end:
                bad[k] = "payload outside the tar"
                continue
            if size > limit:
                bad[k] = f"payload of {size:,} bytes, more than an image of max_pixels can need"
                continue
            f.seek(off)
            problem = sample_problem(f.read(size), max_pixels)
            if problem:
                bad[k] = problem
            ids[k], labels[k], name = _facts(f, off, size)
            if name is not None:
                names.add((int(labels[k]), name))
    return ShardScan(digest or tar_digest(tar_path), bad, ids, labels,
                     sorted([k, n] for k, n in names))


def cache_dir() -> Path:
    """$LTPIPE_CACHE, else $XDG_CACHE_HOME/ltpipe, else ~/.cache/ltpipe."""
    if os.environ.get("LTPIPE_CACHE"):
        return Path(os.environ["LTPIPE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ltpipe"


def cached_scan(tar_path: str | Path, offsets, sizes, max_pixels: int) -> ShardScan:
    """``scan_shard`` once per (tar bytes, payload list, max_pixels, SCAN_VERSION); later calls
    read the result from the cache. An unwritable cache only costs a re-scan next time."""
    offsets, sizes = np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)
    digest = tar_digest(tar_path)
    key = hashlib.sha256(f"{SCAN_VERSION}\0{digest}\0{int(max_pixels)}\0".encode()
                         + offsets.tobytes() + sizes.tobytes()).hexdigest()
    entry = cache_dir() / "shardscan" / f"{digest[:32]}.json"
    cached = _read_entry(entry, key, offsets.size)
    if cached is not None:
        return cached
    scan = scan_shard(tar_path, offsets, sizes, max_pixels, digest)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({
            "key": key, "tar": str(Path(tar_path).resolve()), "digest": digest,
            "bad": {str(k): v for k, v in scan.bad.items()}, "ids": scan.ids.tolist(),
            "labels": scan.labels.tolist(), "names": scan.names}))
        os.replace(tmp, entry)
    except OSError:
        pass
    return scan


def _read_entry(entry: Path, key: str, samples: int) -> ShardScan | None:
    """The cached scan, or None when there is none for ``key`` or it is damaged."""
    try:
        doc = parse_json(read_bytes(entry, ENTRY_MAX_BYTES, "scan cache entry"), str(entry))
        if doc["key"] != key:
            return None
        ids = np.asarray(doc["ids"], dtype=np.int64)
        labels = np.asarray(doc["labels"], dtype=np.int64)
        if ids.shape != (samples,) or labels.shape != (samples,):
            return None
        bad = {int(k): str(v) for k, v in doc["bad"].items()}
        names = [[int(k), str(n)] for k, n in doc["names"]]
        return ShardScan(str(doc["digest"]), bad, ids, labels, names)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no entry yet, or a damaged one: scan again
