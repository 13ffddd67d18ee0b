"""Crop-resize-paste from decoded source images (Q's decoded cache, pipeline/q_cache.py).

``crop_resize_paste_(dst, source, slots, windows, boxes, flips, mean=, inv_std=)``: for every
row i with ``slots[i] >= 0`` and a non-empty box (x0, y0, x1, y1), the S x S random-resized crop
of source image ``slots[i]`` at ``windows[i]`` = (x, y, w, h) (source pixels), flipped when
``flips[i]``, is computed for the pixels of the box only and written there into ``dst[i]``
(S = dst's side): what decoding the window, resizing it to S x S, flipping it and pasting the box
would give, without the rest of the crop. The source images are uint8 HWC, packed one after the
other in ``source.pixels`` (``SourceImages``).

Exact definition (float32, every operation rounded on its own, no fused multiply-add). For the
output column X of the box (flipped: X' = S − 1 − X, else X' = X), along x and likewise along y:
    s = f32(w) / f32(S);  c = (f32(X') + 0.5) · s − 0.5;  r = max(s, 1)
    taps j = ceil(c − r) + t, t = 0 .. ceil(2r):  a_j = max(1 − |f32(j) − c| / r, 0),
    weights a_j / Σ_t a_j (summed in t order); source column x + clamp(j, 0, w − 1)
    (a source pixel outside the image reads 0: the "cifar" window may leave the image)
    v = Σ_ty wy · (Σ_tx wx · src), both sums in tap order;  u = clamp(floor(v + 0.5), 0, 255)
    stored: uint8 u; float dtypes (u − mean_c) · inv_std_c, float16/bfloat16 rounded to nearest
    even (or u itself when ``mean`` is None).
This is DALI's resize with INTERP_LINEAR (antialias on: a triangle filter of radius s when the
window is larger than S, bilinear when smaller; edge pixels repeated at the window's border),
rounded to uint8, then crop_mirror_normalize: the filter, sample positions and border rule of the
loader's own decode, so a cached tile equals DALI's tile of the same window within float
rounding (tests/test_q_cache.py: at most one uint8 level). The torch reference below computes
exactly this; the numba kernels (CPU njit: crop_paste_cpu.py, CUDA: crop_paste_cuda.py) match it
bit for bit. Only the boxes' pixels are written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ltpipe.kernels.paste import DTYPES, _layout


@dataclass(frozen=True)
class SourceImages:
    """Decoded images packed one after the other: image k is ``pixels[offsets[k] : offsets[k] +
    h_k·w_k·3]`` viewed as [h_k, w_k, 3] (HWC, uint8), with ``shapes[k]`` = (h_k, w_k); or, when
    ``x_major``, as [w_k, h_k, 3] (column by column: the CPU kernel's horizontal pass then reads
    each source column as one contiguous run; CPU only)."""

    pixels: torch.Tensor  # uint8 [total]
    offsets: torch.Tensor  # int64 [n]
    shapes: torch.Tensor  # int32 [n, 2] (h, w)
    x_major: bool = False

    @classmethod
    def pack(cls, images, x_major: bool = False) -> "SourceImages":
        """Pack uint8 [h, w, 3] images (a list, or one [n, h, w, 3] tensor) one after the other,
        HWC or ``x_major``, on their device (``image(k)`` gives image k back)."""
        stored = [im.permute(1, 0, 2) if x_major else im for im in images]
        device = stored[0].device
        sizes = torch.tensor([im.numel() for im in stored], dtype=torch.int64)
        offsets = torch.cumsum(sizes, 0) - sizes
        shapes = torch.tensor([list(im.shape[:2]) for im in images], dtype=torch.int32)
        return cls(torch.cat([im.reshape(-1) for im in stored]), offsets.to(device),
                   shapes.to(device), x_major)

    def image(self, k: int) -> torch.Tensor:
        """Image k as [h, w, 3] (a view)."""
        h, w = self.shapes[k].tolist()
        o = int(self.offsets[k])
        flat = self.pixels[o:o + h * w * 3]
        return flat.view(w, h, 3).permute(1, 0, 2) if self.x_major else flat.view(h, w, 3)


def _check(dst, source, slots, windows, boxes, flips, mean, inv_std) -> None:
    if not isinstance(dst, torch.Tensor) or dst.ndim != 4 or dst.dtype not in DTYPES:
        raise ValueError("dst must be a 4-D uint8/float16/bfloat16/float32 tensor [B, 3, S, S]")
    B, C, H, W = dst.shape
    if C != 3 or H != W:
        raise ValueError(f"dst must be [B, 3, S, S], got {list(dst.shape)}")
    if source.pixels.dtype != torch.uint8 or source.pixels.ndim != 1:
        raise ValueError("source.pixels must be a flat uint8 tensor")
    if source.x_major and dst.is_cuda:
        raise ValueError("source: x-major images are for a CPU dst (the CUDA kernel reads HWC)")
    for name, t, shape in (("slots", slots, (B,)), ("windows", windows, (B, 4)),
                           ("boxes", boxes, (B, 4)), ("flips", flips, (B,))):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape or t.is_floating_point():
            raise ValueError(f"{name} must be an integer tensor {list(shape)}")
        if t.device != dst.device:
            raise ValueError(f"{name} is on {t.device} but dst is on {dst.device}")
    if (mean is None) != (inv_std is None) or (mean is not None and dst.dtype == torch.uint8):
        raise ValueError("mean and inv_std: both or neither, and only for a float dst")


def _cpu_floats(values) -> list[float] | None:
    """mean / inv_std as float32 values (each rounded once, on the host)."""
    if values is None:
        return None
    return torch.as_tensor(values, dtype=torch.float32).tolist()


# ----------------------------------------------------------------------------- torch reference
def _taps(outputs: torch.Tensor, size: int, extent: int):
    """Source indices (int64 [n, T], clamped to [0, extent − 1]) and float32 weights [n, T] of
    the output positions ``outputs`` (int64 [n]) of an ``extent``-pixel window resized to
    ``size`` (the module docstring's rule)."""
    f32 = torch.float32
    s = torch.tensor(extent, dtype=f32) / torch.tensor(size, dtype=f32)
    r = torch.maximum(s, torch.tensor(1.0, dtype=f32))
    c = (outputs.to(f32) + 0.5) * s - 0.5
    j0 = torch.ceil(c - r).to(torch.int64)
    taps = int(math.ceil(2 * float(r))) + 1
    j = j0[:, None] + torch.arange(taps)[None, :]  # [n, T]
    a = torch.clamp(1.0 - torch.abs(j.to(f32) - c[:, None]) / r, min=0.0)
    total = a[:, 0].clone()
    for t in range(1, taps):  # in tap order, each addition rounded
        total = total + a[:, t]
    return j.clamp(0, extent - 1), a / total[:, None]


def _crop_box(img: torch.Tensor, window, box, flip: bool, size: int) -> torch.Tensor:
    """float32 [3, h, w]: the rounded uint8 values u of one box (module docstring)."""
    wx, wy, ww, wh = window
    x0, y0, x1, y1 = box
    cols = torch.arange(x0, x1)
    cols = size - 1 - cols if flip else cols
    jx, ax = _taps(cols, size, ww)  # [w, Tx]
    jy, ay = _taps(torch.arange(y0, y1), size, wh)  # [h, Ty]
    H, W = img.shape[:2]
    padded = torch.zeros(H + 2, W + 2, 3, dtype=torch.float32)  # reads outside the image: 0
    padded[1:-1, 1:-1] = img.to(torch.float32)
    gy = (jy + wy).clamp(-1, H) + 1  # image rows, or the zero border
    gx = (jx + wx).clamp(-1, W) + 1
    v = torch.zeros(y1 - y0, x1 - x0, 3)
    for ty in range(jy.shape[1]):
        rows = padded[gy[:, ty]]  # [h, W+2, 3]
        h = torch.zeros_like(v)
        for tx in range(jx.shape[1]):
            h = h + ax[None, :, tx, None] * rows[:, gx[:, tx]]
        v = v + ay[:, ty, None, None] * h
    return torch.floor(v + 0.5).clamp(0, 255).permute(2, 0, 1)


def crop_resize_paste_reference(dst, source: SourceImages, slots, windows, boxes, flips, *,
                                mean=None, inv_std=None):
    """The definition of crop_resize_paste_ (any device; a loop over rows)."""
    _check(dst, source, slots, windows, boxes, flips, mean, inv_std)
    mean, inv_std = _cpu_floats(mean), _cpu_floats(inv_std)
    size = dst.shape[-1]
    for i, (k, window, box, flip) in enumerate(zip(slots.tolist(), windows.tolist(),
                                                   boxes.tolist(), flips.tolist())):
        x0, y0, x1, y1 = box
        if k < 0 or x1 <= x0 or y1 <= y0:
            continue
        u = _crop_box(source.image(k).cpu(), window, box, bool(flip), size)
        if mean is not None:
            u = (u - torch.tensor(mean)[:, None, None]) * torch.tensor(inv_std)[:, None, None]
        dst[i, :, y0:y1, x0:x1] = u.to(dst.dtype).to(dst.device)
    return dst


# ----------------------------------------------------------------------------- public dispatch
def crop_resize_paste_(dst: torch.Tensor, source: SourceImages, slots: torch.Tensor,
                       windows: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, *,
                       mean=None, inv_std=None) -> torch.Tensor:
    """Paste each row's box of its cached source's S x S crop into dst in place; returns dst.

    dst [B,3,S,S] (NCHW or channels_last; uint8/float16/bfloat16/float32); source: uint8 images
    (on dst's device, or in pinned host memory for a CUDA dst); slots int [B] (−1: skip the
    row), windows int [B,4] (x, y, w, h), boxes int [B,4] (x0, y0, x1, y1) within S x S, flips
    int/bool [B]; mean / inv_std: 3 floats (0..255 scale) for a float dst, or None. Boxes and
    windows are the loader's (valid by construction): not checked. CUDA runs the numba kernel on
    torch's current stream, CPU the numba njit kernel.
    """
    _check(dst, source, slots, windows, boxes, flips, mean, inv_std)
    if dst.is_cuda and _layout(dst):
        from ltpipe.kernels import crop_paste_cuda

        crop_paste_cuda.crop_paste_tensors(dst, source, slots, windows, boxes, flips,
                                           _cpu_floats(mean), _cpu_floats(inv_std))
        return dst
    if dst.device.type == "cpu" and _layout(dst):
        from ltpipe.kernels import crop_paste_cpu

        crop_paste_cpu.crop_paste_tensors(dst, source, slots, windows, boxes, flips,
                                          _cpu_floats(mean), _cpu_floats(inv_std))
        return dst
    return crop_resize_paste_reference(dst, source, slots, windows, boxes, flips, mean=mean,
                                       inv_std=inv_std)
