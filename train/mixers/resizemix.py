"""ResizeMix baseline (Qin et al., "ResizeMix: Mixing Data with Preserved Object Information and
True Labels", arXiv 2012.11101): the *whole* source image, shrunk by a side ratio τ ~ U(0.1, 0.8)
[paper §3, α = 0.1, β = 0.8], is pasted at a random position of the target image; the label
weight of the pasted image is its area ratio. Both images come from P: the source of row i is
row perm(i) of the same batch. METHODS.md, Conventions: y_a = target (background) label,
lam = 1 − h·w/(H·W). One box per batch by default (``box="batch"``, METHODS.md: Boxes and λ).
"""

from __future__ import annotations

from typing import Mapping

import torch

from ltpipe.kernels.paste import resize_paste_
from ltpipe.pipeline import values
from ltpipe.pipeline.batch import Batch, MixedBatch
from ltpipe.train.mixers.base import (MIX_SCHEDULE, Mixer, MixerEnv, StepContext, active_in_epoch,
                                      gate_open)


def side_ratio_boxes(batch_size: int, H: int, W: int, gen: torch.Generator,
                     scale: tuple[float, float], per_sample: bool):
    """Boxes int32 [B,4] (x0,y0,x1,y1) with side ratio τ ~ U(scale), h = max(1, round(H·τ)), and
    lam float32 [B] = 1 − h·w/(H·W). ``per_sample=False``: one box for every row."""
    lo, hi = scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"mixer resizemix: scale must satisfy 0 < lo <= hi <= 1, got {scale!r}")
    n, dev = (batch_size if per_sample else 1), gen.device
    tau = lo + (hi - lo) * torch.rand(n, generator=gen, device=dev, dtype=torch.float64)
    h = torch.round(H * tau).long().clamp(1, H)
    w = torch.round(W * tau).long().clamp(1, W)
    r = torch.rand(2, n, generator=gen, device=dev, dtype=torch.float64)
    top = torch.minimum(torch.floor(r[0] * (H - h + 1)).long(), H - h)  # uniform on {0..H−h}
    left = torch.minimum(torch.floor(r[1] * (W - w + 1)).long(), W - w)
    boxes = torch.stack([left, top, left + w, top + h], 1).to(torch.int32).expand(batch_size, 4)
    lam = (1.0 - (h * w).double() / (H * W)).float().expand(batch_size)
    return boxes.contiguous(), lam.contiguous()


class ResizeMix(Mixer):
    streams = ("uniform",)
    RULES = {"scale": values.interval_pair(0, 1, lo_open=True), "prob": values.PROB,
             "mix_schedule": MIX_SCHEDULE, "box": values.BOX}

    def __init__(self, env: MixerEnv, scale: tuple[float, float] = (0.1, 0.8), prob: float = 1.0,
                 mix_schedule: str = "always", box: str = "batch"):
        values.check_values("mixer resizemix", self.RULES, locals())
        super().__init__(env)
        self.scale = (float(scale[0]), float(scale[1]))
        self.prob, self.mix_schedule, self.box = float(prob), mix_schedule, box

    def forward(self, streams: Mapping[str, Batch], ctx: StepContext) -> MixedBatch:
        batch = streams["uniform"]
        if not active_in_epoch(ctx.epoch, ctx.epochs, self.mix_schedule) or \
                not gate_open(self.prob, ctx.generator):
            return MixedBatch.unmixed(batch)
        b, _, h, w = batch.images.shape
        perm = torch.randperm(b, generator=ctx.generator, device=ctx.generator.device)
        perm = perm.to(batch.labels.device)
        boxes, lam = side_ratio_boxes(b, h, w, ctx.generator, self.scale, self.box == "sample")
        images = resize_paste_(batch.images.clone(), batch.images, boxes.to(batch.labels.device),
                               perm, validate=False)
        return MixedBatch(images, batch.labels, batch.labels[perm], lam.to(batch.labels.device),
                          {"index": batch.index})
