"""Class counts n_k, checked where they come in: the losses, ``ClassWeights`` and ``MixerEnv``.

Counts of nan, inf, -1 or 1.5 images are no data a run can have, and they would only show as a
loss of nan (a prior log π of nan) or a weight of nan. Reading the values costs a host sync on
CUDA, so they are checked once, at construction; per step only shapes are compared (free).
"""

from __future__ import annotations

import torch


def check_class_counts(owner: str, counts) -> int:
    """The number of classes C of ``counts``; ``ValueError("<owner>: class_counts ...")`` unless
    it is a non-empty 1-D tensor of finite, non-negative whole numbers."""
    if not isinstance(counts, torch.Tensor) or counts.dim() != 1 or counts.numel() == 0 or \
            counts.dtype == torch.bool or counts.is_complex():
        what = f"a tensor of shape {tuple(counts.shape)} and {counts.dtype}" \
            if isinstance(counts, torch.Tensor) else type(counts).__name__
        raise ValueError(f"{owner}: class_counts must be a non-empty 1-D tensor of class "
                         f"counts, got {what}")
    n = counts.detach().cpu().double()
    bad = ~torch.isfinite(n) | (n < 0) | (n != n.round())
    if bad.any():
        k = int(bad.nonzero()[0])
        raise ValueError(f"{owner}: class_counts must be finite, non-negative whole numbers, "
                         f"got {n[k].item():g} for class {k}")
    return counts.numel()


def check_logits(owner: str, logits: torch.Tensor, num_classes: int,
                 y: torch.Tensor | None = None) -> None:
    """Logits [B, C] of the C classes the counts have, and labels ``y`` int64 [B] in [0, C) (a
    shape; the range only on the CPU, where reading it is no host sync of a CUDA run)."""
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"{owner}: logits of shape {tuple(logits.shape)}, but class_counts has "
                         f"{num_classes} classes (expected [batch, {num_classes}])")
    if y is None:
        return
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1 or \
            y.shape[0] != logits.shape[0]:
        what = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{owner}: labels must be an int64 tensor [{logits.shape[0]}] (one class "
                         f"index per logits row), got {what}")
    if y.device.type == "cpu" and y.numel() and not \
            (0 <= int(y.min()) and int(y.max()) < num_classes):
        raise ValueError(f"{owner}: labels must be in [0, {num_classes}) (the classes of "
                         f"class_counts), got {int(y.min())}..{int(y.max())}")
