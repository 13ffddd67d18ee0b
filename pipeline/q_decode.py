"""Q's decode requests under a mix plan: which source pixels each minority sample needs.

Q's augmentation is drawn on the host (mix_plan.py), so the window of each sample is known before
decoding: the random-resized-crop window (torchvision's rule, from the plan's numbers and the
image's width and height) or, for the "cifar" preset, the S x S window at a pad-and-shift
anchor in [−4, 4]. A request names, per sample:
    decode:  the integer source window the decoder reads (``decoders.image_slice``, an ROI decode),
    roi:     the exact (float) part of it that maps to the output, in (y, x), relative to decode,
    out:     the output (h, w) (``resize`` with that ROI, or for "cifar" a zero-padded ``slice``),
    mirror:  the plan's flip (applied by crop_mirror_normalize).
``full`` requests the whole S x S crop of every sample, the decode Q had before plans. ``tiles``
requests only the box of each mixed row: the box, unflipped when the row is flipped, is mapped
into the crop window, widened by the resize filter's reach (clipped to the crop window, where
the full image's resize clamps too) and decoded alone. A row that does not mix decodes a 1 x 1
placeholder instead of its bytes, so Q still feeds B samples, as DALI's one batch size requires.

With a decoded cache (q_cache.py) Q is not in the loader's main pipeline: only the rows that
need pixels and are not cached are decoded, by a pipeline of their own whose batch is just those
rows (``PlannedDecode.misses``, q_misses.py). A loader resumed from a checkpoint whose pipeline
held Q keeps it there, a placeholder for each cached row too.

Who gets tiles: mixers that paste only Q's boxes, CMO and OTmix's bank mode (``PlanSpec.tiles``).
OTmix's exact mode computes features of whole foregrounds and SMC's views re-crop the whole
foreground, so both keep Q's full decode; ResizeMix draws its source from P, not Q.

Image sizes come from the JPEG header (the SOF marker, a few hundred bytes into the file), read in
Q's worker processes: no shard format change and no decode. The header's size is the stored one,
which is the displayed one because the shard writer stores every image upright (it applies a
camera's EXIF orientation; shards written before it did may still carry one, and
`ltpipe shard shards:OLD NEW` rewrites them).
"""

from __future__ import annotations

import io
import math

import numpy as np

from ltpipe.pipeline.dali_graph import CIFAR_PAD, RRC_RATIO, RRC_SCALE
from ltpipe.pipeline.mix_plan import MixPlan
from ltpipe.shards.jpegscan import SOF_MARKERS  # the frame headers that carry the size

_STANDALONE = frozenset([0x01, 0xD8, *range(0xD0, 0xD8)])
_placeholder: np.ndarray | None = None
PLACEHOLDER_GREY = 128  # the placeholder's pixels


def jpeg_size(data) -> tuple[int, int]:
    """(width, height) from a JPEG's SOF marker; ValueError when there is none."""
    buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    n = len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        raise ValueError("not a JPEG (no SOI marker)")
    i = 2
    while i + 3 < n:
        if buf[i] != 0xFF:
            raise ValueError(f"JPEG: marker expected at byte {i}")
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in SOF_MARKERS and i + 8 < n:
            return (buf[i + 7] << 8) | buf[i + 8], (buf[i + 5] << 8) | buf[i + 6]
        i += 2 + ((buf[i + 2] << 8) | buf[i + 3])
    raise ValueError("JPEG: no SOF marker before the end of the data")


def placeholder_jpeg() -> np.ndarray:
    """An 8 x 8 grey JPEG: what a row that needs no pixels decodes (1 x 1 of it)."""
    global _placeholder
    if _placeholder is None:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (PLACEHOLDER_GREY,) * 3).save(buf, format="JPEG", quality=90)
        _placeholder = np.frombuffer(buf.getvalue(), dtype=np.uint8)
    return _placeholder


def crop_window(u: np.ndarray, width: int, height: int, preset: str, size: int):
    """Q's crop (x, y, w, h) in source pixels from the plan's numbers u [attempts, 4]
    (``crop_windows`` for one image)."""
    return tuple(int(v) for v in crop_windows(u[None], np.array([width]), np.array([height]),
                                              preset, size)[0])


def crop_windows(u: np.ndarray, widths: np.ndarray, heights: np.ndarray, preset: str,
                 size: int) -> np.ndarray:
    """Q's crops, int64 [n, 4] (x, y, w, h) in source pixels, of n images of ``widths`` x
    ``heights`` from the plan's numbers u [n, attempts, 4], all rows at once (no Python per row).

    "imagenet": torchvision's RandomResizedCrop (scale RRC_SCALE, log-uniform ratio RRC_RATIO,
    10 attempts, the first that fits, else the centre crop of the clamped ratio). "cifar": the
    S x S window at an anchor uniform in {−4..4}² (zero padding beyond the image). numpy's exp
    may differ from ``math.exp`` by one ulp, which changes a window only if a side lands within
    ~1e−16 of a rounding boundary (never seen; ``round`` and numpy both round half to even)."""
    u = np.asarray(u, dtype=np.float64)
    width = np.asarray(widths, dtype=np.int64)
    height = np.asarray(heights, dtype=np.int64)
    n = u.shape[0]
    if preset == "cifar":
        span = 2 * CIFAR_PAD + 1
        anchor = np.minimum((u[:, 0, :2] * span).astype(np.int64), span - 1) - CIFAR_PAD
        return np.stack([anchor[:, 0], anchor[:, 1], np.full(n, size), np.full(n, size)], 1)
    area = (width * height).astype(np.float64)[:, None]
    lo, hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    target = area * (RRC_SCALE[0] + (RRC_SCALE[1] - RRC_SCALE[0]) * u[..., 0])
    ratio = np.exp(lo + (hi - lo) * u[..., 1])
    w = np.round(np.sqrt(target * ratio)).astype(np.int64)  # [n, attempts]
    h = np.round(np.sqrt(target / ratio)).astype(np.int64)
    fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    first = np.argmax(fits, axis=1)
    rows = np.arange(n)
    w, h = w[rows, first], h[rows, first]
    x = (u[rows, first, 3] * (width - w + 1)).astype(np.int64)
    y = (u[rows, first, 2] * (height - h + 1)).astype(np.int64)
    # no attempt fits: torchvision's centre crop of the clamped ratio
    r = width / height
    cw = np.where(r < RRC_RATIO[0], width, np.where(r > RRC_RATIO[1],
                                                    np.round(height * RRC_RATIO[1]), width))
    ch = np.where(r < RRC_RATIO[0], np.round(width / RRC_RATIO[0]), height)
    cw, ch = cw.astype(np.int64), ch.astype(np.int64)
    none = ~fits.any(axis=1)
    w, h = np.where(none, cw, w), np.where(none, ch, h)
    x = np.where(none, (width - cw) // 2, x)
    y = np.where(none, (height - ch) // 2, y)
    return np.stack([x, y, w, h], 1)


def _request(window, box, width: int, height: int, preset: str, size: int):
    """(decode anchor (x, y), decode shape (w, h), roi start (y, x), roi end (y, x), out (h, w))
    of the output box (x0, y0, x1, y1) of an S x S crop ``window`` (x, y, w, h)."""
    wx, wy, ww, wh = window
    x0, y0, x1, y1 = box
    if preset == "cifar":  # unit scale: the box's source pixels, zero outside the image
        sx0, sy0, sx1, sy1 = wx + x0, wy + y0, wx + x1, wy + y1
        dx0, dy0 = min(max(sx0, 0), width - 1), min(max(sy0, 0), height - 1)
        dx1, dy1 = max(min(sx1, width), dx0 + 1), max(min(sy1, height), dy0 + 1)
        return (dx0, dy0), (dx1 - dx0, dy1 - dy0), (sy0 - dy0, sx0 - dx0), (0, 0), (y1 - y0,
                                                                                    x1 - x0)
    fx, fy = ww / size, wh / size  # source pixels per output pixel
    sx0, sx1, sy0, sy1 = wx + x0 * fx, wx + x1 * fx, wy + y0 * fy, wy + y1 * fy
    mx, my = math.ceil(fx) + 1, math.ceil(fy) + 1  # the antialiasing filter's reach, + 1
    dx0, dx1 = max(wx, math.floor(sx0) - mx), min(wx + ww, math.ceil(sx1) + mx)
    dy0, dy1 = max(wy, math.floor(sy0) - my), min(wy + wh, math.ceil(sy1) + my)
    return ((dx0, dy0), (dx1 - dx0, dy1 - dy0), (sy0 - dy0, sx0 - dx0), (sy1 - dy0, sx1 - dx0),
            (y1 - y0, x1 - x0))


# the request fields after the jpg, in order: decode anchor (x, y), decode shape (w, h), roi start
# (y, x), roi end (y, x), out size (h, w), mirror
FIELD_DTYPES = (np.int32, np.int32, np.float32, np.float32, np.float32, np.int32)
_PLACEHOLDER_REQUEST = ((0, 0), (1, 1), (0, 0), (1, 1), (1, 1), False)


def requests(plan: MixPlan, jpegs: list, *, tiles: bool, preset: str, size: int, rows=None):
    """Per-sample inputs of Q's planned decode (dali_graph.py ``_planned``) for ``jpegs`` (None
    where a row decodes nothing), the plan's rows ``rows`` (default: all, in order): [list of
    jpg uint8, decode anchor int32 [n,2], decode shape int32 [n,2], roi start float32 [n,2],
    roi end float32 [n,2], out size float32 [n,2], mirror int32 [n]].

    Every field but the jpgs is one array with the batch as its leading axis: DALI's parallel
    external source moves an array between processes and into the pipeline as one buffer, but a
    list of B small arrays sample by sample, which cost the training process about 1.3 ms of CPU
    per step for these fields (bench/main_job.py measures the main job)."""
    jpgs, fields = [], []
    for i, jpg in zip(range(len(jpegs)) if rows is None else rows, jpegs):
        if jpg is None:
            jpgs.append(placeholder_jpeg())
            fields.append(_PLACEHOLDER_REQUEST)
            continue
        width, height = jpeg_size(jpg)
        window = crop_window(plan.crop_u[i], width, height, preset, size)
        box = plan.boxes[i].tolist() if tiles else [0, 0, size, size]
        if plan.flip[i]:  # the flip comes last: the box's unflipped source is S − x1 .. S − x0
            box = [size - box[2], box[1], size - box[0], box[3]]
        jpgs.append(jpg)
        fields.append((*_request(window, box, width, height, preset, size), plan.flip[i]))
    columns = [np.array([row[k] for row in fields], dtype=dtype)
               for k, dtype in enumerate(FIELD_DTYPES)]
    return [jpgs, *columns]


class PlannedDecode:
    """Q's planned decode (picklable): which rows of a step need pixels, and the columns of
    ``requests`` that decode them; only those rows are read from the shards."""

    def __init__(self, planner, *, tiles: bool, preset: str, cached: np.ndarray | None = None):
        self.planner, self.tiles, self.preset = planner, bool(tiles), preset
        self.cached = cached  # bool [N]: ids the loader pastes from its decoded cache (q_cache.py)

    def needed(self, plan: MixPlan, ids: np.ndarray) -> np.ndarray:
        """bool [B]: the rows whose pixels Q's decoder must produce."""
        if self.tiles:
            area = (plan.boxes[:, 2] - plan.boxes[:, 0]) * (plan.boxes[:, 3] - plan.boxes[:, 1])
            needed = plan.mixed & (area > 0)  # an empty box (λ₀ = 1) needs no pixels either
        else:
            needed = np.ones(len(plan), dtype=bool)
        if self.cached is not None:
            needed &= ~self.cached[ids]
        return needed

    def __call__(self, epoch: int, step: int, ids: np.ndarray, data) -> list:
        """The columns of all B rows (``MinoritySource``: a placeholder where none is needed)."""
        plan = self.planner.draw(epoch, step)
        jpegs = [data.read(int(i)) if need else None
                 for i, need in zip(ids, self.needed(plan, ids))]
        return self._columns(requests(plan, jpegs, tiles=self.tiles, preset=self.preset,
                                      size=self.planner.image_size))

    def misses(self, epoch: int, step: int, ids: np.ndarray, data) -> tuple[np.ndarray, list]:
        """(rows int64 [n], their columns): only the rows that need pixels (q_misses.py); one
        placeholder row, numbered −1, when none does (DALI takes no empty batch)."""
        plan = self.planner.draw(epoch, step)
        rows = np.flatnonzero(self.needed(plan, ids))
        jpegs = [data.read(int(ids[r])) for r in rows]
        if not rows.size:
            rows, jpegs = np.array([-1]), [None]
        cols = requests(plan, jpegs, tiles=self.tiles, preset=self.preset,
                        size=self.planner.image_size, rows=rows)
        return rows.astype(np.int64), self._columns(cols)

    def _columns(self, cols: list) -> list:
        return cols if self.preset == "imagenet" else cols[:4] + cols[5:]  # cifar: no roi end
