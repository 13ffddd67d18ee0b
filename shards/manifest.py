"""Build, write and summarise ``manifest.json`` and ``index.npy`` (contract: shards/format.py).

Beyond the fields ``load_manifest`` reads, the manifest records per split the totals, the
Many/Medium/Few class numbers (METHODS.md, Class groups), image size statistics, and at top
level the totals, the normalised options (the fingerprint a re-run is compared with) and the
exact command.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from ltpipe.shards.bounded import read_json
from ltpipe.shards.errors import ShardInputError
from ltpipe.shards.format import (FORMAT_VERSION, INDEX, INDEX_DTYPE, MANIFEST, MANIFEST_MAX_BYTES,
                                  Manifest, load_manifest)
from ltpipe.shards.longtail import group_sizes
from ltpipe.shards.tario import write_bytes_atomic
from ltpipe.shards.text import printable


def _rows(records) -> np.ndarray:
    """All samples of a split as [N,5] int64: jpg offset, jpg size, label, width, height."""
    rows = [r for rec in records for r in rec.rows]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 5)


def write_index(split_dir: Path, records) -> None:
    """index.npy: row i = sample id i (shard number, jpg offset, jpg size, label)."""
    rows = _rows(records)
    index = np.zeros(len(rows), dtype=INDEX_DTYPE)
    index["shard"] = np.repeat(np.arange(len(records)), [rec.samples for rec in records])
    index["offset"], index["size"], index["label"] = rows[:, 0], rows[:, 1], rows[:, 2]
    buf = io.BytesIO()
    np.save(buf, index)
    write_bytes_atomic(split_dir / INDEX, buf.getvalue())


def _stats(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": int(values.min()), "mean": round(float(values.mean()), 2),
            "max": int(values.max())}


def _split_doc(records, num_classes: int) -> dict:
    rows = _rows(records)
    counts = np.bincount(rows[:, 2], minlength=num_classes).tolist()
    return {
        "class_counts": counts,
        "shards": [{"name": r.name, "samples": r.samples, "bytes": r.bytes, "sha256": r.sha256}
                   for r in records],
        "num_samples": int(len(rows)),
        "bytes": int(sum(r.bytes for r in records)),
        "groups": group_sizes(counts),
        "imbalance": round(max(counts) / max(min(counts), 1), 3) if counts else 0,
        "image_stats": {"width": _stats(rows[:, 3]), "height": _stats(rows[:, 4]),
                        "jpeg_bytes": _stats(rows[:, 1])},
    }


def build(source: str, classes: list[str], written: dict, rejected: int, options: dict,
          command: str, class_ids: list | None = None) -> dict:
    splits = {name: _split_doc(records, len(classes)) for name, records in written.items()}
    ids = {} if class_ids is None else {"class_ids": list(class_ids)}
    return {
        "format_version": FORMAT_VERSION,
        "source": source,
        "classes": list(classes),
        **ids,
        "splits": splits,
        "totals": {"samples": sum(s["num_samples"] for s in splits.values()),
                   "bytes": sum(s["bytes"] for s in splits.values()),
                   "shards": sum(len(s["shards"]) for s in splits.values()),
                   "rejected": rejected},
        "options": options,
        "command": command,
    }


def write(out: Path, doc: dict) -> None:
    """manifest.json as UTF-8; a string holding bytes that are not UTF-8 (an OUT or list path
    given as such) keeps them as JSON escapes (``\\udcff``), which read back to the same path."""
    text = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    write_bytes_atomic(out / MANIFEST, text.encode("utf-8", "backslashreplace"))


def load(out: Path) -> Manifest:
    return load_manifest(out)


def load_raw(out: Path) -> dict:
    """The manifest document, or {} when it cannot be read."""
    try:
        doc = read_json(out / MANIFEST, MANIFEST_MAX_BYTES, "manifest.json")
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def load_options(out: Path) -> dict | None:
    return load_raw(out).get("options")


def files_match(out: Path) -> bool:
    """Cheap completeness check of a finished output: every shard, .idx and index.npy present
    with the recorded sizes (``ltpipe inspect --verify`` checks the checksums)."""
    try:
        m = load_manifest(out)
    except ValueError:
        return False
    for split, info in m.splits.items():
        for shard, path in zip(info.shards, m.shard_paths(split)):
            if not path.is_file() or path.stat().st_size != shard.bytes:
                return False
            if not path.with_suffix(".idx").is_file():
                return False
        if not (out / split / INDEX).is_file():
            return False
    return True


def check_classes(plan, written: dict, rejected_path: Path) -> None:
    """Error when every input of a class was rejected (the class would silently vanish)."""
    for split, records in written.items():
        got = np.bincount(_rows(records)[:, 2], minlength=len(plan.classes))
        for k, n in enumerate(plan.candidates.get(split, [])):
            if n > 0 and got[k] == 0:
                raise ShardInputError(f"class {plan.classes[k]!r} ({split}): all {n} images "
                                      f"rejected, see {rejected_path}")


def print_plan(source: str, plan, orders: dict, options: dict, mean_bytes: dict) -> None:
    """The --dry-run report: classes, per-split counts and groups, estimated shards."""
    print(f"source: {printable(source)}")
    print(f"classes: {len(plan.classes)} ({', '.join(map(printable, plan.classes[:5]))}"
          f"{', ...' if len(plan.classes) > 5 else ''})")
    for split, items in orders.items():
        counts = np.bincount([it.label for it in items], minlength=len(plan.classes))
        est = len(items) * mean_bytes[split]
        if options["samples_per_shard"]:
            shards = math.ceil(len(items) / options["samples_per_shard"])
        else:
            shards = max(1, math.ceil(est / options["shard_size"]))
        g = group_sizes(counts.tolist())
        print(f"{split}: {len(items)} images, per class {counts.max()}..{counts.min()}, "
              f"many/medium/few classes {g['many']}/{g['medium']}/{g['few']}, "
              f"~{est / 1e6:.1f} MB in ~{shards} shard(s)")
        print(f"  class counts: {' '.join(map(str, counts.tolist()))}")
    if plan.rejected:  # unknown labels, duplicates, files not read: each a rejected.tsv row
        path, reason = plan.rejected[0]
        print(f"rejected while planning: {len(plan.rejected)} (first: {printable(path)}: "
              f"{printable(reason)})")
