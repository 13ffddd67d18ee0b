"""Resume support: a journal of finished shards kept in OUT while ``ltpipe shard`` runs.

``OUT/.journal.jsonl`` holds the normalised options and a digest of the planned inputs on its
first line, then one line per shard renamed into place (sha256 of the tar and of its .idx, the
input position it ends at, its index rows and rejections). A re-run with the same options and
inputs keeps the longest prefix of each split whose files still match their checksums and
continues from there (changed inputs: everything is rewritten); the journal is deleted once the
manifest is written.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ltpipe.shards.bounded import ParseError, parse_json, read_bytes
from ltpipe.shards.format import SHARD_FILE, SPLITS
from ltpipe.shards.tario import file_sha256

JOURNAL = ".journal.jsonl"
JOURNAL_MAX_BYTES = 1 << 30  # iNat's 437K samples need about 25 MB


@dataclass(frozen=True)
class ShardRecord:
    split: str
    name: str
    samples: int
    bytes: int
    sha256: str
    idx_sha256: str
    first_id: int  # sample id of the shard's first sample
    inputs_end: int  # position in the split's shuffled input list after the shard's last input
    rows: list  # per sample [jpg offset, jpg size, label, width, height]
    rejected: list  # [path, reason] of inputs consumed while this shard was open

    def matches_files(self, split_dir: Path) -> bool:
        tar, idx = split_dir / self.name, (split_dir / self.name).with_suffix(".idx")
        return (tar.is_file() and idx.is_file() and tar.stat().st_size == self.bytes
                and file_sha256(tar) == self.sha256 and file_sha256(idx) == self.idx_sha256)


class Journal:
    def __init__(self, out: Path, options: dict, inputs: str = ""):
        self.path = out / JOURNAL
        self.header = {"options": options, "inputs": inputs}

    def read_header(self) -> dict | None:
        """{"options", "inputs"} of an existing journal (None when absent or unreadable)."""
        try:
            header = parse_json(self._lines()[0], f"{self.path}:1")
            return header if isinstance(header, dict) and "options" in header else None
        except (OSError, IndexError, ValueError):
            return None

    def _lines(self) -> list[bytes]:
        return read_bytes(self.path, JOURNAL_MAX_BYTES, "shard journal").splitlines()

    def start(self) -> dict[str, list[ShardRecord]]:
        """Keep the valid prefix of every split's records; rewrite the journal to hold only them."""
        kept: dict[str, list[ShardRecord]] = {}
        broken: set[str] = set()
        for record in self._records():
            split = kept.setdefault(record.split, [])
            expected = sum(r.samples for r in split)
            if (record.split in broken or record.first_id != expected
                    or not record.matches_files(self.path.parent / record.split)):
                broken.add(record.split)
                continue
            split.append(record)
        lines = [json.dumps(self.header, sort_keys=True)]
        lines += [json.dumps(asdict(r), sort_keys=True) for rs in kept.values() for r in rs]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.path)
        return kept

    def append(self, record: ShardRecord) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(asdict(record), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _records(self) -> list[ShardRecord]:
        if self.read_header() != self.header:
            return []
        out = []
        for number, line in enumerate(self._lines()[1:], 2):
            try:
                out.append(_record(parse_json(line, f"{self.path}:{number}")))
            except (ParseError, TypeError):
                break  # a line cut by the kill: everything after it is rewritten
        return out


_FIELD_TYPES = {"split": str, "name": str, "samples": int, "bytes": int, "sha256": str,
                "idx_sha256": str, "first_id": int, "inputs_end": int, "rows": list,
                "rejected": list}


def _record(doc) -> ShardRecord:
    """A journal line as a ShardRecord; TypeError when any field has the wrong type (a damaged
    journal line is treated like one cut by a kill)."""
    if not isinstance(doc, dict) or set(doc) != set(_FIELD_TYPES) or any(
            not isinstance(doc[k], t) or isinstance(doc[k], bool) for k, t in _FIELD_TYPES.items()):
        raise TypeError("not a shard record")
    if doc["split"] not in SPLITS or not SHARD_FILE.fullmatch(doc["name"]):
        raise TypeError("not a shard of this directory")
    rows, rejected = doc["rows"], doc["rejected"]
    if len(rows) != doc["samples"] or not all(
            isinstance(r, list) and len(r) == 5 and all(type(v) is int for v in r) for r in rows):
        raise TypeError("bad rows")
    if not all(isinstance(r, list) and len(r) == 2 and all(isinstance(v, str) for v in r)
               for r in rejected):
        raise TypeError("bad rejected rows")
    return ShardRecord(**doc)
