"""numba ``njit`` crop-resize-paste for CPU tensors (definition and torch reference:
crop_paste.py).

Same rule, operation order and rounding as the reference (float32 operations rounded on their
own: numba does not contract into fmas without fastmath; every constant is a float32, so nothing
is promoted to float64). Separable, per row of the batch:
  1. the source window the box's taps touch is read x-major: where it is stored that way
     (``SourceImages.x_major``, Q's cache in host memory) in place, else from a copy
     (``_transpose_window``), so that
  2. the horizontal pass runs along contiguous memory: for each output column, the weighted sum
     of its source columns, over every source row at once (``_weighted_sum``, SIMD);
  3. those sums are transposed to row-major (``_transpose_sums``), so that
  4. the vertical pass is again a weighted sum of contiguous rows, per output row;
  5. rounded to uint8 (``_quantize``), then normalised and stored into dst's row.
Each output value is the reference's sum term for term: a zero-weight tap adds exactly +0 to a
sum of non-negative terms, so only each output's taps with a positive weight are summed, in tap
order. Every loop runs over flat 1-D arrays: numba vectorises those, not slices of a 4-D array
(a 4-D row slice made the store alone 10x slower). Compiled on first use and cached on disk
(numba's cache=True).
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
def _weighted_sum(out, o, n_out, wts, src, starts, n):
    """out[o + e] = Σ_t wts[t] · f32(src[starts[t] + e]) for e < n_out, t < n, in t order (the
    reference's 0 + w0·s0 + w1·s1 + ...; 0 + x is x exactly for x >= 0). The loops index
    slices from 0: an index numba cannot prove non-negative keeps them scalar."""
    dst = out[o:o + n_out]
    s0 = src[starts[0]:starts[0] + n_out]
    a0 = wts[0]
    if n == 1:
        for e in range(n_out):
            dst[e] = a0 * np.float32(s0[e])
        return
    s1 = src[starts[1]:starts[1] + n_out]
    a1 = wts[1]
    if n == 2:
        for e in range(n_out):
            dst[e] = a0 * np.float32(s0[e]) + a1 * np.float32(s1[e])
        return
    s2 = src[starts[2]:starts[2] + n_out]
    a2 = wts[2]
    for e in range(n_out):
        dst[e] = a0 * np.float32(s0[e]) + a1 * np.float32(s1[e]) + a2 * np.float32(s2[e])
    for t in range(3, n):  # wide windows: the rest one tap at a time, still in tap order
        st = src[starts[t]:starts[t] + n_out]
        at = wts[t]
        for e in range(n_out):
            dst[e] = dst[e] + at * np.float32(st[e])


@njit(cache=True)
def _transpose_window(out, pixels, base, H, W, x_major, xa, ya, cols, rows):
    """out[x·3·rows + 3·r + c] = pixel (ya + r, xa + x, c) of the H x W image at ``base``, HWC
    or ``x_major`` (0 outside it: the "cifar" window may leave the image), x < cols, r < rows."""
    stride = 3 * rows
    for r in range(rows):
        y = ya + r
        inside_y = 0 <= y < H
        for x in range(cols):
            sx = xa + x
            o = x * stride + 3 * r
            if inside_y and 0 <= sx < W:
                p = base + 3 * (sx * H + y if x_major else y * W + sx)
                out[o] = pixels[p]
                out[o + 1] = pixels[p + 1]
                out[o + 2] = pixels[p + 2]
            else:
                out[o] = 0
                out[o + 1] = 0
                out[o + 2] = 0


@njit(cache=True)
def _transpose_sums(out, sums, w, rows):
    """out[rr·3w + c·w + xx] = sums[xx·3·rows + 3·rr + c]: channel planes per source row."""
    for xx in range(w):
        s = xx * 3 * rows
        for rr in range(rows):
            o = rr * 3 * w + xx
            out[o] = sums[s + 3 * rr]
            out[o + w] = sums[s + 3 * rr + 1]
            out[o + 2 * w] = sums[s + 3 * rr + 2]


@njit(cache=True)
def _quantize(acc, q, n):
    """q = clamp(floor(acc + 0.5), 0, 255) as uint8, for the first n values."""
    for e in range(n):
        v = np.float32(math.floor(acc[e] + _HALF))
        q[e] = np.uint8(min(max(v, _ZERO), np.float32(255.0)))


@njit(cache=True)
def _store(dst, q, kind, normalize, m, s, fbuf, ubuf):
    """dst[xx] = the uint8 value q[xx], or (q − m)·s, as dst's raw type."""
    if kind == KIND_F32 and normalize:
        for xx in range(q.shape[0]):
            dst[xx] = (np.float32(q[xx]) - m) * s
    elif kind == KIND_U8 or kind == KIND_F32:
        for xx in range(q.shape[0]):
            dst[xx] = q[xx]
    else:  # float16 / bfloat16 bit patterns
        for xx in range(q.shape[0]):
            u = np.float32(q[xx])
            dst[xx] = store_value((u - m) * s if normalize else u, kind, fbuf, ubuf)


@njit(cache=True)
def _crop_paste(dst, d_cl, S, pixels, x_major, offsets, shapes, slots, windows, boxes, flips,
                kind, normalize, mean, inv_std):
    """dst: the flat raw view of [B, 3, S, S] (NCHW) or [B, S, S, 3] (``d_cl``)."""
    fbuf = np.empty(1, np.float32)
    ubuf = fbuf.view(np.uint32)
    window = np.empty(0, np.uint8)  # scratch buffers, grown as needed and reused
    sums = np.empty(0, np.float32)
    planes = np.empty(0, np.float32)
    acc = np.empty(3 * S, np.float32)
    q = np.empty(3 * S, np.uint8)
    wts = np.empty(0, np.float32)  # one output's taps: ceil(2·w/S) + 1, grown as needed
    starts = np.empty(0, np.int64)
    for i in range(slots.shape[0]):
        k = slots[i]
        x0, y0, x1, y1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        if k < 0 or x1 <= x0 or y1 <= y0:
            continue
        wx, wy, ww, wh = windows[i, 0], windows[i, 1], windows[i, 2], windows[i, 3]
        w = x1 - x0
        jx, ax, tx0, tx1 = _taps(x0, w, flips[i] != 0, S, ww)
        jy, ay, ty0, ty1 = _taps(y0, y1 - y0, False, S, wh)
        lo = jy.min()
        rows = jy.max() - lo + 1
        xa = wx + jx.min()
        cols = wx + jx.max() + 1 - xa
        H, W = shapes[k, 0], shapes[k, 1]
        if wts.size < max(jx.shape[1], jy.shape[1]):
            wts = np.empty(max(jx.shape[1], jy.shape[1]), np.float32)
            starts = np.empty(wts.size, np.int64)
        if sums.size < 3 * rows * w:
            sums = np.empty(3 * rows * w, np.float32)
            planes = np.empty(3 * rows * w, np.float32)
        if x_major and xa >= 0 and xa + cols <= W and wy + lo >= 0 and wy + lo + rows <= H:
            src, first, col = pixels, offsets[k] + 3 * (xa * H + wy + lo), 3 * H  # in place
        else:
            if window.size < 3 * rows * cols:
                window = np.empty(3 * rows * cols, np.uint8)
            _transpose_window(window, pixels, offsets[k], H, W, x_major, xa, wy + lo, cols, rows)
            src, first, col = window, 0, 3 * rows
        for xx in range(w):  # horizontal: every source row of output column xx at once
            n = tx1[xx] - tx0[xx]
            for t in range(n):
                wts[t] = ax[xx, tx0[xx] + t]
                starts[t] = first + (wx + jx[xx, tx0[xx] + t] - xa) * col
            _weighted_sum(sums, xx * 3 * rows, 3 * rows, wts, src, starts, n)
        _transpose_sums(planes, sums, w, rows)
        for yy in range(y1 - y0):  # vertical: every column and channel of output row yy at once
            n = ty1[yy] - ty0[yy]
            for t in range(n):
                wts[t] = ay[yy, ty0[yy] + t]
                starts[t] = (jy[yy, ty0[yy] + t] - lo) * 3 * w
            _weighted_sum(acc, 0, 3 * w, wts, planes, starts, n)
            _quantize(acc, q, 3 * w)
            y = y0 + yy
            for c in range(3):
                if d_cl:  # a strided row
                    o = ((i * S + y) * S + x0) * 3 + c
                    row = dst[o:o + 3 * w:3]
                else:
                    o = ((i * 3 + c) * S + y) * S + x0
                    row = dst[o:o + w]
                _store(row, q[c * w:(c + 1) * w], kind, normalize, mean[c], inv_std[c], fbuf,
                       ubuf)


def crop_paste_tensors(dst, source, slots, windows, boxes, flips, mean, inv_std) -> None:
    """Run the kernel on CPU tensors (arguments checked by crop_paste.crop_resize_paste_)."""
    raw = dst.view(_RAW[dst.dtype])
    d_cl = not dst.is_contiguous()
    dense = (raw.permute(0, 2, 3, 1) if d_cl else raw).numpy()
    if not dense.flags.c_contiguous:  # reshape would copy, and the kernel write to the copy
        raise ValueError("dst must be NCHW-contiguous or channels_last")
    as_np = lambda t: t.to(torch.int64).contiguous().numpy()  # noqa: E731
    _crop_paste(dense.reshape(-1), d_cl, dst.shape[-1], source.pixels.numpy(),
                bool(source.x_major), as_np(source.offsets), as_np(source.shapes), as_np(slots),
                as_np(windows), as_np(boxes), as_np(flips), _KIND[dst.dtype], mean is not None,
                np.asarray(mean or [0, 0, 0], np.float32),
                np.asarray(inv_std or [1, 1, 1], np.float32))
