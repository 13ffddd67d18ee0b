"""numba.cuda kernel for crop_resize_paste_ (definition and torch reference: crop_paste.py).

Grid (blocks_per_sample, B): the threads of sample i stride over its box's elements in memory
order (x fastest for NCHW, c fastest for channels_last), so stores are coalesced and only the box
is written. Each thread computes its output pixel's taps on the fly (two passes per axis: the
weights' sum, then the normalised weights, the same values the reference normalises) and the
two nested tap sums with separately rounded operations (``*_rn``: no fma contraction), so the
result equals the reference bit for bit. The source images are read where they are: device
memory, or pinned host memory through its device mapping (unified addressing) when the device
had no room for them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import cuda

from ltpipe.kernels import halfbits
from ltpipe.kernels import numba_bridge as nb
from ltpipe.kernels.paste_cuda import _dims, _unflatten

THREADS = nb.SIM_THREADS if nb.SIMULATOR else 256
MAX_BLOCKS_PER_SAMPLE = 2 if nb.SIMULATOR else 64
KIND_U8, KIND_F16, KIND_BF16 = nb.KIND_U8, nb.KIND_F16, nb.KIND_BF16

_params: dict = {}  # (device, mean, inv_std) -> float32 [2, 3] on the device, copied once
_float_to_half = cuda.jit(device=True)(halfbits.float_to_half_bits)
_float_to_bfloat = cuda.jit(device=True)(halfbits.float_to_bfloat_bits)


@cuda.jit(device=True)
def _axis(o, size, extent):
    """(s, r, c, first tap j0, tap count) of output position o (crop_paste.py)."""
    s = nb.div_rn(np.float32(extent), np.float32(size))
    r = s if s > np.float32(1.0) else np.float32(1.0)
    c = nb.sub_rn(nb.mul_rn(nb.add_rn(np.float32(o), np.float32(0.5)), s), np.float32(0.5))
    j0 = np.int64(math.ceil(nb.sub_rn(c, r)))
    taps = np.int64(math.ceil(nb.add_rn(r, r))) + 1
    return r, c, j0, taps


@cuda.jit(device=True)
def _weight(j, c, r):
    a = nb.sub_rn(np.float32(1.0), nb.div_rn(abs(nb.sub_rn(np.float32(j), c)), r))
    return a if a > np.float32(0.0) else np.float32(0.0)


@cuda.jit(device=True)
def _total(j0, taps, c, r):
    total = _weight(j0, c, r)
    for t in range(1, taps):
        total = nb.add_rn(total, _weight(j0 + t, c, r))
    return total


@cuda.jit(device=True)
def _encode(u, c, kind, normalize, mean, inv_std):
    v = u
    if normalize and kind != KIND_U8:
        v = nb.mul_rn(nb.sub_rn(u, mean[c]), inv_std[c])
    if kind == KIND_F16 or kind == KIND_BF16:
        fbits = np.int64(nb.f32_to_bits(v)) & 0xFFFFFFFF
        b = _float_to_half(fbits) if kind == KIND_F16 else _float_to_bfloat(fbits)
        return np.float32(b - 65536 if b >= 32768 else b)  # as signed int16, exact in float32
    return v


@cuda.jit
def _crop_paste_kernel(dst, channels_last, pixels, offsets, shapes, slots, windows, boxes, flips,
                       kind, normalize, mean, inv_std):
    i = cuda.blockIdx.y
    k = slots[i]
    C, S, _ = _dims(dst, channels_last)
    x0, y0 = boxes[i, 0], boxes[i, 1]
    w, h = boxes[i, 2] - x0, boxes[i, 3] - y0
    if k < 0 or w <= 0 or h <= 0:
        return
    wx, wy, ww, wh = windows[i, 0], windows[i, 1], windows[i, 2], windows[i, 3]
    H, W, base = shapes[k, 0], shapes[k, 1], offsets[k]
    for e in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, C * h * w,
                   cuda.gridDim.x * cuda.blockDim.x):
        c, yy, xx = _unflatten(e, C, h, w, channels_last)
        ox = x0 + xx
        if flips[i] != 0:
            ox = S - 1 - ox
        rx, cx, jx0, tx_n = _axis(ox, S, ww)
        ry, cy, jy0, ty_n = _axis(y0 + yy, S, wh)
        sum_x, sum_y = _total(jx0, tx_n, cx, rx), _total(jy0, ty_n, cy, ry)
        v = np.float32(0.0)
        for ty in range(ty_n):
            wgt_y = nb.div_rn(_weight(jy0 + ty, cy, ry), sum_y)
            sy = wy + min(max(jy0 + ty, 0), wh - 1)
            hsum = np.float32(0.0)
            for tx in range(tx_n):
                wgt_x = nb.div_rn(_weight(jx0 + tx, cx, rx), sum_x)
                sx = wx + min(max(jx0 + tx, 0), ww - 1)
                px = np.float32(0.0)
                if 0 <= sy < H and 0 <= sx < W:
                    px = np.float32(pixels[base + (sy * W + sx) * 3 + c])
                hsum = nb.add_rn(hsum, nb.mul_rn(wgt_x, px))
            v = nb.add_rn(v, nb.mul_rn(wgt_y, hsum))
        u = np.float32(math.floor(nb.add_rn(v, np.float32(0.5))))
        u = min(max(u, np.float32(0.0)), np.float32(255.0))
        out = _encode(u, c, kind, normalize, mean, inv_std)
        if channels_last:
            dst[i, y0 + yy, x0 + xx, c] = out
        else:
            dst[i, c, y0 + yy, x0 + xx] = out


def _source_array(pixels: torch.Tensor):
    """numba view of the packed source images: device memory as is; pinned host memory through
    its device mapping (the same address under unified addressing); numpy in the simulator."""
    if pixels.is_cuda or not pixels.is_pinned() or nb.SIMULATOR:
        return nb.device_array(pixels)
    desc = {"shape": (pixels.numel(),), "typestr": "|u1", "data": (pixels.data_ptr(), True),
            "version": 3, "strides": None, "stream": None}
    return cuda.from_cuda_array_interface(desc, owner=pixels, sync=False)


def crop_paste_tensors(dst, source, slots, windows, boxes, flips, mean, inv_std) -> None:
    """Launch on torch's current stream (arguments checked by crop_paste.crop_resize_paste_)."""
    if source.x_major:
        raise ValueError("source: x-major images are for the CPU kernel (this one reads HWC)")
    B = dst.shape[0]
    if B == 0:
        return
    channels_last = not dst.is_contiguous()
    d = dst.permute(0, 2, 3, 1) if channels_last else dst
    small = lambda t: nb.device_array(t.to(torch.int32).contiguous())  # noqa: E731
    key = (str(dst.device), tuple(mean or ()), tuple(inv_std or ()))
    if key not in _params:  # one copy per setting: a pageable copy each step would sync
        _params[key] = torch.tensor([mean or [0.0] * 3, inv_std or [1.0] * 3],
                                    dtype=torch.float32).to(dst.device)
    params = _params[key]
    per_sample = 3 * dst.shape[2] * dst.shape[3]
    blocks = min(max(1, math.ceil(per_sample / (THREADS * 8))), MAX_BLOCKS_PER_SAMPLE)
    with nb.on_device(dst):
        _crop_paste_kernel[(blocks, B), THREADS, nb.torch_stream(dst)](
            nb.value_array(d), channels_last, _source_array(source.pixels),
            nb.device_array(source.offsets.to(torch.int64).contiguous()),
            small(source.shapes), small(slots), small(windows), small(boxes), small(flips),
            nb.kind(dst.dtype), mean is not None, nb.device_array(params[0]),
            nb.device_array(params[1]))
