"""The loss interface: model output + MixedBatch -> LossOutput(loss, parts).

Base losses return a per-sample loss for hard labels; one wrapper forms
lam·ℓ(y_a) + (1−lam)·ℓ(y_b) so every loss pairs with every mixer (train/METHODS.md, Conventions
› Labels and the mixed loss; Losses).
Auxiliary terms (SMC's contrastive loss) read ``ModelOutput.features`` and add a named part.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ModelOutput:
    logits: torch.Tensor  # [B,C]
    features: torch.Tensor | None = None  # [B,D] pooled penultimate features
    extras: dict = field(default_factory=dict)  # e.g. {"proj": [B,128]} from an SMC head


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # scalar, the value to backpropagate
    parts: dict[str, float] = field(default_factory=dict)  # named terms, for logging only
