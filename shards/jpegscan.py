"""Find JPEG payloads that would crash or stop the DALI decoder: the one rule for a stored JPEG,
applied by ``ltpipe shard`` to what it stores, by ``ltpipe inspect --verify`` and, through the
scan of each tar (shards/shardscan.py), by every loader before training starts.

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

The detector (``sample_problem``), cheapest first:
1. a strict walk of the marker segments from SOI to SOS, the part DALI's parser reads: every
   segment starts with 0xFF and fits the payload, DQT/DHT tables fill their segments exactly,
   one frame header with sane sizes and components precedes SOS. This flags the crashing class.
2. the end: the EOI marker lies within the payload's last EOI_WINDOW bytes (shards/format.py),
   the rule the loaders' vectorised check of every payload applies (pipeline/shardset.py), so a
   truncated or overwritten payload and a JPEG with data after its end (a phone's "motion
   photo") are one case at every stage. ``ltpipe shard`` strips such trailing data
   (``jpeg_end``) rather than store it.
3. a full decode with PIL (libjpeg-turbo, truncated images not accepted) of at most the
   manifest's ``max_pixels``, which flags every libjpeg-turbo error, i.e. every sample DALI's
   decoder would stop on.
Warning-only damage is not flagged (no decoder in reach reports it per sample); it cannot crash
or stop a run.
"""

from __future__ import annotations

import io
import warnings

from ltpipe.shards.format import DEFAULT_MAX_PIXELS, EOI_WINDOW

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


HUFFMAN_FRAMES = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended, progressive: every decoder's


def frame_marker(data: bytes) -> int | None:
    """The SOF marker of a JPEG whose header walk passes (``header_problem`` is None)."""
    i = 2
    while i + 4 <= len(data):
        while data[i + 1] == 0xFF and i + 5 < len(data):  # fill bytes before a marker
            i += 1
        marker = data[i + 1]
        if marker in SOF_MARKERS:
            return marker
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def eoi_problem(data: bytes) -> str | None:
    """Why the payload does not end with its EOI marker (within its last EOI_WINDOW bytes)."""
    if data.rfind(b"\xff\xd9", max(1, len(data) - 1 - EOI_WINDOW)) >= 0:
        return None
    end = jpeg_end(data)
    if end is not None:
        return f"{len(data) - end} bytes of data after the end of the image (EOI)"
    return "no end of image (EOI marker): truncated or overwritten"


def jpeg_end(data: bytes) -> int | None:
    """The offset just past the EOI marker that ends the (first) image, found by walking its
    segments and entropy-coded data; None when the walk fails (a damaged or cut-off JPEG)."""
    n, i = len(data), 2
    if data[:2] != b"\xff\xd8":
        return None
    while i + 2 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            return i + 2
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
            continue
        if i + 4 > n:
            return None
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if marker != 0xDA:
            continue
        while True:  # entropy-coded data: up to the next marker other than FF00 and RSTn
            j = data.find(b"\xff", i)
            if j < 0 or j + 1 >= n:
                return None
            follower = data[j + 1]
            if follower == 0x00 or 0xD0 <= follower <= 0xD7:
                i = j + 2
            elif follower == 0xFF:
                i = j + 1
            else:
                i = j
                break
    return None


def open_jpeg(data: bytes):
    """A PIL image of JPEG bytes, opened without PIL's global decompression-bomb limit (the
    caller checks the size against the manifest's ``max_pixels`` itself, thread-safely)."""
    from PIL import JpegImagePlugin

    return JpegImagePlugin.JpegImageFile(io.BytesIO(data))


def decode_problem(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why libjpeg-turbo (through PIL) cannot decode the image, or None. An image of more than
    ``max_pixels`` pixels (the limit it was accepted under) is a problem too."""
    from PIL import ImageFile

    if ImageFile.LOAD_TRUNCATED_IMAGES:  # a caller's global leniency must not hide damage
        return "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; cannot check decoding"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any warning of the decoder is damage
            with open_jpeg(data) as img:
                w, h = img.size
                if w * h > max_pixels:
                    return f"image too large: {w}x{h} pixels (max_pixels {max_pixels})"
                img.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a damaged sample
        return f"does not decode ({exc.__class__.__name__}: {exc})".replace("\n", " ")
    return None


def sample_problem(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """The detector: the header walk, the end, then a full decode. None: DALI can decode it."""
    problem = header_problem(data)
    if problem:
        return f"malformed JPEG header ({problem})"
    return eoi_problem(data) or decode_problem(data, max_pixels)
