"""The class prior a logit-adjusted loss corrects by: the data's, or the mixed labels'.

Logit adjustment trains CE(z + τ·log P, y) so that, at test time, the raw logits z carry no
training prior. With hard labels P is the data's class distribution π. A mixer changes the
distribution of the labels the classifier is trained on: a mixed sample puts weight w_fg on a
foreground class drawn from the minority stream q and 1 − w_fg on a background drawn from π, so
the labels follow, in expectation over the run,

    P_mix = π + p·E[w_fg]·(q − π)          (p: the share of samples that are mixed)

which is much flatter than π. Correcting by log π then over-corrects by log(P_mix/π): the head
is pushed down by a margin the mixed labels no longer justify (train/METHODS.md, SMC).
``prior="data"`` corrects by π, ``prior="mixed"`` by the P_mix its mixer declares.
"""

from __future__ import annotations

import math

import numpy as np
import torch

PRIORS = ("data", "mixed")


def data_prior(class_counts) -> np.ndarray:
    """π_k = n_k / N, float64 [C]; an empty class counts as 1, as in the other count-based
    losses (its log must stay finite)."""
    n = np.maximum(np.asarray(torch.as_tensor(class_counts).cpu(), dtype=np.float64), 1.0)
    return n / n.sum()


def mixed_label_prior(pi, q, fg_share: float, prob: float = 1.0) -> np.ndarray:
    """P_mix = π + prob·fg_share·(q − π), float64 [C]: the expected class distribution of the
    soft labels when a share ``prob`` of the samples is mixed and a mixed sample's label puts the
    mean weight ``fg_share`` = E[w_fg] on a foreground drawn from q (the rest on one from π)."""
    pi, q = np.asarray(pi, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if pi.shape != q.shape:
        raise ValueError(f"mixed prior: π and q differ in shape, {pi.shape} vs {q.shape}")
    if not (0.0 <= fg_share <= 1.0 and 0.0 <= prob <= 1.0):
        raise ValueError(f"mixed prior: fg_share and prob must lie in [0, 1], got {fg_share}, "
                         f"{prob}")
    return pi + prob * fg_share * (q - pi)


def resizemix_fg_share(height: int, width: int, scale: tuple[float, float]) -> float:
    """E[lf] of ``kernels.boxes.resizemix_boxes``, exactly: lf = h·w/(H·W) with
    h = clamp(round(H·√s), 1, H), w likewise, s ~ U(lo, hi). h and w are step functions of s
    that change where H·√s or W·√s crosses k + ½, so lf is constant between those points."""
    lo, hi = float(scale[0]), float(scale[1])

    def lf(s: float) -> float:
        root = math.sqrt(s)
        h = min(max(round(height * root), 1), height)
        w = min(max(round(width * root), 1), width)
        return h * w / (height * width)

    if hi <= lo:
        return lf(lo)
    cuts = {lo, hi}
    for side in (height, width):
        cuts.update(s for k in range(side + 1) if lo < (s := ((k + 0.5) / side) ** 2) < hi)
    edges = sorted(cuts)
    total = sum((b - a) * lf((a + b) / 2) for a, b in zip(edges, edges[1:]))
    return total / (hi - lo)


def cutmix_fg_share(height: int, width: int, alpha: float, draws: int = 1 << 18) -> float:
    """E[w_fg] = E[area]/(H·W) of a ``kernels.boxes.cutmix_boxes`` box with λ₀ ~ Beta(α, α):
    exact over the centre (uniform on the pixel grid, sides clipped to the image) and a fixed-seed
    Monte Carlo over λ₀ (2^18 draws: standard error about 6e-4). For α = 1 about 0.30 at
    32 px and 0.32 at 224 px, under the 0.5 of an unclipped box."""
    def mean_clipped_side(side: int) -> np.ndarray:  # [side//2 + 1]: E over the centre, by half
        half = np.arange(side // 2 + 1)[:, None]
        centre = np.arange(side)[None, :]
        return (np.minimum(centre + half, side) - np.maximum(centre - half, 0)).mean(axis=1)

    if not alpha > 0:
        raise ValueError(f"cutmix_fg_share: alpha must be > 0, got {alpha}")
    s = np.sqrt(1.0 - np.random.default_rng(0).beta(alpha, alpha, draws))
    half_h = np.floor(height * s).astype(np.int64) // 2
    half_w = np.floor(width * s).astype(np.int64) // 2
    area = mean_clipped_side(height)[half_h] * mean_clipped_side(width)[half_w]
    return float(area.mean() / (height * width))


def log_prior(prior) -> torch.Tensor:
    """log P as fp32 [C] (P float64 numpy or tensor)."""
    return torch.as_tensor(np.asarray(prior, dtype=np.float64)).log().float()
