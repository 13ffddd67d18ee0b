"""numba ``njit`` crop-resize-paste for CPU tensors (definition and torch reference:
crop_paste.py).

Same rule, operation order and rounding as the reference (float32 operations rounded on their
own: numba does not contract into fmas without fastmath; every constant is a float32, so nothing
is promoted to float64). Separable: per row, the horizontal sums of every source row the box's
vertical taps touch are computed once, then each output pixel sums those rows; that is the
reference's sum, term for term (less the zero-weight taps: each adds an exact +0), without
recomputing a source row per output row. Compiled on first use and cached on disk (numba's
cache=True).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from ltpipe.kernels.paste_cpu import _KIND, _RAW, KIND_F32, KIND_U8, store_value
_HALF, _ONE, _ZERO = np.float32(0.5), np.float32(1.0), np.float32(0.0)


@njit(cache=True)
def _taps(first, count, flip, size, extent):
    """(clamped source indices int64 [count, T], weights float32 [count, T], first and end of
    the taps with a positive weight [count]) of the output positions first .. first + count − 1
    (flipped: size − 1 − position). A zero-weight tap adds exactly +0 to a sum of non-negative
    terms, so the sums below skip them and still equal the reference's."""
    s = np.float32(extent) / np.float32(size)
    r = s if s > _ONE else _ONE
    taps = int(math.ceil(2.0 * r)) + 1
    idx = np.empty((count, taps), np.int64)
    wts = np.empty((count, taps), np.float32)
    t0 = np.zeros(count, np.int64)
    t1 = np.zeros(count, np.int64)
    for n in range(count):
        o = first + n
        if flip:
            o = size - 1 - o
        c = (np.float32(o) + _HALF) * s - _HALF
        j0 = int(math.ceil(c - r))
        total = _ZERO
        t0[n] = taps
        for t in range(taps):
            j = j0 + t
            a = _ONE - abs(np.float32(j) - c) / r
            a = a if a > _ZERO else _ZERO
            wts[n, t] = a
            total = a if t == 0 else total + a
            idx[n, t] = min(max(j, 0), extent - 1)
            if a > _ZERO:
                t0[n] = min(t0[n], t)
                t1[n] = t + 1
        for t in range(taps):
            wts[n, t] = wts[n, t] / total
    return idx, wts, t0, t1


@njit(cache=True)
def _encode(u, c, kind, normalize, mean, inv_std, fbuf, ubuf):
    """The stored value of u (as the raw storage type's value)."""
    if kind == KIND_U8 or not normalize:
        v = u
    else:
        v = (u - mean[c]) * inv_std[c]
    return store_value(v, kind, fbuf, ubuf)


@njit(cache=True)
def _horizontal(rows, pixels, base, H, W, wx, wy, lo, jx, ax, tx0, tx1):
    """rows[rr, 3·xx + c]: the horizontal sums of source row wy + lo + rr (zeros outside)."""
    cols = (jx + wx) * 3  # [w, T] offsets within a row
    inside = wx + jx.min() >= 0 and wx + jx.max() < W  # always, but for the "cifar" shift
    for rr in range(rows.shape[0]):
        sy = wy + lo + rr
        if sy < 0 or sy >= H:
            rows[rr] = _ZERO
            continue
        row = base + sy * W * 3
        out = rows[rr]
        for xx in range(jx.shape[0]):
            h0 = _ZERO
            h1 = _ZERO
            h2 = _ZERO
            for t in range(tx0[xx], tx1[xx]):
                o = cols[xx, t]
                if inside or 0 <= o < 3 * W:  # else the pixel reads 0: a term of exactly +0
                    a = ax[xx, t]
                    o += row
                    h0 = h0 + a * np.float32(pixels[o])
                    h1 = h1 + a * np.float32(pixels[o + 1])
                    h2 = h2 + a * np.float32(pixels[o + 2])
            out[3 * xx] = h0
            out[3 * xx + 1] = h1
            out[3 * xx + 2] = h2


@njit(cache=True)
def _vertical(acc, rows, lo, jy, ay, ty0, ty1, yy):
    """acc[3·xx + c]: output row yy's sums over the horizontal sums (in tap order)."""
    acc[:] = _ZERO
    for t in range(ty0[yy], ty1[yy]):
        a = ay[yy, t]
        src = rows[jy[yy, t] - lo]
        for e in range(acc.shape[0]):
            acc[e] = acc[e] + a * src[e]


@njit(cache=True)
def _crop_paste(dst, d_cl, pixels, offsets, shapes, slots, windows, boxes, flips, kind,
                normalize, mean, inv_std):
    S = dst.shape[2] if d_cl else dst.shape[3]
    fbuf = np.empty(1, np.float32)
    ubuf = fbuf.view(np.uint32)
    scratch = np.empty(0, np.float32)  # the rows' buffer, reused (a fresh one per row faults)
    for i in range(dst.shape[0]):
        k = slots[i]
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        if k < 0 or x1 <= x0 or y1 <= y0:
            continue
        wx, wy, ww, wh = windows[i, 0], windows[i, 1], windows[i, 2], windows[i, 3]
        jx, ax, tx0, tx1 = _taps(x0, x1 - x0, flips[i] != 0, S, ww)
        jy, ay, ty0, ty1 = _taps(y0, y1 - y0, False, S, wh)
        lo, hi = jy.min(), jy.max()
        size = (hi - lo + 1) * 3 * (x1 - x0)
        if scratch.size < size:
            scratch = np.empty(size, np.float32)
        rows = scratch[:size].reshape(hi - lo + 1, 3 * (x1 - x0))
        _horizontal(rows, pixels, offsets[k], shapes[k, 0], shapes[k, 1], wx, wy, lo, jx, ax,
                    tx0, tx1)
        acc = np.empty(3 * (x1 - x0), np.float32)
        for yy in range(y1 - y0):
            _vertical(acc, rows, lo, jy, ay, ty0, ty1, yy)
            _store(dst, d_cl, i, y0 + yy, x0, acc, kind, normalize, mean, inv_std, fbuf, ubuf)


@njit(cache=True)
def _store(dst, d_cl, i, y, x0, acc, kind, normalize, mean, inv_std, fbuf, ubuf):
    """Round output row y's sums to uint8 values u and store them (normalised, encoded)."""
    plain = kind == KIND_F32 and normalize  # the common cases without _encode's branches
    raw = kind == KIND_U8 or (kind == KIND_F32 and not normalize)
    for c in range(3):
        m, s = mean[c], inv_std[c]
        for xx in range(acc.shape[0] // 3):
            u = np.float32(math.floor(acc[3 * xx + c] + _HALF))
            u = min(max(u, _ZERO), np.float32(255.0))
            out = (u - m) * s if plain else u if raw else _encode(u, c, kind, normalize, mean,
                                                                  inv_std, fbuf, ubuf)
            if d_cl:
                dst[i, y, x0 + xx, c] = out
            else:
                dst[i, c, y, x0 + xx] = out


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
