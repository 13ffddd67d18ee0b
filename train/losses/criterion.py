"""The criterion: lam·ℓ(y_a) + (1−lam)·ℓ(y_b) with class weights, plus weighted aux terms.

Weighted terms follow PyTorch's weighted-mean CE, each with its own normaliser [the CMO repo;
train/METHODS.md, Losses]:  term(y, c) = Σ_i c_i·w_{y_i}·ℓ_i(y_i) / Σ_i w_{y_i};  without weights
the normaliser is B. ``LossOutput.parts`` holds detached 0-dim tensors (no host sync per step).
"""

from __future__ import annotations

import torch
from torch import nn

from ltpipe.pipeline.batch import MixedBatch
from ltpipe.train.losses.base import LossOutput, ModelOutput
from ltpipe.train.losses.weights import ClassWeights


def mixed_term(per_sample: torch.Tensor, y: torch.Tensor, coef: torch.Tensor,
               weights: torch.Tensor | None) -> torch.Tensor:
    """per_sample, coef [B] fp32, y int64 [B], weights [C] or None -> scalar."""
    if weights is None:
        return (coef * per_sample).mean()
    w = weights[y]
    return (coef * w * per_sample).sum() / w.sum()


class Criterion(nn.Module):
    def __init__(self, base: nn.Module, weights: ClassWeights,
                 aux_terms: dict[str, nn.Module] | None = None):
        super().__init__()
        self.base = base
        self.weights = weights
        self.aux = nn.ModuleDict(aux_terms or {})

    def forward(self, out: ModelOutput, mixed: MixedBatch, ctx) -> LossOutput:
        w = self.weights.at(ctx.epoch)
        if w is not None:
            w = w.to(out.logits.device)
        lam = mixed.lam.float()
        # a loss corrected by the mixed labels' prior reads it from the mixer's batch
        batch_prior = {"label_prior": mixed.extras.get("label_prior")} \
            if getattr(self.base, "reads_label_prior", False) else {}
        loss = mixed_term(self.base(out.logits, mixed.y_a, **batch_prior), mixed.y_a, lam, w)
        if mixed.y_b is not mixed.y_a:  # identity batches (y_b is y_a, lam = 1) skip the 0 term
            loss = loss + mixed_term(self.base(out.logits, mixed.y_b, **batch_prior), mixed.y_b,
                                     1 - lam, w)
        parts = {"base": loss.detach()}
        for name, term in self.aux.items():
            value = term(out, mixed, ctx)
            parts[name] = value.detach()
            loss = loss + term.weight * value
        return LossOutput(loss, parts)
