"""``write_shards``: any SOURCE -> WebDataset tar shards, index.npy, DALI indexes, manifest.

The layout and members are fixed by shards/format.py. Each split's inputs are shuffled across
classes (seeded) and encoded in that order by ``workers`` processes; the main process appends
them to the current shard and starts a new one when ``shard_size`` bytes or ``samples_per_shard``
samples would be exceeded, so shard boundaries depend only on the data and options, and output is
byte-identical for any worker count. Shards are renamed into place when complete and journalled
(shards/journal.py), so a re-run after a kill resumes; the manifest is written last.
"""

from __future__ import annotations

import functools
import hashlib
import math
import multiprocessing
import os
import re
import shlex
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ltpipe.shards import manifest as manifest_mod
from ltpipe.shards.encode import MAX_PIXELS, Encoded, Item, Rejected, encode_item, sample_members
from ltpipe.shards.errors import ShardInputError, ShardWorkerError
from ltpipe.shards.format import (MANIFEST, MAX_PIXELS_LIMIT, MEMBERS, REJECTED, SPLITS, Manifest,
                                  shard_name)
from ltpipe.shards.journal import Journal, ShardRecord
from ltpipe.shards.lifetime import tie_to_parent
from ltpipe.shards.outlock import LOCK_NAME, output_lock
from ltpipe.shards.sources import plan_source
from ltpipe.shards.tario import TarShardWriter, file_sha256, member_tar_bytes
from ltpipe.shards.text import printable

JPG = MEMBERS.index("jpg")
UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9,
         "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str | int) -> int:
    """'256MB' -> 256_000_000 (KB/MB/GB decimal, KiB/MiB/GiB binary, bare number = bytes)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in UNITS:
        raise ShardInputError(f"--shard-size: cannot parse {text!r} (e.g. 256MB, 1GiB)")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


def write_shards(source: str, out: str | Path, *, imbalance: float | None = None,
                 max_size: int | None = None, quality: int = 90, shard_size: str | int = "256MB",
                 samples_per_shard: int | None = None, seed: int = 0, workers: int = 1,
                 dry_run: bool = False, val_list: str | None = None, val_json: str | None = None,
                 size: str = "default", classes: int | None = None,
                 max_per_class: int | None = None, image_size: int | None = None,
                 max_pixels: int = MAX_PIXELS, allow_outside_root: bool = False,
                 val_per_class: int | None = None,
                 command: str | None = None, progress: bool = True,
                 on_shard: Callable[[ShardRecord], None] | None = None) -> Manifest | None:
    """Write SOURCE to OUT (see module docstring); returns the manifest (None for a dry run).

    Raises ShardInputError (one line) for bad input and OutputLockedError (one line) while
    another process writes to OUT. ``on_shard`` is called after each shard is
    in place (progress hooks; tests use it to simulate a kill).
    """
    options = _options(source, imbalance, max_size, quality, shard_size, samples_per_shard, seed,
                       val_list, val_json, size, classes, max_per_class, image_size)
    options |= _later_options(max_pixels=max_pixels, allow_outside_root=allow_outside_root,
                              val_per_class=val_per_class)
    if workers < 1:
        raise ShardInputError(f"--workers must be >= 1, got {workers}")
    plan = plan_source(source, imbalance=imbalance, val_list=options["val_list"],
                       val_json=options["val_json"], size=size,
                       classes=classes, max_per_class=max_per_class, image_size=image_size,
                       seed=seed, allow_outside_root=allow_outside_root,
                       val_per_class=val_per_class, out=None if dry_run else Path(out))
    orders = {split: _shuffled(items, seed, split) for split, items in plan.splits.items() if items}
    if dry_run:
        manifest_mod.print_plan(source, plan, orders, options,
                                _estimate_bytes(orders, options, plan.classes))
        return None
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ShardInputError(f"OUT {out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    command = command or _command_line(out, options)
    with output_lock(out, command):  # a second writer of OUT refuses (OutputLockedError)
        return _write_locked(out, plan, orders, options, workers, command, progress, on_shard)


def _write_locked(out: Path, plan, orders: dict[str, list[Item]], options: dict, workers: int,
                  command: str, progress: bool, on_shard) -> Manifest:
    """write_shards' body, run while holding OUT's lock."""
    inputs = _inputs_digest(orders)
    done = _existing_output(out, options, inputs)
    if done is not None:
        return done
    journal = Journal(out, options, inputs)
    kept = journal.start()
    for tmp in [*out.glob("*.tmp"), *out.glob("*/*.tmp")]:  # temporaries of an interrupted run
        tmp.unlink()
    written, rejected = {}, list(plan.rejected)
    with _encoder(workers, options) as encode:
        for split, items in orders.items():
            records, left = _write_split(out / split, split, items, plan.classes,
                                         kept.get(split, []), encode, journal, options, progress,
                                         on_shard)
            written[split] = records
            rejected += [tuple(r) for rec in records for r in rec.rejected]
            rejected += [tuple(r) for r in left]
    _write_rejected(out, rejected)
    manifest_mod.check_classes(plan, written, out / REJECTED)
    for split, records in written.items():
        manifest_mod.write_index(out / split, records)
    doc = manifest_mod.build(options["source"], plan.classes, written, len(rejected), options,
                             command, class_ids=plan.class_ids)
    doc["inputs_sha256"] = inputs
    manifest_mod.write(out, doc)
    journal.remove()
    return manifest_mod.load(out)


def _options(source, imbalance, max_size, quality, shard_size, samples_per_shard, seed,
             val_list, val_json, size, classes, max_per_class, image_size) -> dict:
    """Validated options that decide the output (the resume/compatibility fingerprint)."""
    checks = [("--imbalance", imbalance, 1), ("--max-size", max_size, 8),
              ("--samples-per-shard", samples_per_shard, 1), ("--classes", classes, 2),
              ("--max-per-class", max_per_class, 1), ("--image-size", image_size, 8)]
    for name, value, low in checks:  # `not value >= low` also refuses NaN
        if value is not None and not (math.isfinite(value) and value >= low):
            raise ShardInputError(f"{name} must be a finite number >= {low}, got {value}")
    if not 1 <= quality <= 100:
        raise ShardInputError(f"--quality must be in 1..100, got {quality}")
    shard_bytes = parse_size(shard_size)
    if shard_bytes < 10_000:
        raise ShardInputError(f"--shard-size must be at least 10KB, got {shard_size!r}")
    return {"source": source, "imbalance": imbalance, "max_size": max_size, "quality": quality,
            "shard_size": shard_bytes, "samples_per_shard": samples_per_shard, "seed": seed,
            "val_list": None if val_list is None else str(val_list),
            "val_json": None if val_json is None else str(val_json),
            "size": size, "classes": classes,
            "max_per_class": max_per_class, "image_size": image_size}


# Options added after format 1 was first written, with the value that reproduces older output:
# an output written before they existed still compares equal to a re-run that leaves them unset.
LATER_OPTIONS = {"max_pixels": MAX_PIXELS, "allow_outside_root": False, "val_per_class": None}


def _later_options(**given) -> dict:
    if not 1 <= given["max_pixels"] <= MAX_PIXELS_LIMIT:
        raise ShardInputError(f"--max-pixels must be in 1..{MAX_PIXELS_LIMIT} (the largest image "
                              f"DALI's CPU decoder takes), got {given['max_pixels']}")
    if given["val_per_class"] is not None and given["val_per_class"] < 1:
        raise ShardInputError(f"--val-per-class must be >= 1, got {given['val_per_class']}")
    return given


def _with_later_defaults(options: dict | None) -> dict | None:
    return None if options is None else {**LATER_OPTIONS, **options}


def _command_line(out: Path, options: dict) -> str:
    """An equivalent ``ltpipe shard`` command when the caller gave none (API use)."""
    parts = ["ltpipe", "shard", options["source"], str(out)]
    for key, value in options.items():
        if key != "source" and value is not None and value is not False:
            parts += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def _shuffled(items: list[Item], seed: int, split: str) -> list[Item]:
    """One global order across classes per split: sample id i is the i-th accepted item."""
    order = np.random.default_rng([seed, SPLITS.index(split) if split in SPLITS else 9])
    return [items[i] for i in order.permutation(len(items))]


def _inputs_digest(orders: dict[str, list[Item]]) -> str:
    """What a resume must not mix: the planned (path, label) sequence of every split."""
    h = hashlib.sha256()
    for split, items in orders.items():
        h.update(f"[{split}]\n".encode())
        for it in items:
            h.update(f"{it.path}\t{it.label}\n".encode())
    return h.hexdigest()


def _existing_output(out: Path, options: dict, inputs: str) -> Manifest | None:
    """A finished identical output (returned as is), a resumable one (None), or an error.
    Same options but different inputs (files added/removed since) -> rewritten from scratch."""
    if not any(p.name != LOCK_NAME for p in out.iterdir()):
        return None
    header = Journal(out, options).read_header()
    journal_options = _with_later_defaults(header["options"]) if header else None
    if (out / MANIFEST).is_file():
        previous = _with_later_defaults(manifest_mod.load_options(out))
        if previous == options:
            same_inputs = manifest_mod.load_raw(out).get("inputs_sha256") == inputs
            if same_inputs and manifest_mod.files_match(out):
                Journal(out, options).remove()  # left if a kill came right after the manifest
                return manifest_mod.load(out)
            (out / MANIFEST).unlink()  # damaged since: rewrite everything
            return None
        _different(out, previous, options)
    if journal_options is not None:
        if journal_options != options:
            _different(out, journal_options, options)
        return None
    raise ShardInputError(f"OUT {out}: not empty and not written by `ltpipe shard` "
                          f"(choose an empty or new directory)")


def _different(out: Path, previous: dict | None, options: dict) -> None:
    keys = sorted(k for k in options if (previous or {}).get(k) != options[k])
    raise ShardInputError(f"OUT {out}: written by a different command (differs in: "
                          f"{', '.join(keys) or 'unknown'}); choose an empty or new directory")


@contextmanager
def _encoder(workers: int, options: dict) -> Iterator[Callable[[list[Item]], Iterator]]:
    """Yield ``encode(items) -> iterator of Encoded | Rejected`` in input order."""
    fn = functools.partial(encode_item, max_size=options["max_size"], quality=options["quality"],
                           max_pixels=options["max_pixels"])
    if workers == 1:
        yield lambda items: map(fn, items)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=tie_to_parent, initargs=(os.getpid(),))
    try:
        yield lambda items: _in_order(pool, fn, items, workers)
    finally:  # on an error or Ctrl-C, queued chunks are dropped, not encoded first
        pool.shutdown(wait=True, cancel_futures=True)


def _in_order(pool: ProcessPoolExecutor, fn, items: list[Item], workers: int) -> Iterator:
    """``fn`` over ``items`` in the pool's processes, results in input order, at most
    IN_FLIGHT chunks a worker queued ahead (encoded images wait in memory until written). A
    worker that dies (the out-of-memory killer's SIGKILL) ends the job with ShardWorkerError,
    never a wait for results that will not come; finished shards stay journalled."""
    size = max(1, min(32, len(items) // (8 * workers)))
    pending: deque = deque()
    try:
        for start in range(0, len(items), size):
            pending.append(pool.submit(_encode_chunk, fn, items[start:start + size]))
            if len(pending) >= IN_FLIGHT * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    except BrokenProcessPool:
        raise ShardWorkerError("an encoding worker process died (killed, e.g. by the "
                               "out-of-memory killer; try fewer --workers); the shards "
                               "finished so far are kept: re-run the same command to "
                               "resume") from None


IN_FLIGHT = 4


def _encode_chunk(fn, items: list[Item]) -> list:
    return [fn(it) for it in items]


def _estimate_bytes(orders: dict[str, list[Item]], options: dict,
                    classes: list[str]) -> dict[str, float]:
    """Mean tar bytes per sample (its members with their headers and padding, which outweigh
    small JPEGs) from the first few inputs of each split (for the dry run)."""
    fn = functools.partial(encode_item, max_size=options["max_size"], quality=options["quality"],
                           max_pixels=options["max_pixels"])
    out = {}
    for split, items in orders.items():
        sizes = [sum(member_tar_bytes(len(m)) for m in
                     sample_members(0, it.label, it.path, classes[it.label], r.jpeg).values())
                 for it, r in zip(items[:16], map(fn, items[:16])) if isinstance(r, Encoded)]
        out[split] = float(np.mean(sizes)) if sizes else 0.0
    return out


class _ShardSink:
    """Appends encoded samples to numbered shards; closes one when the next sample won't fit."""

    def __init__(self, split_dir: Path, split: str, classes: list[str], kept: list[ShardRecord],
                 journal: Journal, options: dict, on_shard):
        self.dir, self.split, self.classes = split_dir, split, classes
        self.records = list(kept)
        self.next_id = sum(r.samples for r in kept)
        self.journal, self.on_shard = journal, on_shard
        self.max_bytes, self.max_samples = options["shard_size"], options["samples_per_shard"]
        self.writer: TarShardWriter | None = None
        self.rows: list[list[int]] = []
        self.rejected: list[list[str]] = []

    def reject(self, item: Item, reason: str) -> None:
        self.rejected.append([item.path, reason])

    def add(self, position: int, item: Item, enc: Encoded) -> None:
        members = sample_members(self.next_id, item.label, item.path, self.classes[item.label],
                                 enc.jpeg)
        need = sum(member_tar_bytes(len(v)) for v in members.values())
        if self.writer is not None and (
                len(self.rows) == self.max_samples
                or self.writer.size_with(need) > self.max_bytes):
            self.close(position)
        if self.writer is None:
            self.writer = TarShardWriter(self.dir / shard_name(len(self.records)))
        spans = self.writer.add(self.next_id, members)
        self.rows.append([spans[JPG].offset, spans[JPG].size, item.label, enc.width, enc.height])
        self.next_id += 1

    def close(self, inputs_end: int) -> None:
        if self.writer is None:
            return
        size, sha = self.writer.close()
        name = self.writer.path.name
        record = ShardRecord(self.split, name, len(self.rows), size, sha,
                             file_sha256(self.writer.path.with_suffix(".idx")),
                             self.next_id - len(self.rows), inputs_end, self.rows, self.rejected)
        self.journal.append(record)
        self.records.append(record)
        self.writer, self.rows, self.rejected = None, [], []
        if self.on_shard is not None:
            self.on_shard(record)


def _write_split(split_dir: Path, split: str, items: list[Item], classes: list[str],
                 kept: list[ShardRecord], encode, journal: Journal, options: dict,
                 progress: bool, on_shard) -> tuple[list[ShardRecord], list[list[str]]]:
    """Write (or finish) one split; returns its shard records in order and unattached rejects."""
    from tqdm import tqdm

    split_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(split_dir, len(kept))
    start = kept[-1].inputs_end if kept else 0
    sink = _ShardSink(split_dir, split, classes, kept, journal, options, on_shard)
    todo = items[start:]
    # disable=None: a bar on a terminal only, so logs and captured stderr stay clean
    bar = tqdm(total=len(todo), desc=f"shard {split}", unit="img",
               disable=None if progress else True, leave=False)
    with bar:
        for position, result in enumerate(encode(todo), start):
            if isinstance(result, Rejected):
                sink.reject(items[position], str(result))
            else:
                sink.add(position, items[position], result)
            bar.update()
    sink.close(len(items))
    # left over only when no shard was open, i.e. every input since the last shard was rejected
    return sink.records, sink.rejected


def _remove_stale(split_dir: Path, first_unkept: int) -> None:
    """Delete shards/temporaries numbered from ``first_unkept`` on (left by an interrupted run)."""
    for path in split_dir.glob("shard-*"):
        m = re.match(r"shard-(\d+)\.", path.name)
        if m and int(m.group(1)) >= first_unkept:
            path.unlink()


def _write_rejected(out: Path, rejected: list[tuple[str, str]]) -> None:
    from ltpipe.shards.tario import write_text_atomic

    path = out / REJECTED
    if not rejected:
        path.unlink(missing_ok=True)
        return
    write_text_atomic(path, "".join(f"{tsv_field(p)}\t{tsv_field(reason)}\n"
                                    for p, reason in rejected))


TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def tsv_field(text: str) -> str:
    """One rejected.tsv field: backslash, tab, newline and CR escaped as \\\\, \\t, \\n, \\r,
    every other character that could end a line for some reader (VT, FF, NEL, U+2028, ...) or
    drive a terminal as \\xNN / \\uNNNN (shards/text.py), and bytes that are not UTF-8 as
    \\xNN: a file name can neither end its record nor forge another."""
    return printable(str(text).translate(TSV_ESCAPES))

