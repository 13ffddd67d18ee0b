"""Sampling distributions for the P and Q streams (METHODS.md: Streams P and Q; The meaning of r).

P (instance-uniform): every sample has probability 1/N, so class k has probability pi_k = n_k/N.
Q (minority-weighted, the papers' meaning of r): class k is drawn with probability

    q(r, k) = n_k^-r / sum_j n_j^-r        (r=0 class-uniform, r=1 inverse frequency)

and then a sample uniformly within the class, so sample i has weight w_i = q(y_i) / n_{y_i}.
Effective-number variant [CMO Eq.3]: q_k ∝ 1/E_k, E_k = (1 - beta^n_k) / (1 - beta), beta=(N-1)/N.

All functions are pure numpy and exact (float64). Empty classes (n_k = 0) raise unless
``allow_empty=True``, in which case q_k = 0 and 0^-r is never evaluated (METHODS.md, Empty classes).
"""

from __future__ import annotations

import numpy as np


def _counts(counts, allow_empty: bool) -> np.ndarray:
    n = np.asarray(counts, dtype=np.int64)
    if n.ndim != 1 or n.size == 0:
        raise ValueError(f"class counts: expected a non-empty 1-D array, got shape {n.shape}")
    if (n < 0).any():
        raise ValueError(f"class counts: negative count at class {int(np.argmin(n))}")
    if n.sum() == 0:
        raise ValueError("class counts: every class is empty")
    empty = np.flatnonzero(n == 0)
    if empty.size and not allow_empty:
        raise ValueError(
            f"class counts: class {int(empty[0])} has no samples "
            "(pass allow_empty=True to give it q=0)"
        )
    return n


def class_probabilities(counts, r: float, allow_empty: bool = False) -> np.ndarray:
    """q(r, k) = n_k^-r / sum_j n_j^-r over the non-empty classes; float64 [C], sums to 1."""
    if not np.isfinite(r) or r < 0:
        raise ValueError(f"r: must be a finite number >= 0, got {r}")
    n = _counts(counts, allow_empty)
    q = np.zeros(n.shape, dtype=np.float64)
    present = n > 0
    # n^-r = exp(-r log n), scaled by the smallest count so large r cannot underflow every class.
    log_n = np.log(n[present].astype(np.float64))
    q[present] = np.exp(-r * (log_n - log_n.min()))
    return q / q.sum()


def instance_class_probabilities(counts, allow_empty: bool = False) -> np.ndarray:
    """P's class probability pi_k = n_k / N; float64 [C]."""
    n = _counts(counts, allow_empty)
    return n / n.sum()


def effective_number_probabilities(counts, beta: float | None = None,
                                   allow_empty: bool = False) -> np.ndarray:
    """q_k ∝ 1/E_k with E_k = (1 - beta^n_k)/(1 - beta); beta defaults to (N-1)/N. float64 [C]."""
    n = _counts(counts, allow_empty)
    total = int(n.sum())
    if beta is None:
        beta = (total - 1) / total if total > 1 else 0.0
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta: must be in [0, 1), got {beta}")
    q = np.zeros(n.shape, dtype=np.float64)
    present = n > 0
    # -expm1(n log beta) = 1 - beta^n without cancellation for beta close to 1.
    e = -np.expm1(n[present] * np.log(beta)) / (1.0 - beta) if beta > 0 else np.ones(present.sum())
    q[present] = 1.0 / e
    return q / q.sum()


def sample_weights(labels, class_probs) -> np.ndarray:
    """Per-sample probability w_i = q(y_i)/n_{y_i} (n counted in ``labels``); float64 [N], sum 1.

    For a shard of the data, pass the shard's labels: classes absent from it drop out and the
    weights are renormalized.
    """
    y = np.asarray(labels, dtype=np.int64)
    q = np.asarray(class_probs, dtype=np.float64)
    if y.size and (y.min() < 0 or y.max() >= q.size):
        raise ValueError(f"labels: values must lie in [0, {q.size}), got [{y.min()}, {y.max()}]")
    n = np.bincount(y, minlength=q.size)
    w = q[y] / np.maximum(n[y], 1)
    total = w.sum()
    if total <= 0:
        raise ValueError("sample weights: every present class has probability 0")
    return w / total


def instance_uniform_weights(num_samples: int) -> np.ndarray:
    """P's per-sample probability 1/N; float64 [N]."""
    if num_samples <= 0:
        raise ValueError(f"num_samples: must be positive, got {num_samples}")
    return np.full(num_samples, 1.0 / num_samples)
