"""The on-disk format of an ltpipe shard directory: the one contract between writer and readers.

Layout written by ``ltpipe shard SOURCE OUT``::

    OUT/manifest.json                 written last; its presence means the directory is complete
    OUT/<split>/shard-000000.tar      WebDataset tar shards (split in {"train", "val"})
    OUT/<split>/shard-000000.idx      DALI index of that shard (the format of DALI's ``wds2idx``)
    OUT/<split>/index.npy             one INDEX_DTYPE row per sample, row i = sample id i
    OUT/rejected.tsv                  inputs that were not written (path <TAB> reason), if any

Samples of a split have ids 0..N-1 in one global order shuffled across classes (seeded). The
WebDataset key of sample i is ``key_of(i)`` (zero-padded), and its members are

    <key>.cls   class index, ascii
    <key>.id    the sample id as 8 bytes, little-endian int64 (DALI reads it with dtype INT64)
    <key>.jpg   JPEG bytes
    <key>.json  {"path": source path, "class": class name}

in that order inside the tar.

``manifest.json`` holds ``format_version``, ``source``, ``classes`` (class k's name) and per split
``class_counts`` and ``shards`` (name, samples, bytes, sha256); for ``list:`` and ``inat:``
sources also ``class_ids``, the source's own label of class k (the integer of the list file, the
category id of the json): class indices are dense 0..C-1 whatever labels the source used. Other
fields (statistics, options, command) are informative; readers need none of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REJECTED = "rejected.tsv"
INDEX = "index.npy"
SPLITS = ("train", "val")
KEY_WIDTH = 9
MEMBERS = ("cls", "id", "jpg", "json")

# index.npy rows: where the .jpg payload of sample i lives, for random access without tar scans.
INDEX_DTYPE = np.dtype(
    [("shard", "<i4"), ("offset", "<i8"), ("size", "<i8"), ("label", "<i4")]
)


def key_of(sample_id: int) -> str:
    """WebDataset key of a sample id: zero-padded so lexical order equals id order."""
    return f"{sample_id:0{KEY_WIDTH}d}"


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


class ShardFormatError(ValueError):
    """A shard directory is missing, incomplete or inconsistent (message names the file)."""


@dataclass(frozen=True)
class ShardInfo:
    name: str  # file name inside the split folder, e.g. "shard-000000.tar"
    samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class SplitInfo:
    name: str
    class_counts: tuple[int, ...]  # n_k over the whole split, k = 0..C-1
    shards: tuple[ShardInfo, ...]

    @property
    def num_samples(self) -> int:
        return sum(self.class_counts)


@dataclass(frozen=True)
class Manifest:
    """Parsed ``manifest.json``; ``root`` is the shard directory it was read from."""

    root: Path
    format_version: int
    source: str
    classes: tuple[str, ...]
    splits: dict[str, SplitInfo]
    raw: dict  # the whole JSON document (image statistics, command, options, totals)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            have = ", ".join(sorted(self.splits)) or "none"
            raise ShardFormatError(
                f"{self.root / MANIFEST}: no split {name!r} (splits: {have})"
            )
        return self.splits[name]

    def shard_paths(self, split: str) -> list[Path]:
        return [self.root / split / s.name for s in self.split(split).shards]

    def dali_index_paths(self, split: str) -> list[Path]:
        return [p.with_suffix(".idx") for p in self.shard_paths(split)]

    def index(self, split: str) -> np.ndarray:
        """The INDEX_DTYPE rows of a split (memory-mapped, read-only)."""
        path = self.root / split / INDEX
        self.split(split)
        if not path.is_file():
            raise ShardFormatError(f"{path}: missing (re-run `ltpipe shard`)")
        try:  # allow_pickle stays False: an index never holds objects
            rows = np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as exc:  # not .npy, cut off, pickled data
            raise ShardFormatError(f"{path}: unreadable ({exc.__class__.__name__}: "
                                   f"{' '.join(str(exc).split())})") from None
        if (not isinstance(rows, np.ndarray) or rows.dtype != INDEX_DTYPE or rows.ndim != 1
                or len(rows) != self.split(split).num_samples):
            raise ShardFormatError(f"{path}: does not match {self.root / MANIFEST}")
        return rows


def load_manifest(root: str | Path) -> Manifest:
    """Read and check ``root/manifest.json``; any problem is a one-line ShardFormatError."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise ShardFormatError(f"{root}: no such shard directory")
    if not path.is_file():
        raise ShardFormatError(f"{path}: missing (not a finished `ltpipe shard` output)")
    try:
        doc = json.loads(path.read_text())
        version = int(doc["format_version"])
        splits = {
            name: SplitInfo(
                name=name,
                class_counts=tuple(int(c) for c in s["class_counts"]),
                shards=tuple(ShardInfo(**sh) for sh in s["shards"]),
            )
            for name, s in doc["splits"].items()
        }
        manifest = Manifest(root, version, str(doc["source"]), tuple(doc["classes"]), splits, doc)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ShardFormatError(f"{path}: unreadable manifest ({exc.__class__.__name__}: {exc})")
    if version != FORMAT_VERSION:
        raise ShardFormatError(f"{path}: format_version {version}, this ltpipe reads "
                               f"{FORMAT_VERSION}")
    return manifest


def encode_sample_id(sample_id: int) -> bytes:
    """The ``.id`` member: 8 bytes little-endian int64 (what DALI reads with dtype INT64)."""
    return int(sample_id).to_bytes(8, "little", signed=True)


def decode_sample_id(data: bytes) -> int:
    """Inverse of encode_sample_id. With the ``webdataset`` library, register it before the
    default handlers, whose ``.id`` decoder expects ascii digits and fails on these bytes:
    ``.decode(wds.handle_extension("id", decode_sample_id), "pil")``."""
    return int.from_bytes(data, "little", signed=True)
