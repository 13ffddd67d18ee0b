"""Turn one source item into the members of a WebDataset sample (runs in worker processes).

JPEG inputs that are RGB/greyscale, upright and within ``max_size`` keep their exact bytes (no
generation loss); everything else is decoded, turned upright, converted to RGB, resized so the
long side is at most ``max_size`` (aspect kept) and re-encoded. Upright: a camera's EXIF
orientation is applied here, once, because the readers disagree about it (DALI's whole-image
decoders apply it; PIL, torchvision and the mix plans' windows, drawn from the JPEG header, do
not), and a re-encode would otherwise drop the tag and store the picture sideways. Unreadable,
truncated or missing inputs raise ``Rejected`` with a short reason for ``rejected.tsv``.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ltpipe.shards import jpegscan
from ltpipe.shards.format import (DEFAULT_MAX_PIXELS, MAX_ASPECT, MAX_SIDE, encode_sample_id,
                                  payload_max_bytes)

KEEP_MODES = ("RGB", "L")
ORIENTATION = 0x0112  # the EXIF tag
MAX_PIXELS = DEFAULT_MAX_PIXELS


class Rejected(Exception):
    """An input that is not written; str(exc) is the reason."""


@dataclass(frozen=True)
class Item:
    """One input sample. ``load(arg, max_bytes=N)`` returns encoded file bytes (Rejected when
    larger than N) or an [H,W,3] uint8 array."""

    path: str  # shown in the sample's .json and in rejected.tsv
    label: int
    load: Callable[[Any], bytes | np.ndarray]
    arg: Any


@dataclass(frozen=True)
class Encoded:
    jpeg: bytes
    width: int
    height: int


def read_file(path: str, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``. A FIFO, device or folder named like
    an image is rejected without a blocking open (a FIFO's open waits for a writer): stat first,
    then open non-blocking and check the opened file again, in case it was swapped in between.
    A larger file (a 3 GB sparse ``.jpg``) is rejected unread."""
    try:
        if "\0" in path:
            raise Rejected("file name contains a NUL byte")
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise Rejected("not a regular file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Rejected("not a regular file")
            if max_bytes is not None and st.st_size > max_bytes:
                raise Rejected(too_large(st.st_size, max_bytes))
            data = f.read(max_bytes + 1 if max_bytes is not None else -1)
            if max_bytes is not None and len(data) > max_bytes:  # grew while being read
                raise Rejected(too_large(len(data), max_bytes))
            return data
    except FileNotFoundError:
        raise Rejected("missing file") from None
    except (OSError, ValueError) as exc:  # ValueError: a name the OS cannot take
        raise Rejected(f"unreadable file ({getattr(exc, 'strerror', None) or exc})") from None


def too_large(size: int, max_bytes: int) -> str:
    return (f"file of {size:,} bytes, more than an image of --max-pixels can need "
            f"({max_bytes:,} bytes)")


def deterministic(message: str) -> str:
    """An error message without what differs between runs: ``<_io.BytesIO object at 0x7f..>``
    becomes ``<_io.BytesIO object>``, any other address ``0x..``."""
    message = re.sub(r"<([^<>]*?) at 0x[0-9a-fA-F]+>", r"<\1>", message)
    return re.sub(r"\b0x[0-9a-fA-F]{8,}\b", "0x..", message)


def identity(x: Any, max_bytes: int | None = None) -> Any:
    return x


def encode_image(raw: bytes | np.ndarray, *, max_size: int | None, quality: int,
                 max_pixels: int = MAX_PIXELS) -> Encoded:
    """JPEG bytes for ``raw`` (kept as is when already a small enough upright RGB/grey JPEG
    that the loaders' detector passes; data after its end is cut off). An image of more than
    ``max_pixels`` pixels, or whose stored size would break the limits of shards/format.py, is
    rejected from its header, before anything is decoded."""
    if isinstance(raw, np.ndarray):
        img = Image.fromarray(raw)
        return _checked(_to_jpeg(img, stored_size(*img.size, max_size), quality))
    try:
        with _pil_pixel_limit_off():
            img = Image.open(io.BytesIO(raw))
        w, h = img.size  # from the header
        if w * h > max_pixels:
            raise Rejected(f"image too large: {w}x{h} = {w * h} pixels "
                           f"(--max-pixels {max_pixels})")
        upright = exif_orientation(img) == 1
        turned = exif_orientation(img) in (5, 6, 7, 8)  # a quarter turn swaps the sides
        size = stored_size(*((h, w) if turned else (w, h)), max_size)
        if img.format == "JPEG" and img.mode in KEEP_MODES and size == (w, h) and upright:
            kept = _kept(bytes(raw), max_pixels)
            if kept is not None:
                return Encoded(kept, w, h)
        if img.format == "JPEG" and size != ((h, w) if turned else (w, h)):
            # libjpeg's scaled IDCT decodes at 1/2, 1/4 or 1/8 size where that still covers the
            # target: a fraction of the pixels to decode, low-pass filtered in the DCT domain
            img.draft(None, (size[1], size[0]) if turned else size)
        img.load()  # full decode: truncated/corrupt data raises here
    except UnidentifiedImageError:
        raise Rejected("corrupt or truncated image (PIL cannot identify it)") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise Rejected(f"corrupt or truncated image ({deterministic(str(exc))})") from None
    try:
        img = to_8bit(img)
        if not upright:
            img = ImageOps.exif_transpose(img)
        return _checked(_to_jpeg(img, size, quality))
    except (OSError, ValueError, TypeError, SyntaxError) as exc:  # e.g. PIL's encoder errors
        raise Rejected(f"cannot re-encode ({deterministic(str(exc))})") from None


def stored_size(w: int, h: int, max_size: int | None) -> tuple[int, int]:
    """The size (w, h) is stored at (``fitted_size``), or Rejected when that breaks the limits
    of shards/format.py: DALI's decoders fail on larger sides, the eval resize on more extreme
    aspect ratios."""
    fw, fh = fitted_size(w, h, max_size)
    if max(fw, fh) > MAX_SIDE:
        raise Rejected(f"image side too long: {w}x{h} (sides up to {MAX_SIDE} px are stored; "
                       f"--max-size resizes)")
    if max(fw, fh) > MAX_ASPECT * min(fw, fh):
        raise Rejected(f"aspect ratio too extreme: {w}x{h} (up to {MAX_ASPECT}:1 is stored)")
    return fw, fh


def _kept(data: bytes, max_pixels: int) -> bytes | None:
    """The JPEG's bytes as stored unchanged, when the loaders' detector passes them (after
    cutting off data past its end, e.g. a phone's "motion photo" video) and its frame is
    Huffman-coded baseline, extended or progressive; None: re-encode it. nvJPEG decodes no
    arithmetic-coded, lossless or hierarchical frame, which libjpeg-turbo (the detector's
    decoder) may accept."""
    problem = jpegscan.eoi_problem(data)
    if problem and "after the end" in problem:
        data = data[:jpegscan.jpeg_end(data)]
    if jpegscan.sample_problem(data, max_pixels):
        return None
    return data if jpegscan.frame_marker(data) in jpegscan.HUFFMAN_FRAMES else None


def _checked(enc: Encoded) -> Encoded:
    """Our own encoder's output, through the detector's cheap steps (no decode)."""
    problem = jpegscan.header_problem(enc.jpeg) or jpegscan.eoi_problem(enc.jpeg)
    if problem:
        raise Rejected(f"re-encoded JPEG fails the loaders' check ({problem})")
    return enc


SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_8bit(img: Image.Image) -> Image.Image:
    """8-bit pixels: 16-bit greyscale scaled (65535 -> 255), not clipped (which stored a 16-bit
    PNG almost white). 32-bit integer pixels are taken as 16-bit only from a PNG (PIL's mode for
    its 16-bit greyscale) and float pixels are rejected: their range is not defined."""
    if img.mode in SIXTEEN_BIT or (img.mode == "I" and img.format == "PNG"):
        a = np.asarray(img).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise Rejected(f"{img.mode} pixels outside 0..65535")
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")
    if img.mode == "I":
        raise Rejected("32-bit integer pixels (mode I): no defined 8-bit range (convert the "
                       "image to 8 or 16 bits)")
    if img.mode == "F":
        raise Rejected("floating-point pixels (mode F): no defined 8-bit range (convert the "
                       "image to 8 or 16 bits)")
    return img


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 = upright; 2-8 mirror or turn), 1 when absent or unreadable:
    the pixels are fine either way, and a broken EXIF block is no reason to reject them."""
    try:
        value = img.getexif().get(ORIENTATION, 1)
    except Exception:  # PIL raises assorted errors on a malformed EXIF block
        return 1
    return value if value in range(1, 9) else 1


@contextmanager
def _pil_pixel_limit_off():
    """PIL's own bomb check (a warning above its limit, an error above twice that) is off while
    an image is opened (which reads the header only): ours, right after, decides, with the size."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def fitted_size(w: int, h: int, max_size: int | None) -> tuple[int, int]:
    """(w, h) scaled so the long side is at most ``max_size`` (aspect kept, at least 1 px)."""
    if max_size is None or max(w, h) <= max_size:
        return w, h
    scale = max_size / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _to_jpeg(img: Image.Image, size: tuple[int, int], quality: int) -> Encoded:
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != size:
        img = img.resize(size, Image.BICUBIC, reducing_gap=3.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Encoded(buf.getvalue(), *size)


def sample_members(sample_id: int, label: int, path: str, class_name: str,
                   jpeg: bytes) -> dict[str, bytes]:
    """The members of one sample, as fixed by shards/format.py."""
    meta = json.dumps({"path": path, "class": class_name}, ensure_ascii=False, sort_keys=True)
    return {"cls": str(label).encode(), "id": encode_sample_id(sample_id),
            "jpg": jpeg, "json": meta.encode()}


def encode_item(item: Item, max_size: int | None, quality: int,
                max_pixels: int = MAX_PIXELS) -> Encoded | Rejected:
    """Worker entry point: never raises for one input, returns the Rejected instead (any failure
    of one image is one row of rejected.tsv, never the end of the job)."""
    try:
        raw = item.load(item.arg, max_bytes=payload_max_bytes(max_pixels))
        return encode_image(raw, max_size=max_size, quality=quality, max_pixels=max_pixels)
    except Rejected as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - e.g. a decoder's MemoryError on one image
        return Rejected(f"cannot read or encode ({exc.__class__.__name__}: "
                        f"{deterministic(' '.join(str(exc).split()))[:200]})")
