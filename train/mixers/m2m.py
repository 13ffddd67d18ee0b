"""M2m: major-to-minor translation (Kim et al., CVPR 2020; METHODS.md: M2m; alinlab/M2m train.py).

Before ``start_epoch`` (160 of 200 in the paper; default 0.8·E) the step is plain ERM on P. From
then on the batch comes from the class-balanced stream and every batch runs generation:
  G = {i : Bernoulli(1 − n_{y_i}/n_max)}, target k_i = y_i;
  seed j* ~ Cat(p_i·), p_ij = 1 − β^{(n_{y_j} − n_{k_i})+} (only strictly larger classes);
  x* = clamp(x_{j*} + δ, 0, 1), δ ~ U(−.5,.5) rescaled to L2 ≤ 0.5 per sample;
  T times: L = CE(g(x*), k) + λ·mean f(x*)[k0];  x* = clamp(x* − η·∇L/(‖∇L‖₂+1e-10), 0, 1);
  accept iff softmax(g(x*))[k] ≥ γ and Bernoulli(p_{i j*}) (rejection probability β^{(n_k0−n_k)+}).
Accepted (x*, k) replace (x_i, y_i); otherwise the real oversampled sample is kept.
g is a frozen classifier of an earlier ``ltpipe train`` run (param ``classifier``: its run
directory, or an ``nn.Module``); f is the model being trained (``ctx.model``). Both run in eval
mode during generation; only x* gets gradients (``torch.autograd.grad``: no parameter .grad).
Pixels: generation works on raw [0,1] pixels; ``mean``/``std`` (params, else ``batch.meta``, else
the loader's ImageNet statistics) undo and redo the loader's normalization. The gradient
normalization runs in fp32 (METHODS.md: Empty classes, ranks and precision).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ltpipe.pipeline import values
from ltpipe.pipeline.batch import Batch, MixedBatch
from ltpipe.train.mixers.base import Mixer, MixerEnv, StepContext
from ltpipe.train.mixers.view_aug import loader_normalization


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP/compiled wrappers: call the plain module


def _l2_per_sample(t: torch.Tensor) -> torch.Tensor:  # [B,...] -> [B,1,1,1]
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


class M2m(Mixer):
    streams = ("uniform", "balanced")
    # lam: the weight of f's term; eta: the step size on [0, 1] pixels; T: steps per batch
    RULES = {"beta": values.number(0, 1, hi_open=True),
             "lam": values.number(0, 1000), "gamma": values.number(0, 1, lo_open=True,
                                                                   hi_open=True),
             "eta": values.number(0, 1000), "T": values.integer(0, 1000, what="steps"),
             "start_epoch": values.integer(0, values.MAX_EPOCHS, optional=True),
             "mean": values.channel_stats(positive=False),
             "std": values.channel_stats(positive=True)}

    def __init__(self, env: MixerEnv, classifier: str | nn.Module | None = None,
                 beta: float = 0.999, lam: float = 0.5, gamma: float = 0.9, eta: float = 0.1,
                 T: int = 10, start_epoch: int | None = None, mean=None, std=None):
        values.check_values("mixer m2m", self.RULES, locals())
        super().__init__(env)
        if classifier is None:
            raise ValueError("mixer m2m: needs a frozen classifier g (param classifier / "
                             "--m2m-classifier RUN, a finished `ltpipe train` run directory)")
        if not isinstance(classifier, (str, nn.Module)):
            raise ValueError(f"mixer m2m: classifier must be a run directory or an nn.Module, "
                             f"got {classifier!r}")
        if isinstance(classifier, nn.Module):
            g = classifier
        else:
            from ltpipe.train.checkpoint import load_model

            g = load_model(str(classifier), env.device, num_classes=env.num_classes,
                           image_size=env.image_size, shards=env.shards)
        self.g = g.eval().requires_grad_(False)
        self.beta, self.lam, self.gamma, self.eta, self.T = float(beta), float(lam), float(gamma), \
            float(eta), int(T)
        self.start_epoch = int(round(0.8 * env.epochs)) if start_epoch is None else int(start_epoch)
        self.mean, self.std = mean, std
        counts = env.class_counts.clamp(min=1).to(torch.float32)  # max(n_k, 1): empty classes
        self.register_buffer("counts", counts, persistent=False)

    def mixes_in(self, epoch: int, epochs: int) -> bool:
        return epoch >= self.start_epoch

    def train(self, mode: bool = True):  # g stays frozen in eval mode whatever the trainer does
        super().train(mode)
        self.g.eval()
        return self

    def forward(self, streams: Mapping[str, Batch], ctx: StepContext) -> MixedBatch:
        if ctx.epoch < self.start_epoch:
            return MixedBatch.unmixed(streams["uniform"])
        batch = streams["balanced"]
        images, accepted, seeds = self.translate(batch, ctx)
        y = batch.labels
        lam = torch.ones(len(batch), dtype=torch.float32, device=y.device)
        return MixedBatch(images, y, y, lam,
                          {"index": batch.index, "accepted": accepted, "seed_labels": seeds,
                           "changed": accepted})

    # -- the pieces, public for tests ------------------------------------------------------
    def seed_probabilities(self, labels: torch.Tensor) -> torch.Tensor:
        """p [B,B]: p_ij = 1 − β^{(n_{y_j} − n_{y_i})+}, the chance to keep seed j for target i."""
        n = self.counts.to(labels.device)[labels].double()  # [B]; fp64: β^gap near 1
        gap = (n[None, :] - n[:, None]).clamp(min=0)
        if self.beta == 0:
            return (gap > 0).float()
        log_beta = torch.log(torch.tensor(self.beta, dtype=torch.float64))
        return (-torch.expm1(gap * log_beta)).float()

    def choose(self, labels: torch.Tensor, gen: torch.Generator):
        """Rows to generate (mask [B]), their seed rows j* [B] (−1 if none) and p_{i j*} [B]."""
        n = self.counts.to(labels.device)[labels]
        u = torch.rand(labels.shape[0], generator=gen, device=labels.device)
        generate = u < 1 - n / self.counts.max()
        p = self.seed_probabilities(labels)  # [B,B]
        generate &= p.sum(1) > 0  # no strictly larger class in the batch: keep the real sample
        seed = torch.full_like(labels, -1)
        p_seed = torch.zeros_like(n)
        if generate.any():
            rows = p[generate]
            seed[generate] = torch.multinomial(rows / rows.sum(1, keepdim=True), 1,
                                               generator=gen).squeeze(1)
            p_seed[generate] = rows.gather(1, seed[generate][:, None]).squeeze(1)
        return generate, seed, p_seed

    def translate(self, batch: Batch, ctx: StepContext):
        """-> images [B,3,H,W] (accepted rows replaced), accepted bool [B], seed labels [B] (−1)."""
        gen, y = ctx.generator, batch.labels
        generate, seed, p_seed = self.choose(y, gen)
        accepted = torch.zeros_like(generate)
        seed_labels = torch.where(generate, y[seed.clamp(min=0)], torch.full_like(y, -1))
        if not generate.any():
            return batch.images, accepted, seed_labels
        mean, std = self._norm(batch)
        raw = batch.images.float() * std + mean  # [B,3,H,W] pixels in [0,1]
        target, k0 = y[generate], y[seed[generate]]
        x_star = self._generate(raw[seed[generate]], target, k0, mean, std, ctx, gen)
        with torch.no_grad():
            conf = F.softmax(_logits(self.g, (x_star - mean) / std).float(), dim=1)
        conf = conf.gather(1, target[:, None]).squeeze(1)
        keep = torch.rand(p_seed[generate].shape, generator=gen, device=y.device) < p_seed[generate]
        ok = (conf >= self.gamma) & keep
        rows = generate.nonzero().squeeze(1)[ok]
        accepted[rows] = True
        images = batch.images.clone()
        images[rows] = ((x_star[ok] - mean) / std).to(images.dtype)
        return images, accepted, seed_labels

    def _generate(self, x0, target, k0, mean, std, ctx, gen) -> torch.Tensor:
        delta = torch.rand(x0.shape, generator=gen, device=x0.device) - 0.5
        delta = delta * (0.5 / _l2_per_sample(delta).clamp(min=1e-12)).clamp(max=1.0)
        x = (x0 + delta).clamp(0, 1)
        f = _unwrap(ctx.model) if ctx.model is not None else None
        was_training = f.training if f is not None else False
        if f is not None:
            f.eval()
        try:
            with torch.enable_grad():
                for _ in range(self.T):
                    x = x.detach().requires_grad_(True)
                    xn = (x - mean) / std
                    loss = F.cross_entropy(_logits(self.g, xn).float(), target)
                    if f is not None:
                        seed_logit = _logits(f, xn).float().gather(1, k0[:, None])  # [m,1]
                        loss = loss + self.lam * seed_logit.mean()
                    (grad,) = torch.autograd.grad(loss, x)
                    step = grad.float() / (_l2_per_sample(grad.float()) + 1e-10)
                    x = (x.detach() - self.eta * step).clamp(0, 1)
        finally:
            if f is not None:
                f.train(was_training)
        return x.detach()

    def _norm(self, batch: Batch):
        mean, std = loader_normalization(batch.meta, self.mean, self.std)
        dev = batch.images.device
        return (torch.as_tensor(mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1),
                torch.as_tensor(std, dtype=torch.float32, device=dev).view(1, -1, 1, 1))

    def extra_repr(self) -> str:
        return (f"streams={self.streams}, start_epoch={self.start_epoch}, beta={self.beta}, "
                f"lam={self.lam}, gamma={self.gamma}, eta={self.eta}, T={self.T}")
