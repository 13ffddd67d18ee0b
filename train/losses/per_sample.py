"""Per-sample base losses ℓ(logits [B,C], y [B]) -> [B] (train/METHODS.md, Losses).

- ``ce``: cross-entropy.
- ``ldam``: CE(s·(z − Δ_y·onehot(y)), y), Δ_k ∝ n_k^{−1/4} scaled to max Δ = 0.5, s = 30
  [CMO repo, losses.py LDAMLoss]; meant for the cosine classifier.
- ``bs``: Balanced Softmax, CE(z + log π, y) [SMC paper Eq.5].
- ``la``: logit adjustment, CE(z + τ·log π, y), τ = 1 by default.
  bs and la take ``prior``: "data" corrects by the data's π (above), "mixed" by the expected
  distribution of the mixed labels that the mixer declares on its batches (``losses.prior``).
- ``focal``: (1 − p_y)^γ·CE with γ = 1 [m2m:config.py] (no ×10 factor of the CMO repo).
The prior shift of bs/la applies in training only; evaluation reads raw logits.
All math runs in fp32 on whatever device the logits are on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ltpipe.pipeline import values
from ltpipe.train.class_counts import check_class_counts, check_logits
from ltpipe.train.losses.prior import PRIORS, data_prior, log_prior
from ltpipe.train.params import check_params


class CrossEntropy(nn.Module):
    def __init__(self, class_counts: torch.Tensor):
        super().__init__()
        self.num_classes = check_class_counts("loss 'ce'", class_counts)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_logits("loss 'ce'", logits, self.num_classes, y)
        return F.cross_entropy(logits.float(), y, reduction="none")


class LDAM(nn.Module):
    # margins on cosine logits in [-1, 1]; the scale multiplies them (fp32 stays finite)
    RULES = {"max_margin": values.number(0, 10, lo_open=True),
             "scale": values.number(0, 1000, lo_open=True)}

    def __init__(self, class_counts: torch.Tensor, max_margin: float = 0.5, scale: float = 30.0):
        values.check_values("loss 'ldam'", self.RULES, locals())
        super().__init__()
        self.num_classes = check_class_counts("loss 'ldam'", class_counts)
        margins = class_counts.double().clamp_min(1).pow(-0.25)
        self.register_buffer("margins", (margins * (max_margin / margins.max())).float())
        self.scale = scale

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_logits("loss 'ldam'", logits, self.num_classes, y)
        z = logits.float()
        shifted = z.scatter_add(1, y[:, None], -self.margins[y][:, None])  # z − Δ_y at column y
        return F.cross_entropy(self.scale * shifted, y, reduction="none")


class LogitAdjusted(nn.Module):
    """CE on z + τ·log P; τ = 1 is Balanced Softmax.

    ``prior="data"``: P = π, the training data's class distribution (the CMO repo's Balanced
    Softmax). ``prior="mixed"``: P = the expected class distribution of the mixed labels, which
    the mixer declares on each batch (``extras["label_prior"]``); the criterion passes it in.
    Mixing flattens the labels, so correcting them by π over-corrects (train/METHODS.md, SMC).
    """

    # a negative τ favours the head, the opposite of the correction; τ·log π beyond 100 times
    # the prior's log only saturates the softmax
    RULES = {"tau": values.number(0, 100), "prior": values.choice(*PRIORS)}

    def __init__(self, class_counts: torch.Tensor, tau: float = 1.0, prior: str = "data"):
        values.check_values("loss 'la'", self.RULES, locals())
        super().__init__()
        self.num_classes = check_class_counts("loss 'la'", class_counts)
        self.tau, self.prior = float(tau), prior
        self.reads_label_prior = prior == "mixed"
        self.register_buffer("shift", self.tau * log_prior(data_prior(class_counts)))

    def forward(self, logits: torch.Tensor, y: torch.Tensor,
                label_prior: torch.Tensor | None = None) -> torch.Tensor:
        check_logits("loss 'la'", logits, self.num_classes, y)
        shift = self.shift
        if self.reads_label_prior:
            if label_prior is None:
                raise ValueError("loss: prior='mixed' needs a mixer that declares the label "
                                 "distribution of its batches (smc, cmo, otmix do); use "
                                 "prior='data'")
            shift = self.tau * label_prior.float().log()
        return F.cross_entropy(logits.float() + shift, y, reduction="none")


class Focal(nn.Module):
    RULES = {"gamma": values.number(0, 100)}  # (1 − p)^γ: at γ = 100 only p < 0.05 counts

    def __init__(self, class_counts: torch.Tensor, gamma: float = 1.0):
        values.check_values("loss 'focal'", self.RULES, locals())
        super().__init__()
        self.num_classes = check_class_counts("loss 'focal'", class_counts)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_logits("loss 'focal'", logits, self.num_classes, y)
        ce = F.cross_entropy(logits.float(), y, reduction="none")
        return (1 - torch.exp(-ce)).pow(self.gamma) * ce


# name -> (class, the params its constructor accepts besides class_counts)
BASE_LOSSES: dict[str, type[nn.Module]] = {
    "ce": CrossEntropy,
    "ldam": LDAM,
    "bs": LogitAdjusted,
    "la": LogitAdjusted,
    "focal": Focal,
}
NEEDS_COSINE = frozenset({"ldam"})
# losses that read the train counts n_k (LDAM margins ∝ n_k^{-1/4}, BS/LA priors π_k = n_k/N)
NEEDS_COUNTS = frozenset({"ldam", "bs", "la"})


def build_base_loss(name: str, class_counts: torch.Tensor, **params) -> nn.Module:
    if name not in BASE_LOSSES:
        raise ValueError(f"loss: unknown {name!r} (choose from {', '.join(BASE_LOSSES)})")
    if name == "bs" and "tau" in params:
        raise ValueError("loss: 'bs' is logit adjustment with tau=1; use 'la' to set tau")
    check_params(f"loss {name!r}", BASE_LOSSES[name], params, skip=("class_counts",))
    return BASE_LOSSES[name](class_counts, **params)
