"""One split of a shard directory as the loaders see it (contract: shards/format.py).

Reads the manifest and ``index.npy`` once, checks the caller's arguments against them (one-line
ValueErrors naming the file or field), checks that index.npy, the DALI indexes and the manifest
agree (every index row in range, every ``.idx`` line exactly the members its row implies, the
class counts), and finds corrupt samples up front, in two passes:
1. a sample whose ``.jpg`` payload lies outside its tar, or does not start with the JPEG SOI
   marker (FF D8) and end with EOI (FF D9) within its last EOI_WINDOW bytes (truncated or
   overwritten payloads, or data after the image; vectorised, every open);
2. every other payload goes through shards/jpegscan.py's detector (a strict header walk and a
   full decode of at most the manifest's ``max_pixels``), which flags the samples that would
   crash DALI's decoder (SIGSEGV) or stop its pipeline. It decodes every image, so its result
   is cached per tar content (shards/shardscan.py) and runs once per tar.
The same scan reads each sample's ``.id``, ``.cls`` and ``.json`` class name from the tar: an
index.npy whose labels or ids are not the tar's, or a manifest whose class names are not the
samples', is refused (not skippable: the index, not a sample, is wrong).

A split with corrupt samples is refused (one ShardFormatError naming the shards, the count and
``ltpipe inspect --verify``) unless the caller opts in with ``skip_corrupt=True``: then each is
logged with its key, counted in ``skipped`` and left out by both streams (P reads a filtered copy
of the DALI index, Q never draws it). A run must not silently train on part of its data.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ltpipe.shards.format import EOI_WINDOW, ShardFormatError, key_of, load_manifest
from ltpipe.shards.shardscan import MEMBER_JSON_MAX_BYTES, ShardScan, cached_scan, known_digests
from ltpipe.shards.tario import read_dali_index

log = logging.getLogger(__name__)
RERUN = "re-run `ltpipe shard` to rewrite it"


@dataclass
class ShardSplit:
    root: Path
    split: str
    tar_paths: list[Path]  # [S] shard tars of the split
    idx_paths: list[Path]  # [S] DALI index files P reads (filtered copies if samples are skipped)
    rows: np.ndarray  # INDEX_DTYPE [N], row i = sample id i
    labels: np.ndarray  # int64 [N]
    class_counts: np.ndarray  # int64 [C]: global TRAIN split counts (the n_k of every formula)
    num_classes: int
    bad_ids: np.ndarray  # int64 [K]: corrupt samples, skipped by both streams
    _tmpdir: Path | None = field(default=None, repr=False)  # filtered indexes, removed with us

    @property
    def skipped(self) -> int:
        return int(self.bad_ids.size)

    @property
    def num_samples(self) -> int:
        """Readable samples (corrupt ones excluded)."""
        return int(self.rows.size - self.bad_ids.size)

    def good_mask(self) -> np.ndarray:
        mask = np.ones(self.rows.size, dtype=bool)
        mask[self.bad_ids] = False
        return mask


def open_split(root, split: str, validate: bool = True, skip_corrupt: bool = False) -> ShardSplit:
    """Load ``root``'s manifest and index for ``split``; raise ValueError naming the bad file.

    ``validate``: look for corrupt samples. ``skip_corrupt``: leave them out (``skipped`` counts
    them) instead of refusing the split.
    """
    if root is None or str(root) == "":
        raise ValueError("shards: no shard directory given")
    manifest = load_manifest(root)  # ShardFormatError (a ValueError) names the file
    rows = manifest.index(split)  # a split the manifest lacks is named there
    tar_paths = manifest.shard_paths(split)
    idx_paths = manifest.dali_index_paths(split)
    for path in tar_paths + idx_paths:
        if not path.is_file():
            raise ShardFormatError(f"{path}: missing (listed in {manifest.root / 'manifest.json'})")
    if rows.size == 0:
        raise ShardFormatError(f"{manifest.root / split / 'index.npy'}: split {split!r} is empty")
    labels = np.asarray(rows["label"], dtype=np.int64)
    train_counts = manifest.split("train").class_counts  # load_manifest requires a train split
    check_class_counts(manifest, split, labels)
    if split != "train":  # the n_k every loss and sampler reads
        check_class_counts(manifest, "train", np.asarray(manifest.index("train")["label"]))
    check_index_rows(manifest, split, rows)
    check_dali_indexes(rows, idx_paths)
    reasons = {}
    if validate:
        reasons, scans = find_corrupt(rows, tar_paths, manifest.max_pixels)
        check_agreement(manifest, split, rows, tar_paths, scans, reasons)
    bad = np.array(sorted(reasons), dtype=np.int64)
    if bad.size and not skip_corrupt:
        raise ShardFormatError(corrupt_message(manifest.root, split, rows, tar_paths, reasons))
    out = ShardSplit(manifest.root, split, tar_paths, idx_paths, rows, labels,
                     np.asarray(train_counts, dtype=np.int64), manifest.num_classes, bad)
    if bad.size:
        for i in bad[:20]:
            log.warning("%s/%s: corrupt sample %s skipped (%s)", manifest.root, split,
                        key_of(int(i)), reasons[int(i)])
        log.warning("%s/%s: %d corrupt samples skipped", manifest.root, split, bad.size)
        out._tmpdir = Path(tempfile.mkdtemp(prefix="ltpipe-idx-"))
        # removed when the split is collected or at exit (TemporaryDirectory would warn then)
        weakref.finalize(out, shutil.rmtree, out._tmpdir, ignore_errors=True)
        out.idx_paths = write_filtered_indexes(rows, idx_paths, bad, out._tmpdir)
    return out


def check_class_counts(manifest, split: str, labels: np.ndarray) -> None:
    """manifest.json's ``splits.<split>.class_counts`` must be the counts of index.npy's labels."""
    counts = np.asarray(manifest.split(split).class_counts, dtype=np.int64)
    where = f"{manifest.root / 'manifest.json'}: splits.{split}.class_counts"
    outside = labels[(labels < 0) | (labels >= counts.size)]
    if outside.size:
        raise ShardFormatError(f"{manifest.root / split / 'index.npy'}: label {int(outside[0])} "
                               f"outside the manifest's {counts.size} classes ({RERUN})")
    actual = np.bincount(labels, minlength=counts.size)
    differ = np.flatnonzero(actual != counts)
    if differ.size:
        k = int(differ[0])
        raise ShardFormatError(f"{where} disagree with the labels of {split}/index.npy in "
                               f"{differ.size} class(es), e.g. class {k}: {int(counts[k])} listed, "
                               f"{int(actual[k])} in the index (re-run `ltpipe shard`)")


def tar_order(rows: np.ndarray, shard: int) -> np.ndarray:
    """Sample ids of ``shard`` in tar order (ascending payload offset): line j of its DALI
    index is its j-th id."""
    ids = np.flatnonzero(rows["shard"] == shard)
    return ids[np.argsort(rows["offset"][ids], kind="stable")]


def check_index_rows(manifest, split: str, rows: np.ndarray) -> None:
    """index.npy's shard numbers name the manifest's shards, as many rows each as it lists."""
    listed = np.array([s.samples for s in manifest.split(split).shards], dtype=np.int64)
    path = manifest.root / split / "index.npy"
    shard = np.asarray(rows["shard"], dtype=np.int64)
    outside = shard[(shard < 0) | (shard >= listed.size)]
    if outside.size:
        raise ShardFormatError(f"{path}: shard number {int(outside[0])} outside the manifest's "
                               f"{listed.size} shards ({RERUN})")
    per = np.bincount(shard, minlength=listed.size)
    if (per != listed).any():
        k = int(np.flatnonzero(per != listed)[0])
        raise ShardFormatError(f"{path}: {int(per[k])} samples in shard {k}, the manifest lists "
                               f"{int(listed[k])} ({RERUN})")


def check_dali_indexes(rows: np.ndarray, idx_paths: list[Path]) -> None:
    """Each DALI index must parse and list exactly the members index.npy's rows imply, in tar
    order: the names and offsets of .cls, .id, .jpg and .json (each small member is one 512-byte
    header and one data block, the .json follows the .jpg) and the sizes DALI reads. DALI reads
    .jpg and .id through it; an edited offset would otherwise fail mid-run with a traceback naming
    no file, or give two images each other's labels."""
    offsets, sizes = rows["offset"].tolist(), rows["size"].tolist()
    for shard, path in enumerate(idx_paths):
        ids = tar_order(rows, shard)
        try:
            samples = read_dali_index(path, max_samples=ids.size)
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            msg = str(exc) if str(path) in str(exc) else f"{path}: unreadable ({exc})"
            raise ShardFormatError(f"{msg} ({RERUN})") from None
        if len(samples) != ids.size:
            raise ShardFormatError(f"{path}: {len(samples)} samples, index.npy lists {ids.size} "
                                   f"({RERUN})")
        for line, (sid, spans) in enumerate(zip(ids.tolist(), samples), 2):
            key, off, size = key_of(sid), offsets[sid], sizes[sid]
            want = [("cls", off - 2048, f"{key}.cls"), ("id", off - 1024, f"{key}.id"),
                    ("jpg", off, f"{key}.jpg"), ("json", off + -(-size // 512) * 512 + 512,
                                                 f"{key}.json")]
            if [(m.ext, m.offset, m.name) for m in spans] != want or spans[1].size != 8 \
                    or spans[2].size != size or not 0 < spans[3].size <= MEMBER_JSON_MAX_BYTES:
                raise ShardFormatError(f"{path}: line {line} is not sample {key}'s members as "
                                       f"index.npy lists them ({RERUN})")


def corrupt_message(root: Path, split: str, rows: np.ndarray, tar_paths: list[Path],
                    reasons: dict[int, str]) -> str:
    """One line: how many corrupt samples, in which shards, the first keys, and what to do."""
    bad = np.array(sorted(reasons), dtype=np.int64)
    per_shard = np.bincount(rows["shard"][bad], minlength=len(tar_paths))
    shards = [f"{tar_paths[s].name} ({int(n)})" for s, n in enumerate(per_shard) if n]
    listed = ", ".join(shards[:5]) + (f", ... ({len(shards)} shards)" if len(shards) > 5 else "")
    first = int(bad[0])
    keys = ", ".join(key_of(int(i)) for i in bad[1:3]) + (", ..." if bad.size > 3 else "")
    return (f"{root / split}: {bad.size} corrupt sample(s) in {listed}: key {key_of(first)} "
            f"({reasons[first]}){', ' + keys if keys else ''}; run `ltpipe inspect --verify "
            f"{root}` for details, or skip them explicitly (skip_corrupt / --skip-corrupt)")


def find_corrupt(rows: np.ndarray, tar_paths: list[Path],
                 max_pixels: int) -> tuple[dict[int, str], dict[int, tuple[np.ndarray, ShardScan]]]:
    """({sample id: reason} of the corrupt samples, {shard: (its sample ids, its scan)}):
    payload markers (every call), then the scan of each tar (shards/shardscan.py: the JPEG
    detector and the tar's own .id/.cls/.json; cached per tar content, tars in parallel)."""
    reasons = {int(i): "payload outside the tar, or no JPEG SOI/EOI marker"
               for i in find_bad_payloads(rows, tar_paths)}
    todo = [(shard, path, np.flatnonzero(rows["shard"] == shard))
            for shard, path in enumerate(tar_paths)]
    todo = [job for job in todo if job[2].size]

    def scan(job):  # hashing and PIL's decoding run outside the GIL, so threads use the cores
        shard, path, ids = job
        return shard, ids, cached_scan(path, rows["offset"][ids], rows["size"][ids], max_pixels)

    scans = {}
    with ThreadPoolExecutor(max_workers=max(1, min(len(todo), os.cpu_count() or 1))) as pool:
        for shard, ids, found in pool.map(scan, todo):
            scans[shard] = (ids, found)
            for k, why in found.bad.items():
                reasons.setdefault(int(ids[k]), why)
    return reasons, scans


def check_agreement(manifest, split: str, rows: np.ndarray, tar_paths: list[Path],
                    scans: dict, reasons: dict[int, str]) -> None:
    """index.npy's ids and labels are the tar's .id and .cls members, and the manifest's class
    names those of the samples' .json members (corrupt samples aside). Otherwise the index or
    the manifest belongs to other data: refused, since training on it gives images the wrong
    labels, or reports the wrong class names."""
    for shard, (ids, scan) in scans.items():
        good = ~np.isin(ids, list(reasons))
        tar = tar_paths[shard]
        for what, got, want in ((".id", scan.ids, ids), (".cls", scan.labels, rows["label"][ids])):
            wrong = np.flatnonzero(good & (got != want))
            if wrong.size:
                k = int(wrong[0])
                raise ShardFormatError(
                    f"{tar}: sample {key_of(int(ids[k]))}'s {what} member says {int(got[k])}, "
                    f"{manifest.root / split / 'index.npy'} says {int(want[k])} ({wrong.size} "
                    f"samples differ): the index is not this tar's (re-run `ltpipe shard`)")
        for label, name in scan.names:
            if not 0 <= label < manifest.num_classes or manifest.classes[label] != name:
                listed = manifest.classes[label] if 0 <= label < manifest.num_classes else None
                raise ShardFormatError(
                    f"{manifest.root / 'manifest.json'}: class {label} is named {listed!r}, the "
                    f"samples of {tar.name} say {name!r} (re-run `ltpipe shard`)")


def scan_for_corrupt(root, part: int = 0, parts: int = 1) -> list:
    """Run the corrupt-sample scan of share ``part`` of ``parts`` of every split's tars, which
    fills their per-tar cache (shards/shardscan.py): loaders opened afterwards read the result.
    Under DDP the ranks of a node scan a share each, instead of every rank scanning every tar.
    Returns the digests this process computed (``shardscan.known_digests``), for the others."""
    manifest = load_manifest(root)
    tars = []
    for split in manifest.splits:
        rows, paths = manifest.index(split), manifest.shard_paths(split)
        mine = np.isin(rows["shard"], np.arange(part, len(paths), parts))
        sub = rows[mine]
        find_corrupt(sub, paths, manifest.max_pixels)
        tars += [paths[s] for s in np.unique(sub["shard"]).tolist()]
    return known_digests(tars)


def find_bad_payloads(rows: np.ndarray, tar_paths: list[Path]) -> np.ndarray:
    """Ids whose payload is out of bounds or lacks the JPEG SOI/EOI markers; int64 [K] sorted."""
    bad = []
    for shard, path in enumerate(tar_paths):
        ids = np.flatnonzero(rows["shard"] == shard)
        if ids.size == 0:
            continue
        size = os.path.getsize(path)
        off = rows["offset"][ids].astype(np.int64)
        n = rows["size"][ids].astype(np.int64)
        inside = (off >= 0) & (n >= 4) & (off + n <= size)
        ok = inside.copy()
        if inside.any() and size:
            data = np.memmap(path, dtype=np.uint8, mode="r")
            o, m = off[inside], n[inside]
            soi = (data[o] == 0xFF) & (data[o + 1] == 0xD8)
            # EOI anywhere in the last EOI_WINDOW bytes (encoders may pad after it). [K, W]
            w = np.minimum(m - 2, EOI_WINDOW)
            tail = o[:, None] + m[:, None] - 2 - np.arange(EOI_WINDOW)[None, :]
            valid = np.arange(EOI_WINDOW)[None, :] < w[:, None]
            tail = np.where(valid, tail, o[:, None])
            eoi = ((data[tail] == 0xFF) & (data[tail + 1] == 0xD9) & valid).any(axis=1)
            ok[inside] = soi & eoi
            del data
        bad.append(ids[~ok])
    return np.sort(np.concatenate(bad)).astype(np.int64) if bad else np.zeros(0, np.int64)


def write_filtered_indexes(rows: np.ndarray, idx_paths: list[Path], bad: np.ndarray,
                           out_dir: Path) -> list[Path]:
    """Copies of the DALI index files without the lines of ``bad`` samples.

    Line j of a shard's index is its j-th sample in tar order, i.e. by ascending payload offset.
    """
    bad_set = {int(i) for i in bad}
    out = []
    for shard, path in enumerate(idx_paths):
        lines = path.read_text().splitlines()
        ids = tar_order(rows, shard)
        body = [ln for ln in lines[1:] if ln.strip()]
        if len(body) != ids.size:
            raise ShardFormatError(f"{path}: {len(body)} samples, index.npy lists {ids.size}")
        keep = [ln for ln, i in zip(body, ids) if int(i) not in bad_set]
        version = lines[0].split()[0]
        target = out_dir / path.name
        target.write_text(f"{version} {len(keep)}\n" + "".join(ln + "\n" for ln in keep))
        out.append(target)
    return out
