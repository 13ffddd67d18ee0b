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

from ltpipe.shards.format import encode_sample_id

KEEP_MODES = ("RGB", "L")
ORIENTATION = 0x0112  # the EXIF tag
MAX_PIXELS = 89_478_485  # PIL's decompression-bomb warning threshold (Image.MAX_IMAGE_PIXELS)


class Rejected(Exception):
    """An input that is not written; str(exc) is the reason."""


@dataclass(frozen=True)
class Item:
    """One input sample. ``load(arg)`` returns encoded file bytes or an [H,W,3] uint8 array."""

    path: str  # shown in the sample's .json and in rejected.tsv
    label: int
    load: Callable[[Any], bytes | np.ndarray]
    arg: Any


@dataclass(frozen=True)
class Encoded:
    jpeg: bytes
    width: int
    height: int


def read_file(path: str) -> bytes:
    """The bytes of a regular file. A FIFO, device or folder named like an image is rejected
    without a blocking open (a FIFO's open waits for a writer): stat first, then open
    non-blocking and check the opened file again, in case it was swapped in between."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise Rejected("not a regular file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise Rejected("not a regular file")
            return f.read()
    except FileNotFoundError:
        raise Rejected("missing file") from None
    except OSError as exc:
        raise Rejected(f"unreadable file ({exc.strerror or exc})") from None


def deterministic(message: str) -> str:
    """An error message without what differs between runs: ``<_io.BytesIO object at 0x7f..>``
    becomes ``<_io.BytesIO object>``, any other address ``0x..``."""
    message = re.sub(r"<([^<>]*?) at 0x[0-9a-fA-F]+>", r"<\1>", message)
    return re.sub(r"\b0x[0-9a-fA-F]{8,}\b", "0x..", message)


def identity(x: Any) -> Any:
    return x


def encode_image(raw: bytes | np.ndarray, *, max_size: int | None, quality: int,
                 max_pixels: int = MAX_PIXELS) -> Encoded:
    """JPEG bytes for ``raw`` (kept as is when already a small enough RGB/grey JPEG). An image
    of more than ``max_pixels`` pixels is rejected from its header, before anything is decoded."""
    if isinstance(raw, np.ndarray):
        img = Image.fromarray(raw)
        return _to_jpeg(img, fitted_size(*img.size, max_size), quality)
    try:
        with _pil_pixel_limit_off():
            img = Image.open(io.BytesIO(raw))
        w, h = img.size  # from the header
        if w * h > max_pixels:
            raise Rejected(f"image too large: {w}x{h} = {w * h} pixels "
                           f"(--max-pixels {max_pixels})")
        size = fitted_size(w, h, max_size)
        if img.format == "JPEG" and size != (w, h):
            # libjpeg's scaled IDCT decodes at 1/2, 1/4 or 1/8 size where that still covers the
            # target: a fraction of the pixels to decode, low-pass filtered in the DCT domain
            img.draft(None, size)
        img.load()  # full decode: truncated/corrupt data raises here
    except UnidentifiedImageError:
        raise Rejected("corrupt or truncated image (PIL cannot identify it)") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise Rejected(f"corrupt or truncated image ({deterministic(str(exc))})") from None
    upright = exif_orientation(img) == 1
    if img.format == "JPEG" and img.mode in KEEP_MODES and size == (w, h) and upright:
        return Encoded(bytes(raw), w, h)
    if not upright:
        img = ImageOps.exif_transpose(img)  # a 90° turn swaps the sides, and the fitted size
        size = fitted_size(*img.size, max_size)
    return _to_jpeg(img, size, quality)


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
    """Worker entry point: never raises for bad input, returns the Rejected instead."""
    try:
        return encode_image(item.load(item.arg), max_size=max_size, quality=quality,
                            max_pixels=max_pixels)
    except Rejected as exc:
        return exc
