"""Remix baseline (Chou et al., "Remix: Rebalanced Mixup", ECCV-W 2020, arXiv 2007.03943).

Pixels are mixed as Mixup, x̃ = λ·x_i + (1−λ)·x_j with λ ~ Beta(α, α) (α = 1, one λ per batch) and
j = perm(i) from the same P batch; the label weight is rebalanced [Remix Eq.4, κ = 3, τ = 0.5 as
in the paper's experiments]:
    λ_y = 0  if n_{y_i}/n_{y_j} ≥ κ and λ < τ      (i from a much larger class: label goes to y_j)
    λ_y = 1  if n_{y_i}/n_{y_j} ≤ 1/κ and 1−λ < τ  (j from a much larger class: label stays y_i)
    λ_y = λ  otherwise.
METHODS.md: Conventions: y_a = y_i, y_b = y_j, lam = λ_y (which differs from the pixel ratio λ).
"""

from __future__ import annotations

from typing import Mapping

import torch

from ltpipe.kernels.boxes import sample_lam
from ltpipe.pipeline import values
from ltpipe.pipeline.batch import Batch, MixedBatch
from ltpipe.train.mixers.base import (MIX_SCHEDULE, Mixer, MixerEnv, StepContext, active_in_epoch,
                                      gate_open)


def remix_label_weight(lam: torch.Tensor, n_a: torch.Tensor, n_b: torch.Tensor,
                       kappa: float, tau: float) -> torch.Tensor:
    """lam [B]: pixel weight of x_a; n_a, n_b [B]: class counts of y_a, y_b.
    Returns λ_y [B], the label weight of y_a."""
    ratio = n_a.double() / n_b.double()
    to_b = (ratio >= kappa) & (lam < tau)
    to_a = (ratio <= 1.0 / kappa) & (1 - lam < tau)
    out = torch.where(to_b, torch.zeros_like(lam), lam)
    return torch.where(to_a, torch.ones_like(lam), out)


class Remix(Mixer):
    streams = ("uniform",)
    # kappa: a ratio of class counts; tau: a share of the pixels
    RULES = {"alpha": values.BETA_ALPHA, "kappa": values.number(1), "tau": values.PROB,
             "prob": values.PROB, "mix_schedule": MIX_SCHEDULE}

    def __init__(self, env: MixerEnv, alpha: float = 1.0, kappa: float = 3.0, tau: float = 0.5,
                 prob: float = 1.0, mix_schedule: str = "always"):
        values.check_values("mixer remix", self.RULES, locals())
        super().__init__(env)
        self.alpha, self.kappa, self.tau = float(alpha), float(kappa), float(tau)
        self.prob, self.mix_schedule = float(prob), mix_schedule
        self.register_buffer("counts", env.class_counts.clamp(min=1).clone(), persistent=False)

    def forward(self, streams: Mapping[str, Batch], ctx: StepContext) -> MixedBatch:
        batch = streams["uniform"]
        if not active_in_epoch(ctx.epoch, ctx.epochs, self.mix_schedule) or \
                not gate_open(self.prob, ctx.generator):
            return MixedBatch.unmixed(batch)
        b, dev = len(batch), batch.labels.device
        perm = torch.randperm(b, generator=ctx.generator, device=ctx.generator.device).to(dev)
        lam = sample_lam(1, self.alpha, ctx.generator).to(dev).expand(b)  # one λ per batch
        x = batch.images
        images = torch.lerp(x[perm].float(), x.float(), lam.view(-1, 1, 1, 1))
        images = (images if x.is_floating_point() else images.round()).to(x.dtype)
        y_a, y_b = batch.labels, batch.labels[perm]
        counts = self.counts.to(dev)
        lam_y = remix_label_weight(lam, counts[y_a], counts[y_b], self.kappa, self.tau)
        return MixedBatch(images, y_a, y_b, lam_y.float(),
                          {"index": batch.index, "pixel_lam": lam, "changed": lam < 1})
