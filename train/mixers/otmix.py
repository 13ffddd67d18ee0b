"""OTmix: OT-guided minority mixing (Gao et al., "Enhancing Minority Classes by Mixing", NeurIPS'23;
METHODS.md: OTmix; Streams P and Q; repo JintongGao/Enhancing-Minority-Classes-by-Mixing).

Background ~ P ("uniform"), foreground ~ Q ("minority", r = ``fg_r``). Per epoch t (0-indexed)
``use_ot ~ Bernoulli((t/T)^μ)`` is drawn once (repo), from a generator seeded by (seed, epoch)
only, so every DDP rank agrees and a resumed epoch redraws the same value. When mixing is
active (``mix_schedule``; per-batch gate ``prob``, by default 1.0 under "paper", the paper's
every batch, and 0.5 otherwise, the repo's; a prob given explicitly wins):
  OT step (use_ot and a confusion matrix F̂ exists):
    C[j,i] = ω·(1 − cos(zf_j, zb_i)) + (1−ω)·(1 − F̂[y_fg_j, y_bg_i])   rows fg j, cols bg i
    π(j) = argmax_i T[j,i], T = Sinkhorn_ε(C, a = 1/m, b = 1/B)   (``ltpipe.kernels.sinkhorn``)
  else a CMO step: π(j) = j.
  lam0 ~ Beta(α,α), one CMO box per batch (``box``); x̃_j = x_bg[π(j)] with the box of x_fg[j];
  y_a = y_bg[π(j)], y_b = y_fg[j], lam = 1 − area/HW.
``confusion_index="fg_bg"`` indexes F̂[y_fg, y_bg] (repo: F̂[true fg, predicted bg]); "bg_fg" is
the paper's Eq.6–7 reading F̂[y_bg, y_fg]. ``fraction`` < 1 mixes only round(fraction·B) random
rows (the others stay plain x_bg[j]) [004 Table 7].
The gate, λ₀, the boxes and the mixed rows are a mix plan drawn on the host (pipeline/mix_plan.py):
in bank mode the loader decodes only Q's boxes (``Batch.tiles``); exact mode reads whole
foregrounds for their features, so its Q stays fully decoded. Both modes use the loader's
decoded cache of Q (pipeline/q_cache.py): in bank mode its rows' boxes are pasted from it, as for
CMO; in exact mode the loader resizes their whole crops from it into Q's images.

Features z (pooled penultimate, ``model.features``), ``mode``:
  "exact": two no-grad forwards of the current model on x_bg and x_fg (the paper: no grad,
           the model keeps its train mode, so BatchNorm running stats see them as in the repo).
  "bank":  no extra forward. A buffer [N, D] (``bank_dtype``) keeps, per sample id, the features of
           that sample's last *unmixed* appearance in a training forward (``observe``, called by the
           trainer after the forward; under DDP every rank stores every rank's rows, so all banks
           are equal). Staleness: a feature is from the weights of that step, on average up to
           ~1/(1 − p_mix) epochs old (p_mix = prob when active, so about two epochs with the
           repo's p = 0.5); ids never seen unmixed have a zero feature, i.e. a constant sample
           cost ω (only the class term decides for them). The bank is checkpointed (exact resume;
           iNat at fp32: 3.6 GB per checkpoint, so ``bank_dtype="float16"`` halves it).
F̂ refreshes in ``on_epoch_start`` (only in epochs that can take an OT step), ``confusion.py``.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ltpipe.pipeline import values
from ltpipe.pipeline.batch import Batch, MixedBatch
from ltpipe.pipeline.mix_plan import PlanSpec, host_to_device
from ltpipe.shards.format import SPLITS
from ltpipe.train.mixers import confusion as conf
from ltpipe.train.mixers.base import Mixer, MixerEnv, StepContext, active_in_epoch, resolve_prob
from ltpipe.train.mixers.cutmix import BOX_RULES, minority_paste_prior, paste_planned_, step_plan

log = logging.getLogger(__name__)
MODES = ("exact", "bank")
INDEXINGS = ("fg_bg", "bg_fg")
BANK_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def ot_probability(epoch: int, epochs: int, mu: float) -> float:
    """(t/T)^μ, the chance that epoch t takes OT steps [004 §4]."""
    return (epoch / epochs) ** mu if epochs > 0 else 0.0


def draw_use_ot(seed: int, epoch: int, epochs: int, mu: float) -> bool:
    u = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x07])).random()
    return bool(u < ot_probability(epoch, epochs, mu))


def ot_cost(zf: torch.Tensor, zb: torch.Tensor, y_fg: torch.Tensor, y_bg: torch.Tensor,
            fhat: torch.Tensor, omega: float, indexing: str = "fg_bg") -> torch.Tensor:
    """C [m, B] fp32: ω(1 − cos(zf_j, zb_i)) + (1−ω)(1 − F̂[·,·]); zero features give cos = 0."""
    cos = F.normalize(zf.float(), dim=1) @ F.normalize(zb.float(), dim=1).t()  # [m,B]
    if indexing == "fg_bg":
        f = fhat[y_fg[:, None], y_bg[None, :]]  # [m,B]: F̂[y_fg_j, y_bg_i]
    else:
        f = fhat[y_bg[None, :], y_fg[:, None]]  # [m,B]: F̂[y_bg_i, y_fg_j]
    return omega * (1 - cos) + (1 - omega) * (1 - f.float())


def ot_pairs(cost: torch.Tensor, eps: float) -> torch.Tensor:
    """π [m] int64: argmax_i of the entropic plan's row j (ties -> lowest i), a = 1/m, b = 1/B."""
    from ltpipe.kernels.sinkhorn import sinkhorn_argmax

    return sinkhorn_argmax(cost.float(), eps=eps)


def _autocast_like(images: torch.Tensor):
    """The mixer runs outside the trainer's autocast: half-precision CUDA images (mixed-precision
    training) need autocast for the feature forwards; fp32 images run in fp32."""
    half = images.dtype in (torch.float16, torch.bfloat16) and images.is_cuda
    return torch.autocast("cuda", dtype=images.dtype, enabled=half) if half else nullcontext()


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


class OTMix(Mixer):
    streams = ("uniform", "minority")
    # eps: Sinkhorn's regularisation, on costs in [0, 2] (fp32 -C/eps stays finite above 1e-6);
    # mu: the exponent of (t/T)^mu
    RULES = {**BOX_RULES, "prob": values.OPTIONAL_PROB, "fg_r": values.FG_R,
             "mode": values.choice(*MODES), "omega": values.PROB,
             "eps": values.number(1e-6, 1000), "mu": values.number(0, 1000),
             "confusion_split": values.choice(*SPLITS),  # a manifest's split names
             "confusion_index": values.choice(*INDEXINGS),
             "fraction": values.number(0, 1, lo_open=True),
             "confusion_per_class": values.integer(1, 1_000_000),
             "preset": values.choice("cifar", "imagenet", optional=True),
             "bank_dtype": values.choice(*BANK_DTYPES)}

    def __init__(self, env: MixerEnv, mode: str = "exact", omega: float = 0.05, eps: float = 0.01,
                 alpha: float = 4.0, mu: float = 1.0, confusion_split: str = "val",
                 confusion_index: str = "fg_bg", fraction: float = 1.0,
                 prob: float | None = None, mix_schedule: str = "repo", box: str = "batch",
                 fg_r: float = 1.0, confusion_per_class: int = 20, preset: str | None = None,
                 bank_dtype: str = "float32"):
        values.check_values("mixer otmix", self.RULES, locals())
        super().__init__(env)
        prob = resolve_prob(prob, mix_schedule)  # default: 1.0 under "paper", else 0.5
        self.mode, self.omega, self.eps, self.alpha, self.mu = mode, float(omega), float(eps), \
            float(alpha), float(mu)
        self.confusion_split, self.confusion_index = confusion_split, confusion_index
        self.fraction, self.prob, self.mix_schedule, self.box = float(fraction), float(prob), \
            mix_schedule, box
        self.fg_r = float(fg_r)
        self.confusion_per_class = int(confusion_per_class)
        self.preset = preset or ("cifar" if env.image_size <= 64 else "imagenet")
        self.bank_dtype = BANK_DTYPES[bank_dtype]  # float16 halves the bank (iNat: 3.6 -> 1.8 GB)
        c = env.num_classes
        self.register_buffer("fhat", torch.zeros(c, c, device=env.device))  # F̂ [C,C]
        self.register_buffer("has_fhat", torch.zeros((), dtype=torch.bool, device=env.device))
        self.force_ot: bool | None = None  # tests: override the epoch's draw
        self._fhat_cache: tuple[int, bool] | None = None  # (epoch, has_fhat)
        self._draw: tuple[int, bool] | None = None  # (epoch, use_ot)
        self.last_counts: torch.Tensor | None = None  # int64 [C,C] of the last refresh
        # bank mode: [N + 1, D] and bool [N + 1], allocated on the first observe (D is the
        # model's); buffers, so that checkpoints hold them. Row N is a sink: rows that are not
        # stored (mixed ones) are written there, so no write races a stored one for an id and
        # no host sync selects the stored rows.
        self.register_buffer("bank", None)
        self.register_buffer("bank_seen", None)
        self._stored: torch.Tensor | None = None  # rows stored this epoch (on the device)
        if mode == "bank" and prob == 1.0 and fraction == 1.0 and mix_schedule == "always":
            log.warning("warning: otmix bank mode with prob=1, fraction=1 and mix_schedule="
                        "'always' never sees an unmixed row: the bank stays empty and only the "
                        "class term of the cost decides")
        self._loader = None
        self._keep_ids = None

    # -- per epoch ---------------------------------------------------------------------------
    def use_ot_in(self, epoch: int, epochs: int) -> bool:
        """The epoch's OT draw (a pure function of seed and epoch, so resuming redraws it)."""
        if self._draw is None or self._draw[0] != epoch:
            self._draw = (epoch, draw_use_ot(self.env.seed, epoch, epochs, self.mu))
        return self._draw[1] if self.force_ot is None else self.force_ot

    def _fhat_ready(self, epoch: int) -> bool:
        """bool(has_fhat), read from the device once per epoch: a read every step would block
        the host on the GPU every step."""
        if self._fhat_cache is None or self._fhat_cache[0] != epoch:
            self._fhat_cache = (epoch, bool(self.has_fhat))
        return self._fhat_cache[1]

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> None:
        # one read of the device per epoch
        if self.mode == "bank" and epoch > 0 and (self._stored is None or int(self._stored) == 0):
            log.warning("otmix bank mode: no features were stored last epoch (every row was mixed, "
                        "or the trainer did not call mixer.observe(out, mixed) after the forward)")
        self._stored = None
        # F̂ is needed only in epochs that can take an OT step; epoch 0 has no trained model yet.
        needed = self.use_ot_in(epoch, ctx.epochs) and epoch > 0 and \
            active_in_epoch(epoch, ctx.epochs, self.mix_schedule)
        if needed and ctx.model is not None:
            self.refresh_confusion(_unwrap(ctx.model), epoch)

    def refresh_confusion(self, model: nn.Module, epoch: int = 0, steps=None) -> None:
        """F̂ from the current model on the confusion split (``steps`` overrides the loader)."""
        keep = None
        if steps is None:
            steps, keep = self._confusion_steps(epoch)
        counts = conf.confusion_counts(model, steps, self.env.num_classes, self.fhat.device, keep)
        counts = conf.all_reduce_counts(counts, self.env.world)
        self.last_counts = counts
        self.fhat.copy_(conf.confusion_matrix(counts))
        self.has_fhat.fill_(True)
        self._fhat_cache = None

    def _confusion_steps(self, epoch: int):
        from ltpipe.pipeline.loader import make_loader

        if self.env.shards is None:
            raise ValueError("mixer otmix: needs a shard directory for the confusion split")
        if self._loader is None:
            split = self.confusion_split
            size = conf.split_size(self.env.shards, split)
            if size is None:
                log.warning("otmix: %s has no split %r; confusion from min(n_k, %d) train samples "
                            "per class", self.env.shards, split, self.confusion_per_class)
                from ltpipe.pipeline.shardset import open_split

                labels = open_split(self.env.shards, "train", validate=False).labels
                ids = conf.subset_ids(labels, self.confusion_per_class, self.env.seed)
                self._keep_ids = torch.from_numpy(ids).to(self.env.device)
                split, size = "train", len(labels)
            batch = max(1, min(self.env.batch_size, size // self.env.world))  # small val splits
            self._loader = make_loader(
                self.env.shards, split=split, batch_size=batch, streams=("uniform",),
                device=self.env.device.type, preset=self.preset, image_size=self.env.image_size,
                seed=self.env.seed, rank=self.env.rank, world=self.env.world, epoch=epoch,
                skip_corrupt=self.env.skip_corrupt)
        if self._keep_ids is not None:
            self._loader.set_epoch(epoch)
        return self._loader, self._keep_ids

    # -- per step ----------------------------------------------------------------------------
    @property
    def mix_plan(self) -> PlanSpec:
        """The declaration the loader draws this mixer's plans by. Bank mode reads only Q's
        boxes (tiles); exact mode needs Q's whole images for their features."""
        return PlanSpec(prob=self.prob, mix_schedule=self.mix_schedule, epochs=self.env.epochs,
                        alpha=self.alpha, per_sample=self.box == "sample",
                        fraction=self.fraction, tiles=self.mode == "bank")

    def label_prior(self, height: int, width: int):
        """P_mix of OTmix's labels, for ``prior="mixed"`` losses (METHODS.md: Losses)."""
        b = self.env.batch_size  # the plan mixes max(1, round(fraction·B)) rows of B
        rows = max(1, round(self.fraction * b)) / b
        return minority_paste_prior(self, height, width, mixed_rows=rows)

    def forward(self, streams: Mapping[str, Batch], ctx: StepContext) -> MixedBatch:
        bg, fg = streams["uniform"], streams["minority"]
        b, dev = len(bg), bg.labels.device
        plan = step_plan(self, self.mix_plan, streams, ctx) if \
            active_in_epoch(ctx.epoch, ctx.epochs, self.mix_schedule) else None
        rows = np.flatnonzero(plan.mixed[:b]) if plan is not None else np.zeros(0, np.int64)
        if rows.size == 0:  # outside the window, gate off (the plan is on the host: no sync)
            return MixedBatch.unmixed(bg, mixed=torch.zeros(b, dtype=torch.bool, device=dev))
        y_fg, fg_index = fg.labels[:b], fg.index[:b]  # trim Q to P's size
        rows = host_to_device(rows, dev)  # mixed rows [m]
        base = torch.arange(b, device=dev)  # π: background row of every output row
        ot = self.use_ot_in(ctx.epoch, ctx.epochs) and self._fhat_ready(ctx.epoch)
        if ot:
            zb, zf = self.features(bg, fg, rows, ctx)
            cost = ot_cost(zf, zb, y_fg[rows], bg.labels, self.fhat, self.omega,
                           self.confusion_index)  # [m,B]
            base[rows] = ot_pairs(cost, self.eps).to(dev)
        images = bg.images[base] if ot else bg.images  # CMO step: paste in place, like CMO
        boxes, lam, mixed = paste_planned_(images, fg, plan, b)  # unmixed rows: empty boxes
        y_a = bg.labels[base]
        y_b = torch.where(mixed, y_fg, y_a)
        extras = {"index": bg.index[base], "fg_index": fg_index, "pairs": base, "mixed": mixed,
                  "ot": ot, "boxes": boxes}
        return MixedBatch(images, y_a, y_b, lam, extras)

    @torch.no_grad()
    def features(self, bg: Batch, fg: Batch, rows: torch.Tensor, ctx: StepContext):
        """(zb [B,D] of all backgrounds, zf [m,D] of the mixed foreground rows)."""
        if self.mode == "exact":
            model = _unwrap(ctx.model)
            with _autocast_like(bg.images):
                return model.features(bg.images).float(), model.features(fg.images[rows]).float()
        return self._lookup(bg.index), self._lookup(fg.index[rows])

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self.bank is None:  # nothing observed yet: zero features (cos = 0 everywhere)
            return torch.zeros(ids.shape[0], 1, device=ids.device)
        return self.bank[ids.to(self.bank.device)].float()

    @torch.no_grad()
    def observe(self, out, mixed: MixedBatch) -> None:
        """Bank mode: store the features of the rows that were not mixed (images = x_bg[id]).

        Called by the trainer after the model's forward; ``out.features`` [B,D]. No host sync."""
        if self.mode != "bank" or out.features is None or "index" not in mixed.extras:
            return
        feats, ids = out.features.detach(), mixed.extras["index"]
        plain = ~mixed.extras.get("mixed", torch.zeros_like(ids, dtype=torch.bool))
        if self.bank is None:
            self._allocate_bank(feats.shape[1], feats.device)
        feats, ids, plain = self._from_all_ranks(feats.to(self.bank.dtype), ids, plain)
        sink = self.bank.shape[0] - 1
        target = torch.where(plain, ids.to(plain.device), sink).to(self.bank.device)
        self.bank[target] = feats
        self.bank_seen[target] = plain.to(self.bank_seen.device)  # the sink's stays False
        stored = plain.sum()
        self._stored = stored if self._stored is None else self._stored + stored

    def _allocate_bank(self, dim: int, device) -> None:
        n = int(self.env.class_counts.sum()) + 1  # + the sink row
        self.bank = torch.zeros(n, dim, device=device, dtype=self.bank_dtype)
        self.bank_seen = torch.zeros(n, dtype=torch.bool, device=device)

    def set_bank(self, features: torch.Tensor) -> None:
        """Bank mode: features [N, D] of every sample (benchmarks: a late epoch's state)."""
        self._allocate_bank(features.shape[1], features.device)
        self.bank[:-1] = features
        self.bank_seen[:-1] = True

    def _from_all_ranks(self, feats, ids, plain):
        """Under DDP, every rank's (features, ids, unmixed) rows, padded to the per-rank batch
        size (a last batch may be shorter) with rows marked mixed, so they are not stored."""
        world = self.env.world
        if world == 1 or not torch.distributed.is_initialized():
            return feats, ids, plain
        b = self.env.batch_size
        pad = b - ids.shape[0]
        if pad:
            feats = torch.cat([feats, feats.new_zeros(pad, feats.shape[1])])
            ids = torch.cat([ids, ids.new_zeros(pad)])
            plain = torch.cat([plain, plain.new_zeros(pad)])
        rows = torch.stack([ids.to(torch.int64), plain.to(torch.int64)], dim=1)  # [b, 2]
        gathered = []
        for t in (feats, rows):  # two collectives per step: features, then (id, unmixed)
            out = t.new_empty((world * b, *t.shape[1:]))
            torch.distributed.all_gather_into_tensor(out, t.contiguous())
            gathered.append(out)
        return gathered[0], gathered[1][:, 0], gathered[1][:, 1].bool()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        bank = state_dict.get(prefix + "bank")
        if bank is not None and self.bank is None:  # a resumed run: allocate, then load
            self._allocate_bank(bank.shape[1], self.fhat.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"mode={self.mode}, omega={self.omega}, eps={self.eps}, alpha={self.alpha}, "
                f"mu={self.mu}, fraction={self.fraction}, prob={self.prob}, "
                f"mix_schedule={self.mix_schedule!r}, confusion_split={self.confusion_split!r}")
