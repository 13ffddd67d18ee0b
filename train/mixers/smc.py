"""SMC mixing (Jeong & Kim, arXiv 2211.11938; train/METHODS.md, SMC): ResizeMix with a minority
foreground.

Background ~ P ("uniform"), foreground ~ Q ("minority", class probability ∝ n_k^{−γ}, γ = fg_r).
A batch is mixed with probability ``prob`` (default 1, every batch; the paper gives no value,
and the SMC recipes use 0.5: train/METHODS.md, SMC). An unmixed batch gives the two views of the
clean backgrounds, with y_fg = y_bg and lf = 0, so the classifier also sees whole images, as the
test set shows them.

The foreground ratio lf = 0.2 + 0.6·u (u ~ U(0,1)) gives the box h = max(1, round(H√lf)), w
likewise, at a uniform position (``kernels.boxes.resizemix_boxes``);
the *whole* foreground is shrunk bilinearly into it (``resize_paste_``). Components are augmented
before mixing and two views are made with the same box: x̃_v = A_v(x_bg) ⊕ resize(A_v(x_fg)).
lf is recomputed from the box, lam = 1 − lf weights y_a = y_bg (SMC's own λ weights the fg).

Output: MixedBatch of 2B rows (view 1 then view 2), extras {"y_fg", "y_bg", "lf" [2B], "views": 2,
"index", "label_prior"}; the SMC loss (``ltpipe.train.losses.smc``, aux term "smc") reads them, and
the paper pairs it with logit-adjusted CE (``--loss la``, τ = 1). "label_prior" [C] is the
expected class distribution of the labels SMC emits, π + prob·E[lf]·(q − π): the prior P_Y of the
paper's m = log P_Y, "to balance the classifier with the mixed data", which ``--loss la`` uses
with ``prior="mixed"`` (train/METHODS.md, SMC).

Deviation (documented in ``view_aug``): the loader delivers one augmented view per sample, so A_v
is an on-device augmentation applied on top of the loader's output, not a second decode.
Q's decoded cache (pipeline/q_cache.py) does not serve SMC: SMC declares no mix plan, so DALI
draws Q's crop inside the pipeline and the loader cannot know the window a cached row would
need; Q is decoded as before. (A plan for SMC would change its random draws.)
"""

from __future__ import annotations

from typing import Mapping

import torch

from ltpipe.kernels.boxes import resizemix_boxes
from ltpipe.kernels.paste import resize_paste_
from ltpipe.pipeline import values
from ltpipe.pipeline.batch import Batch, MixedBatch
from ltpipe.pipeline.samplers import class_probabilities
from ltpipe.train.losses.prior import data_prior, mixed_label_prior, resizemix_fg_share
from ltpipe.train.mixers.base import Mixer, MixerEnv, StepContext, gate_open
from ltpipe.train.mixers.view_aug import augment_view, loader_normalization

VIEW_AUGS = ("sim", "crop", "none")  # full A_v; crop+flip only; no extra augmentation


class SMCMix(Mixer):
    streams = ("uniform", "minority")
    aux_terms = ("smc",)
    RULES = {"fg_r": values.FG_R, "scale": values.interval_pair(0, 1), "box": values.BOX,
             "views": values.integer(1, 2), "view_aug": values.choice(*VIEW_AUGS),
             "prob": values.PROB,
             "mean": values.channel_stats(positive=False),
             "std": values.channel_stats(positive=True)}

    def __init__(self, env: MixerEnv, fg_r: float = 1.0, scale: tuple[float, float] = (0.2, 0.8),
                 box: str = "batch", views: int = 2, view_aug: str = "sim", prob: float = 1.0,
                 mean=None, std=None):
        values.check_values("mixer smc", self.RULES, locals())
        super().__init__(env)
        self.fg_r = float(fg_r)  # γ: the loader builds the minority stream with this r
        self.scale = (float(scale[0]), float(scale[1]))
        self.box, self.views, self.view_aug = box, int(views), view_aug
        self.prob = float(prob)
        self.mean, self.std = mean, std

    def label_prior(self, height: int, width: int) -> torch.Tensor:
        """The expected class distribution of this mixer's labels, float64 [C]: a batch is mixed
        with probability prob, its background is drawn from π (P) and its foreground, weighted by
        lf, from q(fg_r) (Q, built by the loader with this fg_r), so
        P_mix = π + prob·E[lf]·(q − π)."""
        counts = self.env.class_counts.cpu().numpy()
        q = class_probabilities(counts, self.fg_r, allow_empty=True)
        fg_share = resizemix_fg_share(height, width, self.scale)
        return torch.from_numpy(mixed_label_prior(data_prior(counts), q, fg_share, prob=self.prob))

    def _view(self, x: torch.Tensor, meta: Mapping, gen: torch.Generator) -> torch.Tensor:
        if self.view_aug == "none":
            return x.clone()
        mean, std = (None, None) if not x.is_floating_point() else \
            loader_normalization(meta, self.mean, self.std)
        return augment_view(x, gen, mean, std, color=self.view_aug == "sim")

    def forward(self, streams: Mapping[str, Batch], ctx: StepContext) -> MixedBatch:
        bg, fg = streams["uniform"], streams["minority"]
        b = len(bg)
        fg_images, y_fg = fg.images[:b], fg.labels[:b]  # trim Q to the P batch (Streams P and Q)
        _, _, h, w = bg.images.shape
        gen, dev = ctx.generator, bg.labels.device
        if not gate_open(self.prob, gen):
            return self._clean(bg, gen)
        boxes, lam = resizemix_boxes(b, h, w, gen, per_sample=self.box == "sample",
                                     scale=self.scale)  # lam [B] = 1 − lf
        boxes, lam = boxes.to(dev), lam.to(dev)
        views = []
        for _ in range(self.views):  # same box, fresh augmentation of each component per view
            x = self._view(bg.images, bg.meta, gen)
            fg_view = self._view(fg_images, fg.meta, gen)
            views.append(resize_paste_(x, fg_view, boxes, validate=False))
        v = self.views
        y_bg = bg.labels.repeat(v)
        y_fg = y_fg.repeat(v)
        lam = lam.repeat(v)
        extras = {"y_fg": y_fg, "y_bg": y_bg, "lf": 1 - lam, "views": v,
                  "index": bg.index.repeat(v)}  # + "label_prior", by Mixer's forward hook
        return MixedBatch(torch.cat(views), y_bg, y_fg, lam, extras)

    def _clean(self, bg: Batch, gen: torch.Generator) -> MixedBatch:
        """A gated-off batch: the views of the backgrounds alone (lam = 1, y_fg = y_bg, lf = 0),
        so the SMC loss's F and B sets are both the anchor's class and X is empty."""
        v = self.views
        views = [self._view(bg.images, bg.meta, gen) for _ in range(v)]
        y = bg.labels.repeat(v)
        lam = torch.ones(len(y), dtype=torch.float32, device=y.device)
        extras = {"y_fg": y, "y_bg": y, "lf": 1 - lam, "views": v, "index": bg.index.repeat(v)}
        return MixedBatch(torch.cat(views), y, y, lam, extras)
