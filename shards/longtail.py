"""Long-tailed construction and the Many/Medium/Few class groups (METHODS.md, Class groups).

``n_k = floor(n_max * rho^(-k/(C-1)))`` for k = 0..C-1, class 0 the head; a source is made
long-tailed by keeping a per-class subset of that size (the first n_k, M2m style, or a seeded
random subset, CMO style).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MANY_ABOVE = 100  # many: n > 100
FEW_BELOW = 20  # few: n < 20; medium: 20 <= n <= 100
GROUPS = ("many", "medium", "few")


def longtail_counts(n_max: int, num_classes: int, imbalance: float) -> list[int]:
    """The exponential profile (METHODS.md, Class groups): floor(n_max * imbalance^(-k/(C-1)))."""
    if not (math.isfinite(imbalance) and imbalance >= 1):
        raise ValueError(f"imbalance must be a finite number >= 1, got {imbalance}")
    if num_classes < 1 or n_max < 1:
        raise ValueError(f"need num_classes >= 1 and n_max >= 1, got {num_classes}, {n_max}")
    if num_classes == 1:
        return [n_max]
    # the small epsilon keeps exact powers (e.g. 500 * 100^-1 = 5) from flooring to 4.999.. -> 4
    return [int(math.floor(n_max * imbalance ** (-k / (num_classes - 1)) + 1e-9))
            for k in range(num_classes)]


def group_of(n: int) -> str:
    return "many" if n > MANY_ABOVE else ("few" if n < FEW_BELOW else "medium")


def group_sizes(class_counts: Sequence[int]) -> dict[str, int]:
    """How many classes fall in each of many/medium/few."""
    out = dict.fromkeys(GROUPS, 0)
    for n in class_counts:
        out[group_of(int(n))] += 1
    return out


def longtail_subset(labels: Sequence[int], num_classes: int, imbalance: float, *,
                    seed: int | None = None) -> np.ndarray:
    """Positions to keep so class k keeps n_k = floor(n_max * imbalance^(-k/(C-1))) samples.

    n_max is the largest class of ``labels``; a class smaller than its n_k keeps all it has.
    ``seed=None`` keeps the first n_k of each class in input order (M2m), an int keeps a seeded
    random subset (CMO). Returned positions are sorted.
    """
    labels = np.asarray(labels, dtype=np.int64)
    per_class = [np.flatnonzero(labels == k) for k in range(num_classes)]
    n_max = max((len(p) for p in per_class), default=0)
    if n_max == 0:
        raise ValueError("no samples to subsample")
    targets = longtail_counts(n_max, num_classes, imbalance)
    rng = np.random.default_rng(seed) if seed is not None else None
    keep = []
    for positions, n in zip(per_class, targets):
        if rng is not None and len(positions) > n:
            positions = np.sort(rng.choice(positions, size=n, replace=False))
        keep.append(positions[:n])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
