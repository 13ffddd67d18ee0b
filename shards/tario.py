"""Deterministic WebDataset tar shards and their DALI index files (the ``wds2idx`` format).

Every member gets the same mtime/uid/gid/uname/mode, so the same samples give byte-identical
tars on every run. The DALI index (``v1.2 N`` then, per sample, ``ext offset size name`` for each
member, offsets pointing at the member's data rather than its 512-byte header) is produced from the
offsets tarfile reports while writing, so no second scan of the tar is needed.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ltpipe.shards.format import MEMBERS, key_of

BLOCK = tarfile.BLOCKSIZE  # 512
MTIME = 946684800  # 2000-01-01: fixed so output does not depend on when it was written
DALI_INDEX_VERSION = "v1.2"


def member_tar_bytes(size: int) -> int:
    """Bytes a member of ``size`` payload bytes occupies in a ustar archive (header + padding)."""
    return BLOCK + -(-size // BLOCK) * BLOCK


@dataclass(frozen=True)
class MemberSpan:
    ext: str
    offset: int  # byte offset of the payload inside the tar
    size: int
    name: str


class TarShardWriter:
    """Write one shard to ``<path>.tmp``; ``close()`` renames it to ``path`` and writes the .idx."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self._file = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.samples: list[list[MemberSpan]] = []  # per sample, spans in MEMBERS order

    def size_with(self, extra: int) -> int:
        """File size after adding ``extra`` member bytes and closing (end blocks, padding)."""
        end = self._tar.offset + extra + 2 * BLOCK
        return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE

    def add(self, sample_id: int, members: dict[str, bytes]) -> list[MemberSpan]:
        """Append one sample; ``members`` maps extension -> payload, written in MEMBERS order."""
        key = key_of(sample_id)
        spans = []
        for ext in MEMBERS:
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), MTIME, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
            # after addfile, offset is the end of the padded payload
            data_offset = self._tar.offset - (member_tar_bytes(len(data)) - BLOCK)
            spans.append(MemberSpan(ext, data_offset, len(data), info.name))
        self.samples.append(spans)
        return spans

    def close(self) -> tuple[int, str]:
        """Finish the tar atomically and write its DALI index; returns (bytes, sha256)."""
        self._tar.close()
        self._file.close()
        size, digest = self.tmp.stat().st_size, file_sha256(self.tmp)
        write_text_atomic(self.path.with_suffix(".idx"), dali_index_text(self.samples))
        os.replace(self.tmp, self.path)
        return size, digest


def dali_index_text(samples: list[list[MemberSpan]]) -> str:
    """The exact text ``wds2idx`` writes for a tar holding these samples."""
    lines = [f"{DALI_INDEX_VERSION} {len(samples)}"]
    for spans in samples:
        lines.append(" ".join(f"{s.ext} {s.offset} {s.size} {s.name}" for s in spans))
    return "\n".join(lines) + "\n"


IDX_LINE_MAX_BYTES = 512  # four members of ``ext offset size name``: about 150 bytes


def read_dali_index(path: str | Path, max_samples: int | None = None) -> list[list[MemberSpan]]:
    """Parse a DALI webdataset index file (raises ValueError naming the file when malformed);
    ``max_samples``: refuse, unread, a file too large to hold only that many samples."""
    from ltpipe.shards.bounded import read_bytes

    path = Path(path)
    limit = 64 + IDX_LINE_MAX_BYTES * max_samples if max_samples is not None else 1 << 34
    lines = read_bytes(path, limit, "DALI index").decode("utf-8").splitlines()
    try:
        version, count = lines[0].split()
        if version != DALI_INDEX_VERSION:
            raise ValueError(f"version {version}")
        samples = []
        for line in lines[1:]:
            f = line.split()
            samples.append([MemberSpan(f[i], int(f[i + 1]), int(f[i + 2]), f[i + 3])
                            for i in range(0, len(f), 4)])
        if len(samples) != int(count):
            raise ValueError(f"header says {count} samples, found {len(samples)}")
    except (IndexError, ValueError) as exc:
        raise ValueError(f"{path}: malformed DALI index ({exc})") from None
    return samples


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
