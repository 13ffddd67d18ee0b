"""In-place box paste (CutMix/CMO) and resize-paste (ResizeMix/SMC; METHODS.md: CMO; SMC).

``paste_(dst, src, boxes, src_index)``: for each i, ``dst[i, :, y0:y1, x0:x1] = src[j, :, y0:y1,
x0:x1]`` with ``j = src_index[i]`` (default i): an exact copy of the stored bits.
``resize_paste_``: the whole ``src[j]`` is resized bilinearly (align_corners=False, no antialias,
the ``torch.nn.functional.interpolate`` rule) to the box size and written into the box of dst[i].

Exact resize definition (float32, every operation rounded on its own, no fused multiply-add),
for an output pixel (y, x) of an h x w box from an H x W source, and likewise along x:
    scale = f32(H) / f32(h);  r = max(scale * (f32(y) + 0.5) - 0.5, 0)
    y0 = trunc(r); y1 = min(y0 + 1, H - 1); ly1 = r - f32(y0); ly0 = 1 - ly1
    top = s[y0,x0] * lx0 + s[y0,x1] * lx1;  bot = s[y1,x0] * lx0 + s[y1,x1] * lx1
    v = top * ly0 + bot * ly1
This is torch's bilinear rule; torch's own CPU kernels differ from it (and from each other) by
about one float32 ulp, because they pick a separable, channels-last or generic kernel by layout,
size and thread count and contract some products into fmas, so only the ulp-level agreement with
``interpolate`` is tested. Stored as: float32 as is; float16/bfloat16 round-to-nearest-even; uint8
rint (half to even), clamped to [0, 255]. The torch reference below computes exactly this; the
numba kernels match it bit for bit. Only the bytes inside the boxes are written; empty boxes
write nothing.
"""

from __future__ import annotations

import torch

DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------- validation
def _layout(t: torch.Tensor) -> str | None:
    """"nchw" / "nhwc" for the two dense layouts the kernels take, else None."""
    if t.is_contiguous():
        return "nchw"
    if t.is_contiguous(memory_format=torch.channels_last):
        return "nhwc"
    return None


def _check_args(dst, src, boxes, src_index, validate: bool) -> None:
    for name, t in (("dst", dst), ("src", src)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, C, H, W]")
        if t.dtype not in DTYPES:
            raise ValueError(f"{name} dtype {t.dtype} not supported "
                             "(uint8/float16/bfloat16/float32)")
    if src.dtype != dst.dtype:
        raise ValueError(f"src dtype {src.dtype} differs from dst dtype {dst.dtype}")
    if src.device != dst.device:
        raise ValueError(f"src is on {src.device} but dst is on {dst.device}")
    if src.shape[1] != dst.shape[1]:
        raise ValueError(f"src has {src.shape[1]} channels, dst has {dst.shape[1]}")
    B = dst.shape[0]
    if not isinstance(boxes, torch.Tensor) or boxes.shape != (B, 4) or boxes.is_floating_point():
        raise ValueError(f"boxes must be an integer tensor [{B}, 4] (x0, y0, x1, y1)")
    if boxes.device != dst.device:
        raise ValueError(f"boxes is on {boxes.device} but dst is on {dst.device}")
    if src_index is None:
        if src.shape[0] != B:
            raise ValueError(f"src has {src.shape[0]} rows, dst {B}: pass src_index")
    else:
        if (not isinstance(src_index, torch.Tensor) or src_index.shape != (B,)
                or src_index.is_floating_point() or src_index.dtype == torch.bool):
            raise ValueError(f"src_index must be an integer tensor [{B}]")
        if src_index.device != dst.device:
            raise ValueError(f"src_index is on {src_index.device} but dst is on {dst.device}")
    if validate:  # one host sync on CUDA; pass validate=False for boxes from ltpipe.kernels.boxes
        _check_values(dst, src, boxes, src_index)


def _check_values(dst, src, boxes, src_index) -> None:
    H, W = dst.shape[2], dst.shape[3]
    if B := boxes.shape[0]:
        x0, y0, x1, y1 = boxes.long().unbind(1)
        bad = (x0 < 0) | (y0 < 0) | (x1 > W) | (y1 > H) | (x1 < x0) | (y1 < y0)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"boxes[{i}] = {boxes[i].tolist()} outside the {H}x{W} image "
                             "(need 0 <= x0 <= x1 <= W, 0 <= y0 <= y1 <= H)")
        if src_index is not None and bool(((src_index < 0) | (src_index >= src.shape[0])).any()):
            raise ValueError(f"src_index out of range [0, {src.shape[0]}) for {B} rows")


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


# ----------------------------------------------------------------------------- torch reference
def _store(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 -> storage dtype with the documented rounding."""
    if dtype == torch.uint8:
        return torch.round(values).clamp_(0, 255).to(torch.uint8)
    return values.to(dtype)


def _axis(in_size: int, out_size: int, device):
    """Source indices i0, i1 (int64 [out]) and weights l0, l1 (float32 [out]) along one axis."""
    f32 = torch.float32
    scale = torch.tensor(in_size, dtype=f32, device=device) / torch.tensor(out_size, dtype=f32,
                                                                          device=device)
    real = (scale * (torch.arange(out_size, dtype=f32, device=device) + 0.5) - 0.5).clamp_min(0)
    i0 = real.long()  # trunc == floor for real >= 0
    i1 = (i0 + 1).clamp_max(in_size - 1)
    l1 = real - i0.to(f32)
    return i0, i1, 1.0 - l1, l1


def bilinear_reference(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """img [C,H,W] -> float32 [C,h,w] by the exact rule in the module docstring."""
    x = img.to(torch.float32)
    y0, y1, ly0, ly1 = _axis(x.shape[1], h, x.device)
    x0, x1, lx0, lx1 = _axis(x.shape[2], w, x.device)
    rows0, rows1 = x.index_select(1, y0), x.index_select(1, y1)  # [C, h, W]
    top = rows0.index_select(2, x0) * lx0 + rows0.index_select(2, x1) * lx1  # [C, h, w]
    bot = rows1.index_select(2, x0) * lx0 + rows1.index_select(2, x1) * lx1
    return top * ly0[:, None] + bot * ly1[:, None]


def paste_reference(dst, src, boxes, src_index=None):
    """The definition of paste_: a loop of slice assignments (any device)."""
    _check_args(dst, src, boxes, src_index, validate=True)
    return _paste_cpu(dst, src, boxes, src_index)


def resize_paste_reference(dst, src, boxes, src_index=None):
    """The definition of resize_paste_: per sample, bilinear_reference into the box (any device)."""
    _check_args(dst, src, boxes, src_index, validate=True)
    return _resize_paste_cpu(dst, src, boxes, src_index)


# ----------------------------------------------------------------------------- public dispatch
def _prepare(dst, src, boxes, src_index, validate):
    _check_args(dst, src, boxes, src_index, validate)
    if _same_memory(dst, src):  # in-batch mixing: read from a snapshot, not half-written rows
        src = src.clone()
    return src


def paste_(dst: torch.Tensor, src: torch.Tensor, boxes: torch.Tensor,
           src_index: torch.Tensor | None = None, *, validate: bool = True) -> torch.Tensor:
    """dst[i, :, y0:y1, x0:x1] = src[src_index[i], :, y0:y1, x0:x1] in place; returns dst.

    dst [B,C,H,W], src [Bs,C,H,W]: uint8/float16/bfloat16/float32, NCHW or channels_last;
    boxes int [B,4] (x0,y0,x1,y1) half-open; src_index int [B] (default: row i from src[i]).
    CUDA tensors run a numba kernel on torch's current stream; elsewhere the torch reference.
    ``validate`` checks box/index ranges (a host sync on CUDA).
    """
    src = _prepare(dst, src, boxes, src_index, validate)
    if src.shape[2:] != dst.shape[2:]:
        raise ValueError(f"src images {tuple(src.shape[2:])} differ from dst "
                         f"{tuple(dst.shape[2:])}")
    if dst.is_cuda and _layout(dst) and _layout(src):
        from ltpipe.kernels import paste_cuda

        paste_cuda.paste_tensors(dst, src, boxes, src_index)
        return dst
    return _paste_cpu(dst, src, boxes, src_index)


def resize_paste_(dst: torch.Tensor, src: torch.Tensor, boxes: torch.Tensor,
                  src_index: torch.Tensor | None = None, *, validate: bool = True) -> torch.Tensor:
    """The whole src[src_index[i]] resized (module docstring rule) into dst[i]'s box; returns dst.

    src may have another image size than dst. Same dtypes and layouts as paste_; CUDA tensors run
    the numba.cuda kernel, CPU tensors a numba njit kernel (paste_cpu.py), others the reference.
    """
    src = _prepare(dst, src, boxes, src_index, validate)
    if dst.is_cuda and _layout(dst) and _layout(src):
        from ltpipe.kernels import paste_cuda

        paste_cuda.resize_paste_tensors(dst, src, boxes, src_index)
        return dst
    if dst.device.type == "cpu" and _layout(dst) and _layout(src):
        from ltpipe.kernels import paste_cpu  # njit: measured faster than the reference on CPU

        paste_cpu.resize_paste_tensors(dst, src, boxes, src_index)
        return dst
    return _resize_paste_cpu(dst, src, boxes, src_index)


def _paste_cpu(dst, src, boxes, src_index):
    # A loop of slice copies: measured faster on the CPU than torch.where (bench/kernels.py).
    rows = src_index.tolist() if src_index is not None else range(dst.shape[0])
    for i, (j, (x0, y0, x1, y1)) in enumerate(zip(rows, boxes.tolist())):
        dst[i, :, y0:y1, x0:x1] = src[j, :, y0:y1, x0:x1]
    return dst


def _resize_paste_cpu(dst, src, boxes, src_index):
    rows = src_index.tolist() if src_index is not None else range(dst.shape[0])
    for i, (j, (x0, y0, x1, y1)) in enumerate(zip(rows, boxes.tolist())):
        if x1 > x0 and y1 > y0:
            dst[i, :, y0:y1, x0:x1] = _store(bilinear_reference(src[j], y1 - y0, x1 - x0),
                                             dst.dtype)
    return dst
