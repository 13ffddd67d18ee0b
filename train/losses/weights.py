"""Class re-weighting policies w [C] per epoch (train/METHODS.md, Losses).

- ``none``: all ones.
- ``inverse``: w_k ∝ 1/n_k, Σ w = C.
- ``drw``: deferred re-weighting [CMO repo, cifar_train.py]: ones before ``drw_epoch``, then the
  effective-number weights w_k = (1−β)/(1−β^{n_k}), β = 0.9999, normalised so Σ w = C.
Computed in fp64, stored fp32.
"""

from __future__ import annotations

import logging

import torch

from ltpipe.pipeline import values
from ltpipe.train.class_counts import check_class_counts

log = logging.getLogger(__name__)

POLICIES = ("none", "inverse", "drw")


def effective_number_weights(class_counts: torch.Tensor, beta: float) -> torch.Tensor:
    n = class_counts.double().clamp_min(1)
    w = (1 - beta) / (1 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return (w * (len(n) / w.sum())).float()


class ClassWeights:
    """``at(epoch) -> w [C]`` on the counts' device, or None when every weight is 1."""

    RULES = {"epochs": values.EPOCHS,
             "drw_epoch": values.integer(0, values.MAX_EPOCHS, optional=True),
             "beta": values.number(0, 1, lo_open=True, hi_open=True)}

    def __init__(self, policy: str, class_counts: torch.Tensor, *, epochs: int,
                 drw_epoch: int | None = None, beta: float = 0.9999):
        if policy not in POLICIES:
            raise ValueError(f"reweight: unknown {policy!r} (choose from {', '.join(POLICIES)})")
        values.check_values(f"reweight {policy!r}", self.RULES, locals())
        check_class_counts(f"reweight {policy!r}", class_counts)
        self.policy = policy
        # Default deferral: 4/5 of the run, as 160/200 (CIFAR) and 80/100 (ImageNet-LT).
        self.drw_epoch = int(drw_epoch) if drw_epoch is not None else (4 * epochs) // 5
        if policy == "drw" and self.drw_epoch >= epochs:
            log.warning("warning: reweight drw starts at epoch %d of a %d-epoch run: it never "
                        "reweights (set --drw-epoch)", self.drw_epoch, epochs)
        n = class_counts.double().clamp_min(1)
        self._inverse = ((1 / n) * (len(n) / (1 / n).sum())).float()
        self._drw = effective_number_weights(class_counts, beta)

    def at(self, epoch: int) -> torch.Tensor | None:
        if self.policy == "inverse":
            return self._inverse
        if self.policy == "drw" and epoch >= self.drw_epoch:
            return self._drw
        return None
