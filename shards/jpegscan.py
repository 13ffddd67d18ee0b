"""Find JPEG payloads that would crash or stop the DALI decoder, before training starts.

Why a pre-scan. DALI's CPU ``fn.decoders.image`` (2.4, nvImageCodec inside) parses every sample's
markers before decoding. When that parse fails on one sample (nvImageCodec prints
``[jpeg_parser] Invalid marker`` and the operator raises ``nvImageCodec failure: '#3'``, naming no
sample), the operator throws from the executor thread while the decode tasks of the rest of the
batch are still queued on its thread pool; those tasks
(``imgcodec::ImageDecoder<CPUBackend>::RunImplImpl``'s per-sample lambda) then run against state
the throw has torn down, and the process dies with SIGSEGV. Measured: a batch of 64 with such a
sample first segfaults 6 times in 8, the same sample last or alone gives a clean exception; one
bit flipped in a DHT segment's length field is enough. A libjpeg-turbo *error* ("Bogus Huffman
table definition") does not crash, but still ends the pipeline: DALI cannot drop one sample of a
batch. Damage inside the entropy-coded data with the headers intact only makes libjpeg-turbo
*warn* ("Corrupt JPEG data: ... extraneous bytes"); every decoder then returns an image of the
right size whose later blocks are garbage, and training goes on.

The detector (``sample_problem``), two steps, cheapest first:
1. a strict walk of the marker segments from SOI to SOS, the part DALI's parser reads: every
   segment starts with 0xFF and fits the payload, DQT/DHT tables fill their segments exactly,
   one frame header with sane sizes and components precedes SOS. This flags the crashing class.
2. a full decode with PIL (libjpeg-turbo, truncated images not accepted), which flags every
   libjpeg-turbo error, i.e. every sample DALI's decoder would stop on.
Warning-only damage is not flagged (no decoder in reach reports it per sample); it cannot crash
or stop a run. The scan reads and decodes every image once, so ``cached_scan`` keeps its result
per shard in the user's cache (keyed by the tar's path, size and mtime): shard directories may
be read-only or shared by several users.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np

SCAN_VERSION = 1  # bump when the detector changes: old cache entries are then ignored
SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                         0xCE, 0xCF})
MAX_PIXELS = 1 << 30  # a frame header claiming more is damaged, not big


def header_problem(data: bytes) -> str | None:
    """Why the marker segments before the scan are malformed, or None when they are sound."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return "no SOI marker"
    i, frame = 2, False
    while True:
        if i + 4 > n:
            return "ends before the scan (SOS)"
        if data[i] != 0xFF:
            return f"invalid marker at byte {i}"
        while data[i + 1] == 0xFF and i + 5 < n:  # fill bytes before a marker
            i += 1
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        body = data[i + 4:i + 2 + length]
        if marker == 0xD8 or 0xD0 <= marker <= 0xD9 or marker == 0x01 or length < 2 \
                or i + 2 + length > n:
            return f"bad segment 0x{marker:02X} at byte {i}"
        problem = _segment_problem(marker, body, frame)
        if problem:
            return f"{problem} at byte {i}"
        frame |= marker in SOF_MARKERS
        if marker == 0xDA:
            return None
        i += 2 + length


def _segment_problem(marker: int, body: bytes, frame: bool) -> str | None:
    if marker in SOF_MARKERS:
        if frame:
            return "second frame header"
        if len(body) < 6:
            return "short frame header"
        height, width, comps = (int.from_bytes(body[1:3], "big"),
                                int.from_bytes(body[3:5], "big"), body[5])
        if not (height and width and height * width <= MAX_PIXELS and comps in (1, 3, 4)
                and len(body) == 6 + 3 * comps):
            return f"bad frame header ({width}x{height}, {comps} components)"
        for c in range(comps):
            h, v = body[7 + 3 * c] >> 4, body[7 + 3 * c] & 15
            if not (1 <= h <= 4 and 1 <= v <= 4) or body[8 + 3 * c] > 3:
                return "bad sampling factors or quantization table id"
    elif marker == 0xC4:
        return _tables_problem(body, "Huffman", 17, lambda b, j: 17 + sum(b[j + 1:j + 17]))
    elif marker == 0xDB:
        return _tables_problem(body, "quantization", 1, lambda b, j: 1 + (128 if b[j] >> 4 else 64))
    elif marker == 0xDA:
        if not frame:
            return "scan before the frame header"
        comps = body[0] if body else 0
        if not 1 <= comps <= 4 or len(body) != 4 + 2 * comps:
            return "bad scan header"
    return None


def _tables_problem(body: bytes, kind: str, head: int, table_size) -> str | None:
    """DHT/DQT: whole tables (class <= 1, id <= 3) that exactly fill the segment; ``head``:
    bytes needed to know a table's size."""
    j = 0
    while j < len(body):
        if j + head > len(body) or (body[j] >> 4) > 1 or (body[j] & 15) > 3:
            return f"bad {kind} table"
        j += table_size(body, j)
    return None if j == len(body) else f"{kind} tables do not fill their segment"


def decode_problem(data: bytes) -> str | None:
    """Why libjpeg-turbo (through PIL) cannot decode the image, or None."""
    from PIL import Image, ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:  # a caller's global leniency must not hide damage
        return "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; cannot check decoding"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. a decompression-bomb warning
            with Image.open(io.BytesIO(data)) as img:
                img.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a damaged sample
        return f"does not decode ({exc.__class__.__name__}: {exc})".replace("\n", " ")
    return None


def sample_problem(data: bytes) -> str | None:
    """The detector: the header walk, then a full decode. None means DALI can decode it."""
    problem = header_problem(data)
    return f"malformed JPEG header ({problem})" if problem else decode_problem(data)


def scan_shard(tar_path: str | Path, offsets, sizes) -> dict[int, str]:
    """{position in ``offsets``: reason} for the payloads of one tar that ``sample_problem``
    flags; payloads outside the file are flagged too."""
    offsets, sizes = np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)
    bad = {}
    with open(tar_path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        for k, (off, size) in enumerate(zip(offsets.tolist(), sizes.tolist())):
            if off < 0 or size <= 0 or off + size > end:
                bad[k] = "payload outside the tar"
                continue
            f.seek(off)
            problem = sample_problem(f.read(size))
            if problem:
                bad[k] = problem
    return bad


def cache_dir() -> Path:
    """$LTPIPE_CACHE, else $XDG_CACHE_HOME/ltpipe, else ~/.cache/ltpipe."""
    if os.environ.get("LTPIPE_CACHE"):
        return Path(os.environ["LTPIPE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ltpipe"


def cached_scan(tar_path: str | Path, offsets, sizes) -> dict[int, str]:
    """``scan_shard`` once per (tar path, size, mtime, payload list, SCAN_VERSION); later calls
    read the result from the cache. An unwritable cache only costs a re-scan next time."""
    tar_path = Path(tar_path).resolve()
    offsets, sizes = np.asarray(offsets, np.int64), np.asarray(sizes, np.int64)
    st = tar_path.stat()
    key = hashlib.sha256(f"{SCAN_VERSION}\0{tar_path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode()
                         + offsets.tobytes() + sizes.tobytes()).hexdigest()[:32]
    # one entry per tar path (a changed tar overwrites its entry), so the cache stays small
    name = hashlib.sha256(str(tar_path).encode()).hexdigest()[:32]
    entry = cache_dir() / "jpegscan" / f"{name}.json"
    try:
        doc = json.loads(entry.read_text())
        if doc.get("key") == key:
            return {int(k): str(v) for k, v in doc["bad"].items()}
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # no entry yet, or a damaged one: scan again
    bad = scan_shard(tar_path, offsets, sizes)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "tar": str(tar_path), "samples": int(offsets.size),
                                   "bad": {str(k): v for k, v in bad.items()}}))
        os.replace(tmp, entry)
    except OSError:
        pass
    return bad
