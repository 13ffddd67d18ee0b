"""numba ``njit`` crop-resize-paste for CPU tensors (definition and torch reference:
crop_paste.py).

Same rule, operation order and rounding as the reference (float32 operations rounded on their
own: numba does not contract into fmas without fastmath; every constant is a float32, so nothing
is promoted to float64). Separable: per row, the horizontal sums of every source row the box's
vertical taps touch are computed once, then each output pixel sums those rows; that is the
reference's sum, term for term, without recomputing a source row per output row. Compiled on
first use and cached on disk (numba's cache=True).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from ltpipe.kernels import halfbits
from ltpipe.kernels.paste_cpu import _KIND, _RAW, KIND_BF16, KIND_F16, KIND_U8

_f2h = njit(cache=True)(halfbits.float_to_half_bits)
_f2b = njit(cache=True)(halfbits.float_to_bfloat_bits)
_HALF, _ONE, _ZERO = np.float32(0.5), np.float32(1.0), np.float32(0.0)


@njit(cache=True)
def _taps(first, count, flip, size, extent):
    """(clamped source indices int64 [count, T], weights float32 [count, T]) of the output
    positions first .. first + count − 1 (flipped: size − 1 − position)."""
    s = np.float32(extent) / np.float32(size)
    r = s if s > _ONE else _ONE
    taps = int(math.ceil(2.0 * r)) + 1
    idx = np.empty((count, taps), np.int64)
    wts = np.empty((count, taps), np.float32)
    for n in range(count):
        o = first + n
        if flip:
            o = size - 1 - o
        c = (np.float32(o) + _HALF) * s - _HALF
        j0 = int(math.ceil(c - r))
        total = _ZERO
        for t in range(taps):
            j = j0 + t
            a = _ONE - abs(np.float32(j) - c) / r
            a = a if a > _ZERO else _ZERO
            wts[n, t] = a
            total = a if t == 0 else total + a
            idx[n, t] = min(max(j, 0), extent - 1)
        for t in range(taps):
            wts[n, t] = wts[n, t] / total
    return idx, wts


@njit(cache=True)
def _encode(u, c, kind, normalize, mean, inv_std, fbuf, ubuf):
    """The stored value of u (as the raw storage type's value)."""
    if kind == KIND_U8 or not normalize:
        v = u
    else:
        v = (u - mean[c]) * inv_std[c]
    if kind == KIND_F16 or kind == KIND_BF16:
        fbuf[0] = v
        f = np.int64(ubuf[0])
        b = _f2h(f) if kind == KIND_F16 else _f2b(f)
        return np.float32(b - 65536 if b >= 32768 else b)  # signed int16 pattern
    return v


@njit(cache=True)
def _crop_paste(dst, d_cl, pixels, offsets, shapes, slots, windows, boxes, flips, kind,
                normalize, mean, inv_std):
    S = dst.shape[2] if d_cl else dst.shape[3]
    fbuf = np.empty(1, np.float32)
    ubuf = fbuf.view(np.uint32)
    for i in range(dst.shape[0]):
        k = slots[i]
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        if k < 0 or x1 <= x0 or y1 <= y0:
            continue
        wx, wy, ww, wh = windows[i, 0], windows[i, 1], windows[i, 2], windows[i, 3]
        H, W, base = shapes[k, 0], shapes[k, 1], offsets[k]
        jx, ax = _taps(x0, x1 - x0, flips[i] != 0, S, ww)
        jy, ay = _taps(y0, y1 - y0, False, S, wh)
        lo, hi = jy.min(), jy.max()
        rows = np.zeros((hi - lo + 1, x1 - x0, 3), np.float32)  # horizontal sums per source row
        for rr in range(hi - lo + 1):
            sy = wy + lo + rr
            if sy < 0 or sy >= H:
                continue  # outside the image: zeros
            for xx in range(x1 - x0):
                for c in range(3):
                    h = _ZERO
                    for t in range(jx.shape[1]):
                        sx = wx + jx[xx, t]
                        px = np.float32(pixels[base + (sy * W + sx) * 3 + c]) \
                            if 0 <= sx < W else _ZERO
                        h = h + ax[xx, t] * px
                    rows[rr, xx, c] = h
        for yy in range(y1 - y0):
            for xx in range(x1 - x0):
                for c in range(3):
                    v = _ZERO
                    for t in range(jy.shape[1]):
                        v = v + ay[yy, t] * rows[jy[yy, t] - lo, xx, c]
                    u = np.float32(math.floor(v + _HALF))
                    u = min(max(u, _ZERO), np.float32(255.0))
                    out = _encode(u, c, kind, normalize, mean, inv_std, fbuf, ubuf)
                    if d_cl:
                        dst[i, y0 + yy, x0 + xx, c] = out
                    else:
                        dst[i, c, y0 + yy, x0 + xx] = out


def crop_paste_tensors(dst, source, slots, windows, boxes, flips, mean, inv_std) -> None:
    """Run the kernel on CPU tensors (arguments checked by crop_paste.crop_resize_paste_)."""
    raw = dst.view(_RAW[dst.dtype])
    d_cl = not dst.is_contiguous()
    d = (raw.permute(0, 2, 3, 1) if d_cl else raw).numpy()
    as_np = lambda t: t.to(torch.int64).contiguous().numpy()  # noqa: E731
    _crop_paste(d, d_cl, source.pixels.numpy(), as_np(source.offsets), as_np(source.shapes),
                as_np(slots), as_np(windows), as_np(boxes), as_np(flips), _KIND[dst.dtype],
                mean is not None, np.asarray(mean or [0, 0, 0], np.float32),
                np.asarray(inv_std or [1, 1, 1], np.float32))
