"""CMO: Context-rich Minority Oversampling (Park et al., CVPR 2022; METHODS.md: CMO; Deviations).

Background (x_bg, y_bg) from the uniform stream P, foreground (x_fg, y_fg) from the minority
stream Q (class probability ∝ n_k^{−r}, r = ``fg_r``); the foreground batch is cut to the
background's size [cmo:cifar_train.py]. A CutMix box of x_fg is pasted at the same coordinates
into x_bg; y_a = y_bg, y_b = y_fg, lam = 1 − box area/HW.

Params: ``mix_schedule`` ("repo": only when 3 < e < E−3, "paper": off in the last 3 epochs,
"always"), ``prob`` (the per-batch gate; by default 1.0 under "paper", the paper's every batch,
and 0.5 otherwise, the repo's mixup_prob; a prob given explicitly wins), ``box`` ("batch": one
box for the whole batch as in the papers' code, "sample": one per sample), ``alpha`` (Beta(α,α),
1), ``fg_r`` (1.0 = paper's q(1); the paper recipes set 0, which is what the published code drew,
METHODS.md: The meaning of r).

Every draw of a step (gate, λ₀, boxes, Q's crop and flip) is a mix plan drawn on the host
(pipeline/mix_plan.py, ``mix_plan`` below): the loader draws it before decoding and decodes only
Q's boxes (``Batch.tiles``), or the mixer draws the same plan itself when none comes with the
batch. A step whose gate is off pastes nothing. Q's rows held in the loader's decoded cache
(pipeline/q_cache.py) are not decoded at all: the same paste (``Tiles.paste_``) resizes their
boxes from the cache, within a uint8 level of a decode.

The paste writes into the background batch ``streams["uniform"].images`` in place (no copy of
the batch per step); the returned ``MixedBatch.images`` is that same tensor. A caller that keeps
a reference to the background images and needs them unchanged uses ``mix(..., inplace=False)``.
"""

from __future__ import annotations

from typing import Mapping

from ltpipe.pipeline import values
from ltpipe.pipeline.batch import Batch, MixedBatch
from ltpipe.pipeline.mix_plan import PlanSpec
from ltpipe.train.mixers.base import Mixer, MixerEnv, StepContext, active_in_epoch, resolve_prob
from ltpipe.train.mixers.cutmix import BOX_RULES, minority_paste_prior, paste_planned_, step_plan


class CMO(Mixer):
    streams = ("uniform", "minority")
    RULES = {**BOX_RULES, "prob": values.OPTIONAL_PROB, "fg_r": values.FG_R}

    def __init__(self, env: MixerEnv, prob: float | None = None, mix_schedule: str = "repo",
                 box: str = "batch", alpha: float = 1.0, fg_r: float = 1.0):
        values.check_values("mixer cmo", self.RULES, locals())
        super().__init__(env)
        prob = resolve_prob(prob, mix_schedule)  # default: 1.0 under "paper", else 0.5
        self.prob, self.alpha, self.mix_schedule, self.box = prob, alpha, mix_schedule, box
        self.fg_r = float(fg_r)

    @property
    def mix_plan(self) -> PlanSpec:
        """The declaration the loader draws this mixer's plans by: CMO reads only Q's boxes."""
        return PlanSpec(prob=self.prob, mix_schedule=self.mix_schedule, epochs=self.env.epochs,
                        alpha=self.alpha, per_sample=self.box == "sample")

    def label_prior(self, height: int, width: int):
        """P_mix of CMO's labels, for ``prior="mixed"`` losses (METHODS.md: Losses)."""
        return minority_paste_prior(self, height, width)

    def forward(self, streams: Mapping[str, Batch], ctx: StepContext) -> MixedBatch:
        bg, fg = streams["uniform"], streams["minority"]
        if not active_in_epoch(ctx.epoch, ctx.epochs, self.mix_schedule):
            return MixedBatch.unmixed(bg)
        B = len(bg)
        images = bg.images  # the background batch is consumed: the paste is in place
        plan = step_plan(self, self.mix_plan, streams, ctx)
        boxes, lam, _ = paste_planned_(images, fg, plan, B)
        return MixedBatch(images, bg.labels, fg.labels[:B], lam,
                          {"index": bg.index, "fg_index": fg.index[:B], "boxes": boxes})
