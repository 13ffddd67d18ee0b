"""On-device batch augmentation for SMC's two views (train/METHODS.md, SMC › Deviations).

SMC augments each component *before* mixing [SMC paper Eq.3, Table 5] and trains on two views.
The loader delivers one augmented view per sample, so ltpipe draws the per-view augmentation A_v
on the device, on top of the loader's (pad-crop/flip) output. This is a documented deviation:
the paper decodes and augments each view from the raw image. A_v follows [CMO repo,
cifar_train.py ``augmentation_sim_cifar``]: RandomResizedCrop(scale 0.2–1, ratio 3/4–4/3),
horizontal flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale with p = 0.2.
Differences from torchvision: jitter in the fixed order brightness, contrast, saturation, hue;
hue is a YIQ chroma rotation (an approximation of the HSV shift); the crop is sampled once (no
10-try rejection loop). Everything runs batched (one affine ``grid_sample`` per call),
per-sample random parameters.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale
_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
_FROM_YIQ = ((1.0, 0.956171, 0.621433), (1.0, -0.272689, -0.646813), (1.0, -1.103744, 1.700623))


def loader_normalization(meta, mean=None, std=None) -> tuple:
    """(mean, std) per channel of float loader images: explicit params, else ``batch.meta``, else
    the loader's ImageNet statistics (``ltpipe.pipeline.dali_graph``, both presets)."""
    from ltpipe.pipeline.dali_graph import IMAGENET_MEAN, IMAGENET_STD

    mean = mean if mean is not None else meta.get("mean", IMAGENET_MEAN)
    std = std if std is not None else meta.get("std", IMAGENET_STD)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def random_resized_crop_flip(x: torch.Tensor, gen: torch.Generator, scale=(0.2, 1.0),
                             ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Per-sample RRC + horizontal flip back to the same size. x [B,3,H,W] float -> same shape."""
    b, dev = x.shape[0], x.device
    area = _uniform(b, *scale, gen, dev)
    log_r = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), gen, dev)
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)  # crop width / W
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)  # crop height / H
    cx = (1 - w) * _uniform(b, -1.0, 1.0, gen, dev)  # centre in normalized [-1,1] coordinates
    cy = (1 - h) * _uniform(b, -1.0, 1.0, gen, dev)
    flip = torch.where(torch.rand(b, generator=gen, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=torch.float32)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border",
                         align_corners=False).to(x.dtype)


def _gray(x: torch.Tensor) -> torch.Tensor:  # [B,3,H,W] -> [B,1,H,W]
    return _GRAY[0] * x[:, 0:1] + _GRAY[1] * x[:, 1:2] + _GRAY[2] * x[:, 2:3]


def _hue_rotate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate chroma in YIQ space by 2π·shift [B] (shift in [−0.5, 0.5] turns)."""
    yiq = torch.einsum("ij,bjhw->bihw", x.new_tensor(_TO_YIQ), x)
    c, s = torch.cos(2 * math.pi * shift), torch.sin(2 * math.pi * shift)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c[:, None, None] * i - s[:, None, None] * q,
                       s[:, None, None] * i + c[:, None, None] * q], dim=1)
    return torch.einsum("ij,bjhw->bihw", x.new_tensor(_FROM_YIQ), yiq)


def color_jitter(x: torch.Tensor, gen: torch.Generator, strength=(0.4, 0.4, 0.4, 0.1),
                 p: float = 0.8, p_gray: float = 0.2) -> torch.Tensor:
    """x [B,3,H,W] raw pixels in [0,1] -> jittered, clamped to [0,1]; per-sample factors."""
    b, dev = x.shape[0], x.device
    bri, con, sat, hue = strength
    on = (torch.rand(b, generator=gen, device=dev) < p).float()[:, None, None, None]

    def factor(s: float) -> torch.Tensor:  # 1 + U(−s, s) where jitter is on, else 1
        return 1 + on * _uniform(b, -s, s, gen, dev)[:, None, None, None]

    y = (x * factor(bri)).clamp(0, 1)
    mean = _gray(y).mean(dim=(1, 2, 3), keepdim=True)
    y = _blend(y, mean, factor(con))
    y = _blend(y, _gray(y), factor(sat))
    y = _hue_rotate(y, on[:, 0, 0, 0] * _uniform(b, -hue, hue, gen, dev)).clamp(0, 1)
    gray = (torch.rand(b, generator=gen, device=dev) < p_gray)[:, None, None, None]
    return torch.where(gray, _gray(y).expand_as(y), y)


def _blend(img: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f * img + (1 - f) * other).clamp(0, 1)


def augment_view(x: torch.Tensor, gen: torch.Generator, mean=None, std=None,
                 color: bool = True) -> torch.Tensor:
    """One fresh SMC view A_v(x) of x [B,3,H,W] (uint8, or float in the loader's normalization).

    mean/std (per channel, or None when x is raw [0,1]) undo the normalization for the colour
    operations, which need raw pixels; the crop/flip do not care.
    """
    raw_uint8 = not x.is_floating_point()  # uint8 [0,255] pixels: work on [0,1] floats
    y = random_resized_crop_flip(x.float() / 255 if raw_uint8 else x.float(), gen)
    if color and raw_uint8:
        y = color_jitter(y, gen)
    elif color:
        if mean is not None:
            m = torch.as_tensor(mean, dtype=y.dtype, device=y.device).view(1, -1, 1, 1)
            s = torch.as_tensor(std, dtype=y.dtype, device=y.device).view(1, -1, 1, 1)
            y = (color_jitter(y * s + m, gen) - m) / s
        else:
            y = color_jitter(y, gen)
    if raw_uint8:
        y = (y * 255).round().clamp(0, 255)
    # dense NCHW or channels_last like the input, as the paste kernels require
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and \
        not x.is_contiguous() else torch.contiguous_format
    return y.to(x.dtype).contiguous(memory_format=fmt)
