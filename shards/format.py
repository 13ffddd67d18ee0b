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

``manifest.json`` holds ``format_version``, ``source``, ``classes`` (class k's name; at least one)
and per split (``train`` always) ``class_counts`` and ``shards`` (name, samples, bytes, sha256);
for ``list:`` and ``inat:`` sources also ``class_ids``, the source's own label of class k (the
integer of the list file, the category id of the json): class indices are dense 0..C-1 whatever
labels the source used.
Readers also obey ``options.max_pixels`` (``Manifest.max_pixels``, the limit the images were
accepted under; DEFAULT_MAX_PIXELS when absent). Other fields (statistics, the other options,
command) are informative: ``Manifest.rejected`` and ``Manifest.image_stats`` read the ones ltpipe
shows, None when malformed.

A stored JPEG ends at its EOI marker (nothing after it but at most ``EOI_WINDOW - 2`` bytes of
padding), has sides of at most MAX_SIDE pixels, an aspect ratio of at most MAX_ASPECT and at most
``max_pixels`` pixels.
"""

from __future__ import annotations

import os
import re
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

# What a stored image may be: ``ltpipe shard`` refuses (rejected.tsv) what exceeds these, and every
# reader decodes what the manifest's ``options.max_pixels`` allows, not a library's own default.
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's decompression-bomb threshold; --max-pixels sets another
MAX_PIXELS_LIMIT = (1 << 29) // 3  # DALI's libjpeg-turbo refuses RGB outputs of 2^29 bytes or more
MAX_SIDE = 16_384  # DALI's random-crop decoder fails on images taller than about 40,000 px
MAX_ASPECT = 64  # long side / short side: the eval resize makes the long side 256 x this (224 px)
EOI_WINDOW = 32  # a stored JPEG's EOI marker lies within its last EOI_WINDOW bytes


def payload_max_bytes(max_pixels: int) -> int:
    """The largest input file or payload read for an image of ``max_pixels`` pixels: 8 bytes a
    pixel (16-bit RGBA, uncompressed) and 16 MiB of metadata. A larger one is refused unread."""
    return 8 * int(max_pixels) + (16 << 20)

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

    @property
    def max_pixels(self) -> int:
        """The largest image (width x height) the writer accepted: what readers must decode."""
        return self.raw.get("options", {}).get("max_pixels", DEFAULT_MAX_PIXELS)

    @property
    def rejected(self) -> int | None:
        """``totals.rejected`` (informative): the inputs not written; None when absent or not a
        count."""
        totals = self.raw.get("totals")
        count = totals.get("rejected") if isinstance(totals, dict) else None
        return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 \
            else None

    def image_stats(self, split: str) -> dict | None:
        """``splits.<split>.image_stats`` (informative): {"width"|"height"|"jpeg_bytes": {"min",
        "mean", "max"}} of numbers; None when absent or not of that shape."""
        stats = self.raw["splits"].get(split, {}).get("image_stats")
        shaped = isinstance(stats, dict) and all(
            isinstance(stats.get(what), dict)
            and all(_is_number(stats[what].get(key)) for key in ("min", "mean", "max"))
            for what in ("width", "height", "jpeg_bytes"))
        return stats if shaped else None

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


MANIFEST_MAX_BYTES = 64 << 20  # iNat's 8,142 classes and 1,200 shards need about 1 MB


def load_manifest(root: str | Path) -> Manifest:
    """Read and check ``root/manifest.json``; any problem is a one-line ShardFormatError.

    Beyond its JSON (bounded: shards/bounded.py), the fields readers use are checked for type and
    range, and every path they lead to stays inside ``root``: split names are "train"/"val", shard
    names plain ``*.tar`` file names (never ``../x.tar`` or an absolute path)."""
    from ltpipe.shards.bounded import ParseError, read_json

    # the library's callers (make_loader, MixerEnv.from_shards) pass it on unchecked
    if not isinstance(root, (str, os.PathLike)) or isinstance(os.fspath(root), bytes):
        raise TypeError(f"shards: must be a shard directory's path (a str or Path), got "
                        f"{type(root).__name__}")
    if str(root) == "":
        raise ShardFormatError("shards: no shard directory given")
    root = Path(root)
    path = root / MANIFEST
    try:
        if not root.is_dir():
            raise ShardFormatError(f"{root}: no such shard directory")
        if not path.is_file():
            raise ShardFormatError(f"{path}: missing (not a finished `ltpipe shard` output)")
    except OSError as exc:  # a name too long, a symlink loop
        raise ShardFormatError(f"{root}: {exc.strerror or exc}") from None
    try:
        doc = read_json(path, MANIFEST_MAX_BYTES, "manifest.json")
    except (OSError, ParseError) as exc:
        raise ShardFormatError(str(exc) if isinstance(exc, ParseError) else
                               f"{path}: unreadable manifest ({exc.strerror or exc})") from None
    try:
        manifest = _parse_manifest(root, doc)
    except _FieldError as exc:
        raise ShardFormatError(f"{path}: {exc}") from None
    return manifest


class _FieldError(ValueError):
    pass


def _field(doc, key, kind, where: str = ""):
    """doc[key] of type ``kind`` (bool is no int); _FieldError naming the field otherwise."""
    name = f"{where}{key}"
    if not isinstance(doc, dict) or key not in doc:
        raise _FieldError(f"no field {name!r}")
    value = doc[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _FieldError(f"{name}: expected {getattr(kind, '__name__', 'a value')}, "
                          f"got {type(value).__name__}")
    if kind is int and value < 0:
        raise _FieldError(f"{name}: {value} is negative")
    return value


def _is_number(value) -> bool:
    """An int or float, not a bool (JSON's NaN and Infinity never reach here: bounded.py)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


SHARD_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.tar")


def _parse_manifest(root: Path, doc) -> Manifest:
    version = _field(doc, "format_version", int)
    if version != FORMAT_VERSION:
        raise _FieldError(f"format_version {version}, this ltpipe reads {FORMAT_VERSION}")
    classes = _field(doc, "classes", list)
    if not all(isinstance(c, str) for c in classes):
        raise _FieldError("classes: expected a list of strings")
    if not classes:
        raise _FieldError("classes: empty (a shard directory has at least one class)")
    if "class_ids" in doc:  # `shards:DIR` copies them into its output
        ids = _field(doc, "class_ids", list)
        if len(ids) != len(classes) or not all(isinstance(i, (int, str)) and
                                               not isinstance(i, bool) for i in ids):
            raise _FieldError(f"class_ids: expected {len(classes)} integers or strings, one a "
                              f"class")
    splits = {}
    for name, s in _field(doc, "splits", dict).items():
        if name not in SPLITS:  # a split is a folder of root: nothing else may be read
            raise _FieldError(f"splits: {name[:40]!r} is not a split ({', '.join(SPLITS)})")
        where = f"splits.{name}."
        counts = _field(s, "class_counts", list, where)
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
            raise _FieldError(f"{where}class_counts: expected counts (integers >= 0)")
        if len(counts) != len(classes):
            raise _FieldError(f"{where}class_counts: {len(counts)} entries for "
                              f"{len(classes)} classes")
        shards = []
        for i, sh in enumerate(_field(s, "shards", list, where)):
            at = f"{where}shards[{i}]."
            info = ShardInfo(_field(sh, "name", str, at), _field(sh, "samples", int, at),
                             _field(sh, "bytes", int, at), _field(sh, "sha256", str, at))
            if not SHARD_FILE.fullmatch(info.name):  # "../../x.tar", "/etc/x.tar", "a/b.tar"
                raise _FieldError(f"{at}name: {info.name[:80]!r} is not a shard file name "
                                  f"(shards lie in {root / name})")
            shards.append(info)
        splits[name] = SplitInfo(name, tuple(counts), tuple(shards))
    if "train" not in splits:  # the writer always writes one; its counts are every n_k
        raise _FieldError("splits: no 'train' split (`ltpipe shard` always writes one)")
    options = doc.get("options", {})
    if not isinstance(options, dict):
        raise _FieldError("options: expected an object")
    if "max_pixels" in options and _field(options, "max_pixels", int, "options.") < 1:
        raise _FieldError("options.max_pixels: must be >= 1")
    return Manifest(root, version, _field(doc, "source", str), tuple(classes), splits, doc)


def encode_sample_id(sample_id: int) -> bytes:
    """The ``.id`` member: 8 bytes little-endian int64 (what DALI reads with dtype INT64)."""
    return int(sample_id).to_bytes(8, "little", signed=True)


def decode_sample_id(data: bytes) -> int:
    """Inverse of encode_sample_id. With the ``webdataset`` library, register it before the
    default handlers, whose ``.id`` decoder expects ascii digits and fails on these bytes:
    ``.decode(wds.handle_extension("id", decode_sample_id), "pil")``."""
    return int.from_bytes(data, "little", signed=True)
