"""Raw pixels to model input, on the training device: uint8 -> float, ImageNet mean and std.

A loader built with ``dtype=torch.uint8`` hands over the decoded, cropped and flipped pixels as
they are: a quarter of fp32's bytes (half of fp16's) leave DALI, and DALI runs no normalisation.
The arithmetic moves to the consumer, where it is one elementwise pass that torch can fuse
(``compile=True``). ``normalize_images`` is the same map as DALI's ``crop_mirror_normalize`` and
torchvision's ``Normalize`` (x/255 - mean)/std, up to float rounding; mixing commutes with it
(pastes copy pixels, blends and bilinear resizes are convex combinations), so normalising before
or after a mixer gives the same model input.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from typing import Iterator

import torch

from ltpipe.pipeline.batch import Batch
from ltpipe.pipeline.dali_graph import IMAGENET_MEAN, IMAGENET_STD


@lru_cache(maxsize=8)
def _affine(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) [1,3,1,1] fp32 with x * scale + shift = (x/255 - mean)/std."""
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    scale, shift = 1.0 / (255.0 * std), -mean / std
    return (scale.float().view(1, 3, 1, 1).to(device), shift.float().view(1, 3, 1, 1).to(device))


def normalize_images(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B,3,H,W] (any memory format, kept) -> ``dtype``, normalised; other dtypes pass."""
    if images.dtype != torch.uint8:
        return images
    scale, shift = _affine(images.device)
    return torch.addcmul(shift, images.float(), scale).to(dtype)


def normalize_batch(batch: Batch, dtype: torch.dtype, normalize=normalize_images) -> Batch:
    """The batch with its images (and Q's tiles) as model input."""
    tiles = batch.tiles
    if tiles is not None:
        tiles = replace(tiles, pixels=normalize(tiles.pixels, dtype))
    return replace(batch, images=normalize(batch.images, dtype), tiles=tiles)


class NormalizedLoader:
    """A uint8 loader whose steps come out as model input (``dtype``); everything else (len,
    set_epoch, state_dict, class_counts, ...) is the wrapped loader's."""

    def __init__(self, loader, dtype: torch.dtype, compile: bool = False):
        self.loader, self.dtype = loader, dtype
        self._normalize = torch.compile(normalize_images, dynamic=True) if compile \
            else normalize_images

    def __getattr__(self, name):
        if name == "loader":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Batch]]:
        for streams in self.loader:
            yield {name: normalize_batch(b, self.dtype, self._normalize)
                   for name, b in streams.items()}
