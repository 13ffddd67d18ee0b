"""numba.cuda kernels for paste_ and resize_paste_ (definitions and torch reference: paste.py).

Grid (blocks_per_sample, B): the blocks of sample i cover its box only, in memory order (x
fastest for NCHW, c fastest for channels_last), so loads and stores are coalesced and bytes
outside the boxes are never touched. paste walks box rows (a contiguous run per row, no division
per element); resize_paste strides over the flattened box. paste copies raw bits (uint8/int16/int32
views); resize_paste decodes to float32, evaluates the bilinear rule with separately rounded
operations (no fma contraction) and encodes with the reference's rounding. Boxes are clipped to
the image inside the kernel, so even unvalidated boxes cannot write out of bounds.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import cuda

from ltpipe.kernels import halfbits
from ltpipe.kernels import numba_bridge as nb

THREADS = nb.SIM_THREADS if nb.SIMULATOR else 256
MAX_BLOCKS_PER_SAMPLE = 2 if nb.SIMULATOR else 64
PASTE_THREADS = nb.SIM_THREADS if nb.SIMULATOR else 128  # a box row is ~100-700 elements
KIND_U8, KIND_F16, KIND_BF16 = nb.KIND_U8, nb.KIND_F16, nb.KIND_BF16

_half_to_float = cuda.jit(device=True)(halfbits.half_to_float_bits)
_float_to_half = cuda.jit(device=True)(halfbits.float_to_half_bits)
_float_to_bfloat = cuda.jit(device=True)(halfbits.float_to_bfloat_bits)


@cuda.jit(device=True)
def _clipped_box(boxes, i, H, W):
    x0 = min(max(boxes[i, 0], 0), W)
    y0 = min(max(boxes[i, 1], 0), H)
    x1 = min(max(boxes[i, 2], x0), W)
    y1 = min(max(boxes[i, 3], y0), H)
    return x0, y0, x1 - x0, y1 - y0


@cuda.jit(device=True)
def _unflatten(k, C, h, w, channels_last):
    """Flat index in the box -> (c, yy, xx) in memory order of the layout."""
    k, C, h, w = np.int32(k), np.int32(C), np.int32(h), np.int32(w)  # 32-bit division is cheaper
    if channels_last:
        c = k % C
        t = k // C
        return c, t // w, t % w
    xx = k % w
    t = k // w
    return t // h, t % h, xx


@cuda.jit(device=True)
def _dims(arr, channels_last):
    """(C, H, W) of an image array in physical order ([B,C,H,W] or [B,H,W,C])."""
    if channels_last:
        return arr.shape[3], arr.shape[1], arr.shape[2]
    return arr.shape[1], arr.shape[2], arr.shape[3]


@cuda.jit
def _paste_kernel(dst, src, boxes, src_index, use_index, planes, H, W, cs):
    """dst, src: [B, planes*H, W*cs] rows in memory order (NCHW: planes=C, cs=1; NHWC: planes=1,
    cs=C). The box is planes*h row segments of w*cs contiguous elements; a block per row."""
    i = cuda.blockIdx.y
    x0, y0, w, h = _clipped_box(boxes, i, H, W)
    j = src_index[i] if use_index else i
    first, length = x0 * cs, w * cs
    for r in range(cuda.blockIdx.x, planes * h, cuda.gridDim.x):  # empty box: no iterations
        plane = r // h
        row = plane * H + y0 + (r - plane * h)
        for e in range(first + cuda.threadIdx.x, first + length, cuda.blockDim.x):
            dst[i, row, e] = src[j, row, e]


@cuda.jit(device=True)
def _load(src, j, c, y, x, kind, channels_last):
    """src element -> float32 (float16/bfloat16 arrive as int16 bit patterns)."""
    v = src[j, y, x, c] if channels_last else src[j, c, y, x]
    if kind == KIND_F16:
        return nb.bits_to_f32(_half_to_float(np.int64(v) & 0xFFFF))
    if kind == KIND_BF16:
        return nb.bits_to_f32((np.int64(v) & 0xFFFF) << 16)
    return np.float32(v)


@cuda.jit(device=True)
def _encode(v, kind):
    """float32 -> the stored value with the reference's rounding (16-bit floats as int16 bits)."""
    if kind == KIND_U8:
        return nb.rint(min(max(v, np.float32(0.0)), np.float32(255.0)))
    if kind == KIND_F16 or kind == KIND_BF16:
        fbits = np.int64(nb.f32_to_bits(v)) & 0xFFFFFFFF
        b = _float_to_half(fbits) if kind == KIND_F16 else _float_to_bfloat(fbits)
        return np.float32(b - 65536 if b >= 32768 else b)  # as signed int16, exact in float32
    return v


@cuda.jit(device=True)
def _store(dst, i, c, y, x, v, kind, channels_last):
    if channels_last:
        dst[i, y, x, c] = _encode(v, kind)
    else:
        dst[i, c, y, x] = _encode(v, kind)


@cuda.jit(device=True)
def _source(d, scale, in_size):
    """Output index d -> (i0, i1, l0, l1) along one axis (paste.py _axis)."""
    half = np.float32(0.5)
    r = max(nb.sub_rn(nb.mul_rn(scale, nb.add_rn(np.float32(d), half)), half), np.float32(0.0))
    i0 = np.int64(r)
    l1 = nb.sub_rn(r, np.float32(i0))
    return i0, min(i0 + 1, in_size - 1), nb.sub_rn(np.float32(1.0), l1), l1


@cuda.jit(device=True)
def _lerp(a, b, wa, wb):
    return nb.add_rn(nb.mul_rn(a, wa), nb.mul_rn(b, wb))


@cuda.jit
def _resize_kernel(dst, src, boxes, src_index, use_index, channels_last, src_channels_last,
                   kind):
    i = cuda.blockIdx.y
    C, H, W = _dims(dst, channels_last)
    _, Hs, Ws = _dims(src, src_channels_last)
    x0, y0, w, h = _clipped_box(boxes, i, H, W)
    j = src_index[i] if use_index else i
    total = C * h * w
    if total == 0:
        return
    sy = nb.div_rn(np.float32(Hs), np.float32(h))
    sx = nb.div_rn(np.float32(Ws), np.float32(w))
    for k in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, total,
                   cuda.gridDim.x * cuda.blockDim.x):
        c, yy, xx = _unflatten(k, C, h, w, channels_last)
        ya, yb, ly0, ly1 = _source(yy, sy, Hs)
        xa, xb, lx0, lx1 = _source(xx, sx, Ws)
        cl = src_channels_last
        top = _lerp(_load(src, j, c, ya, xa, kind, cl), _load(src, j, c, ya, xb, kind, cl),
                    lx0, lx1)
        bot = _lerp(_load(src, j, c, yb, xa, kind, cl), _load(src, j, c, yb, xb, kind, cl),
                    lx0, lx1)
        _store(dst, i, c, y0 + yy, x0 + xx, _lerp(top, bot, ly0, ly1), kind, channels_last)


# ----------------------------------------------------------------------------- tensor entry points
def _grid(dst: torch.Tensor) -> tuple[int, int]:
    per_sample = dst.shape[1] * dst.shape[2] * dst.shape[3]  # upper bound of a box
    blocks = min(max(1, math.ceil(per_sample / (THREADS * 8))), MAX_BLOCKS_PER_SAMPLE)
    return blocks, dst.shape[0]


def _physical(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Dense view in memory order: NCHW as is, channels_last as [B,H,W,C]; flag = channels_last."""
    if t.is_contiguous():
        return t, False
    return t.permute(0, 2, 3, 1), True  # contiguous for channels_last (checked by the caller)


def _common(dst, src, boxes, src_index):
    boxes = boxes.contiguous()
    if src_index is None:
        idx, use_index = nb.device_array(boxes.view(-1)), 0  # placeholder, never read
    else:
        idx, use_index = nb.device_array(src_index.contiguous()), 1
    (d, d_cl), (s, s_cl) = _physical(dst), _physical(src)
    return d, d_cl, s, s_cl, nb.device_array(boxes), idx, use_index, nb.torch_stream(dst)


def paste_tensors(dst, src, boxes, src_index=None) -> None:
    """Launch the paste kernel on torch's current stream (args validated by paste.paste_).

    CUDA tensors zero-copy; CPU tensors go through numpy (the simulator in tests)."""
    if dst.shape[0] == 0:
        return
    B, C, H, W = dst.shape
    if dst.is_contiguous() != src.is_contiguous():  # a raw copy walks both in one memory order
        src = src.contiguous(memory_format=torch.contiguous_format if dst.is_contiguous()
                             else torch.channels_last)
    with nb.on_device(dst):
        d, d_cl, s, _, bx, idx, use_index, stream = _common(dst, src, boxes, src_index)
        planes, cs = (1, C) if d_cl else (C, 1)
        rows = lambda t: t.reshape(t.shape[0], planes * H, W * cs)  # noqa: E731  [B, R, L]
        blocks = min(planes * H, MAX_BLOCKS_PER_SAMPLE)
        _paste_kernel[(blocks, B), PASTE_THREADS, stream](
            nb.bits_array(rows(d)), nb.bits_array(rows(s)), bx, idx, use_index, planes, H, W, cs)


def resize_paste_tensors(dst, src, boxes, src_index=None) -> None:
    """Launch the resize-paste kernel on torch's current stream (see paste_tensors)."""
    if dst.shape[0] == 0:
        return
    with nb.on_device(dst):
        d, d_cl, s, s_cl, bx, idx, use_index, stream = _common(dst, src, boxes, src_index)
        _resize_kernel[_grid(dst), THREADS, stream](
            nb.value_array(d), nb.value_array(s), bx, idx, use_index, d_cl, s_cl,
            nb.kind(dst.dtype))
