"""CutMix and Mixup within one stream (P), and the box-paste steps CMO and OTmix share
(METHODS.md: CMO): ``paste_mix_`` (boxes drawn on the device) and, under a mix plan drawn on the
host before the step (pipeline/mix_plan.py), ``step_plan`` and ``paste_planned_``.

CutMix [Yun et al. 2019, as in cmo:cifar_train.py]: lam0 ~ Beta(α,α), a box of area ≈ (1−lam0)·HW,
``x[:, box] = x[perm][:, box]``, lam = 1 − area/HW recomputed from the clipped box
(METHODS.md: Boxes and λ).
Mixup [Zhang et al. 2018]: x = lam·x + (1−lam)·x[perm], one lam ~ Beta(α,α) per batch.
Every random draw uses the step generator on the batch's device; the p-gate is applied by
emptying the boxes (lam = 1) so no value is read back to the host.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ltpipe.kernels.boxes import cutmix_boxes, sample_lam
from ltpipe.pipeline import values
from ltpipe.pipeline.batch import Batch, MixedBatch
from ltpipe.pipeline.mix_plan import MixPlan, MixPlanner, PlanSpec
from ltpipe.pipeline.samplers import class_probabilities
from ltpipe.train.losses.prior import cutmix_fg_share, data_prior, mixed_label_prior
from ltpipe.train.mixers.base import (MIX_SCHEDULE, Mixer, MixerEnv, StepContext,
                                      active_in_epoch, mix_gate)

# the rules of the params CutMix, Mixup, CMO and OTmix share
BOX_RULES = {"prob": values.PROB, "alpha": values.BETA_ALPHA, "mix_schedule": MIX_SCHEDULE,
             "box": values.BOX}


def paste_mix_(images: torch.Tensor, src: torch.Tensor, *, alpha: float, per_sample: bool,
               prob: float, generator: torch.Generator,
               src_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste CutMix boxes of ``src[src_index]`` [B,3,H,W] into ``images`` in place, gated by
    ``prob`` (src may be images itself: kernels.paste_ then reads from a snapshot).

    Returns (boxes int32 [B,4] (x0,y0,x1,y1), lam float32 [B]): lam is the background's pixel
    fraction; a gated-off batch gets empty boxes and lam = 1.
    """
    from ltpipe.kernels.paste import paste_

    B, _, H, W = images.shape
    lam0 = sample_lam(B, alpha, generator)  # [B] (row 0 only when per_sample is False)
    boxes, lam = cutmix_boxes(lam0, H, W, generator, per_sample=per_sample)
    gate = mix_gate(prob, generator)  # bool []
    boxes = boxes * gate.to(boxes.dtype)  # all-zero box = empty: nothing pasted
    lam = torch.where(gate, lam, torch.ones_like(lam))
    paste_(images, src, boxes, src_index, validate=False)  # boxes are valid by construction
    return boxes, lam


def minority_paste_prior(mixer: Mixer, height: int, width: int,
                         mixed_rows: float = 1.0) -> torch.Tensor:
    """The expected class distribution of the labels of a mixer that pastes a CutMix box of a
    minority foreground (q(fg_r)) into a uniform background (π), float64 [C]: CMO, and OTmix with
    ``mixed_rows`` = the share of rows its plan mixes. A share prob · (epochs in the window)/E ·
    mixed_rows of the samples is mixed, and a mixed label puts E[box area]/HW on the foreground
    (METHODS.md: Losses). OTmix's OT steps re-pick backgrounds within the batch; the prior still
    takes them as P's draw."""
    env = mixer.env
    counts = env.class_counts.cpu().numpy()
    q = class_probabilities(counts, mixer.fg_r, allow_empty=True)
    window = sum(active_in_epoch(e, env.epochs, mixer.mix_schedule) for e in range(env.epochs))
    share = mixer.prob * window / max(env.epochs, 1) * mixed_rows
    fg_share = cutmix_fg_share(height, width, mixer.alpha)
    return torch.from_numpy(mixed_label_prior(data_prior(counts), q, fg_share, prob=share))


def step_plan(mixer: Mixer, spec: PlanSpec, streams: Mapping[str, Batch],
              ctx: StepContext) -> MixPlan:
    """The step's mix plan: the one the loader drew and sent with the batch (``meta["plan"]``),
    else drawn here by the same planner, keyed by the batch's (epoch, step within the epoch)
    when the loader names them and by the context's (epoch, step) otherwise (the torch reference
    loader, ``preview``, ``Mixer.mix`` in a loop of one's own)."""
    bg = streams["uniform"]
    plan = bg.meta.get("plan")
    if plan is not None:
        return plan
    _, _, h, w = bg.images.shape
    if h != w:
        raise ValueError(f"mixer {type(mixer).__name__}: mix plans need square images, got {h}x{w}")
    env = mixer.env
    planner = MixPlanner(spec, env.seed, env.rank, max(env.batch_size, len(bg)), h)
    return planner.draw(bg.meta.get("epoch", ctx.epoch), bg.meta.get("step", ctx.step))


def paste_planned_(images: torch.Tensor, fg: Batch, plan: MixPlan, rows: int):
    """Paste the plan's boxes of Q (``fg``: tiles when the loader decoded only those, else whole
    images) into ``images`` [rows,3,S,S] in place; a step that does not mix pastes nothing.

    Returns the plan's (boxes int32 [rows,4], lam float32 [rows], mixed bool [rows]) on the
    images' device (``MixPlan.tensors``: shared with the loader's tiles, read-only)."""
    from ltpipe.kernels.paste import paste_

    boxes, lam, mixed = plan.tensors(images.device, rows)
    if plan.active:  # boxes come from the plan: valid by construction, no check (a host sync)
        if fg.tiles is not None:  # decoded tiles and rows from the loader's cache
            fg.tiles[:rows].paste_(images)
        else:
            paste_(images, fg.images[:rows], boxes, validate=False)
    return boxes, lam, mixed


class CutMix(Mixer):
    streams = ("uniform",)
    RULES = BOX_RULES

    def __init__(self, env: MixerEnv, prob: float = 0.5, alpha: float = 1.0,
                 mix_schedule: str = "always", box: str = "batch"):
        values.check_values("mixer cutmix", self.RULES, locals())
        super().__init__(env)
        self.prob, self.alpha, self.mix_schedule, self.box = prob, alpha, mix_schedule, box

    def forward(self, streams: Mapping[str, Batch], ctx: StepContext) -> MixedBatch:
        batch = streams["uniform"]
        if not active_in_epoch(ctx.epoch, ctx.epochs, self.mix_schedule):
            return MixedBatch.unmixed(batch)
        perm = torch.randperm(len(batch), generator=ctx.generator, device=batch.labels.device)
        images = batch.images
        boxes, lam = paste_mix_(images, images, alpha=self.alpha, per_sample=self.box == "sample",
                                prob=self.prob, generator=ctx.generator, src_index=perm)
        return MixedBatch(images, batch.labels, batch.labels[perm], lam,
                          {"index": batch.index, "fg_index": batch.index[perm], "boxes": boxes})


class Mixup(Mixer):
    streams = ("uniform",)
    RULES = {k: BOX_RULES[k] for k in ("prob", "alpha", "mix_schedule")}

    def __init__(self, env: MixerEnv, prob: float = 1.0, alpha: float = 1.0,
                 mix_schedule: str = "always"):
        values.check_values("mixer mixup", self.RULES, locals())
        super().__init__(env)
        self.prob, self.alpha, self.mix_schedule = prob, alpha, mix_schedule

    def forward(self, streams: Mapping[str, Batch], ctx: StepContext) -> MixedBatch:
        batch = streams["uniform"]
        if not active_in_epoch(ctx.epoch, ctx.epochs, self.mix_schedule):
            return MixedBatch.unmixed(batch)
        g = ctx.generator
        B = len(batch)
        perm = torch.randperm(B, generator=g, device=batch.labels.device)
        lam = sample_lam(1, self.alpha, g)  # [1]: one lam per batch
        lam = torch.where(mix_gate(self.prob, g), lam, torch.ones_like(lam)).expand(B)
        x = batch.images
        w = lam.to(x.dtype)
        # lerp(start, end, 1) returns end exactly, so a gated-off batch is unchanged.
        images = torch.lerp(x[perm], x, w.view(B, 1, 1, 1))
        # the labels get the weight the pixels got (bf16 holds 0.3 as 0.30078)
        lam = w.to(lam.dtype)
        return MixedBatch(images, batch.labels, batch.labels[perm], lam.contiguous(),
                          {"index": batch.index, "fg_index": batch.index[perm]})
