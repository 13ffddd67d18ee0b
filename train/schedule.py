"""Per-step learning-rate factor: linear warm-up, then step decays or cosine (METHODS.md: Losses).

CIFAR recipe: 5 warm-up epochs, ×0.01 at epochs 160 and 180 [cmo:cifar_train.py adjust_lr];
ImageNet-LT: ×0.1 at 60/80. The factor is a pure function of the step, so resuming only needs
the step counter (LambdaLR's state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    steps_per_epoch: int
    epochs: int
    warmup: int = 0  # epochs
    schedule: str = "step"  # step | cosine | constant
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __call__(self, step: int) -> float:
        warm_steps = self.warmup * self.steps_per_epoch
        if step < warm_steps:
            return (step + 1) / warm_steps
        epoch = step / self.steps_per_epoch
        if self.schedule == "step":
            return self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        if self.schedule == "cosine":
            total = max(1, self.epochs * self.steps_per_epoch - warm_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm_steps) / total)))
        return 1.0
