"""numba ``njit`` resize-paste for CPU tensors (definition and torch reference: paste.py).

Same rule and rounding as the torch reference and the CUDA kernel: float32 operations rounded on
their own (numba does not contract into fmas without fastmath), float16/bfloat16 decoded through
an exact 65536-entry table and encoded with ``halfbits``. Per sample the source rows/columns and
weights are computed once, then the box is filled in memory order. Compiled on first use and
cached on disk (numba's cache=True), so later processes skip the 5 s compile.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from ltpipe.kernels import halfbits

KIND_U8, KIND_F16, KIND_BF16, KIND_F32 = 0, 1, 2, 3
_KIND = {torch.uint8: KIND_U8, torch.float16: KIND_F16, torch.bfloat16: KIND_BF16,
         torch.float32: KIND_F32}
_RAW = {torch.uint8: torch.uint8, torch.float16: torch.int16, torch.bfloat16: torch.int16,
        torch.float32: torch.float32}
_tables: dict[torch.dtype, np.ndarray] = {}

_f2h = njit(cache=True)(halfbits.float_to_half_bits)
_f2b = njit(cache=True)(halfbits.float_to_bfloat_bits)


def _decode_table(dtype: torch.dtype) -> np.ndarray:
    """float32 value of every 16-bit pattern (a dummy for uint8/float32)."""
    if dtype not in _tables:
        if dtype in (torch.float16, torch.bfloat16):
            bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
            table = torch.empty(65536, dtype=torch.float32)
            table[bits.to(torch.int64) & 0xFFFF] = bits.view(dtype).float()
            _tables[dtype] = table.numpy()
        else:
            _tables[dtype] = np.zeros(1, np.float32)
    return _tables[dtype]


@njit(cache=True)
def _axis(in_size, out_size):
    """Source indices and weights along one axis, float32 step by step (paste._axis)."""
    i0 = np.empty(out_size, np.int64)
    i1 = np.empty(out_size, np.int64)
    l0 = np.empty(out_size, np.float32)
    l1 = np.empty(out_size, np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    half = np.float32(0.5)
    for d in range(out_size):
        r = max(scale * (np.float32(d) + half) - half, np.float32(0.0))
        i0[d] = np.int64(r)
        l1[d] = r - np.float32(i0[d])
        l0[d] = np.float32(1.0) - l1[d]
        i1[d] = min(i0[d] + 1, in_size - 1)
    return i0, i1, l0, l1


@njit(cache=True)
def _value(src, j, c, y, x, cl, kind, table):
    v = src[j, y, x, c] if cl else src[j, c, y, x]
    if kind == KIND_F16 or kind == KIND_BF16:
        return table[np.int64(v) & 0xFFFF]
    return np.float32(v)


@njit(cache=True)
def store_value(v, kind, fbuf, ubuf):
    """v as the destination's raw storage holds it: float16 / bfloat16 as their bit pattern (a
    signed int16, exact in float32; fbuf / ubuf: one float32 and its uint32 view), else v."""
    if kind == KIND_F16 or kind == KIND_BF16:
        fbuf[0] = v
        f = np.int64(ubuf[0])
        b = _f2h(f) if kind == KIND_F16 else _f2b(f)
        return np.float32(b - 65536 if b >= 32768 else b)  # signed int16 pattern
    return v


@njit(cache=True)
def _encode(v, kind, fbuf, ubuf):
    if kind == KIND_U8:
        return np.float32(np.rint(min(max(v, np.float32(0.0)), np.float32(255.0))))
    return store_value(v, kind, fbuf, ubuf)


@njit(cache=True)
def _resize_paste(dst, src, boxes, src_index, use_index, d_cl, s_cl, kind, table):
    C = dst.shape[3] if d_cl else dst.shape[1]
    H = dst.shape[1] if d_cl else dst.shape[2]
    W = dst.shape[2] if d_cl else dst.shape[3]
    Hs = src.shape[1] if s_cl else src.shape[2]
    Ws = src.shape[2] if s_cl else src.shape[3]
    fbuf = np.empty(1, np.float32)
    ubuf = fbuf.view(np.uint32)
    for i in range(dst.shape[0]):
        x0, y0 = min(max(boxes[i, 0], 0), W), min(max(boxes[i, 1], 0), H)
        w, h = min(max(boxes[i, 2], x0), W) - x0, min(max(boxes[i, 3], y0), H) - y0
        if w == 0 or h == 0:
            continue
        j = src_index[i] if use_index else i
        ya, yb, ly0, ly1 = _axis(Hs, h)
        xa, xb, lx0, lx1 = _axis(Ws, w)
        for c in range(C):
            for yy in range(h):
                for xx in range(w):
                    top = (_value(src, j, c, ya[yy], xa[xx], s_cl, kind, table) * lx0[xx]
                           + _value(src, j, c, ya[yy], xb[xx], s_cl, kind, table) * lx1[xx])
                    bot = (_value(src, j, c, yb[yy], xa[xx], s_cl, kind, table) * lx0[xx]
                           + _value(src, j, c, yb[yy], xb[xx], s_cl, kind, table) * lx1[xx])
                    out = _encode(top * ly0[yy] + bot * ly1[yy], kind, fbuf, ubuf)
                    if d_cl:
                        dst[i, y0 + yy, x0 + xx, c] = out
                    else:
                        dst[i, c, y0 + yy, x0 + xx] = out


def _physical(t: torch.Tensor):
    """numpy view in memory order ([B,C,H,W] or [B,H,W,C]) of the raw storage, and the flag."""
    raw = t.view(_RAW[t.dtype])
    if t.is_contiguous():
        return raw.numpy(), False
    return raw.permute(0, 2, 3, 1).numpy(), True


def resize_paste_tensors(dst, src, boxes, src_index=None) -> None:
    """Resize-paste on CPU tensors in NCHW or channels_last layout (validated by paste.py)."""
    d, d_cl = _physical(dst)
    s, s_cl = _physical(src)
    bx = boxes.to(torch.int64).contiguous().numpy()
    idx = (src_index.to(torch.int64).contiguous().numpy() if src_index is not None
           else np.zeros(1, np.int64))
    _resize_paste(d, s, bx, idx, src_index is not None, d_cl, s_cl, _KIND[dst.dtype],
                  _decode_table(dst.dtype))
