"""SMC's supervised contrastive loss on mixed classes (Jeong & Kim, arXiv 2211.11938;
train/METHODS.md, SMC).

All 2B embeddings (two views of B mixed images) are anchors. For anchor i, over j ≠ i:
  F_i = {j : y_fg_j = y_fg_i}, B_i = {j : y_bg_j = y_bg_i},
  X_i = {j ∉ F_i ∪ B_i : y_fg_j = y_bg_i or y_bg_j = y_fg_i};
  ℓ_i(S) = −(1/|S|) Σ_{p∈S} [z_i·z_p/τ − logsumexp_{j≠i} z_i·z_j/τ]  (0 if S is empty),
  L_T = (1/2B) Σ_i ℓ_i(T_i),  L_SMC = (lf·L_F + (1−lf)·L_B + 0.5·L_X) / 1.5   [SMC paper Eq.4].
lf is the foreground ratio (one per batch by default, or per anchor). Similarities run in fp32
(train/METHODS.md, Conventions › Empty classes, ranks and precision) whatever the autocast
dtype. The term is weighted by η = 0.1 (``weight``) [SMC paper §4.2].
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ltpipe.pipeline import values

TEMPERATURE = 0.1  # τ [SMC paper §3.2]
ETA = 0.1  # η [SMC paper Eq.6, §4.2]
PROJ_DIM = 128  # projection output width [SMC paper §4.2]


class ProjectionHead(nn.Module):
    """Linear(D,D)–ReLU–Linear(D,128), then L2 normalisation (hidden width = input width
    [SMC paper §4.2])."""

    def __init__(self, feature_dim: int, out_dim: int = PROJ_DIM):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(feature_dim, feature_dim), nn.ReLU(inplace=True),
            nn.Linear(feature_dim, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # [N,D] -> [N,128], unit norm
        return F.normalize(self.net(features).float(), dim=1)


def positive_masks(y_fg: torch.Tensor, y_bg: torch.Tensor):
    """Boolean [N,N] masks (F, B, X) of positives for each anchor row; the diagonal is excluded."""
    n = y_fg.shape[0]
    not_self = ~torch.eye(n, dtype=torch.bool, device=y_fg.device)
    same_fg = (y_fg[:, None] == y_fg[None, :]) & not_self
    same_bg = (y_bg[:, None] == y_bg[None, :]) & not_self
    cross = (y_fg[None, :] == y_bg[:, None]) | (y_bg[None, :] == y_fg[:, None])
    cross = cross & not_self & ~same_fg & ~same_bg
    return same_fg, same_bg, cross


def smc_terms(z: torch.Tensor, y_fg: torch.Tensor, y_bg: torch.Tensor,
              temperature: float = TEMPERATURE) -> dict[str, torch.Tensor]:
    """Per-anchor ℓ_i(F_i), ℓ_i(B_i), ℓ_i(X_i), each [N] (N = 2B), computed in fp32 or fp64."""
    if z.dtype not in (torch.float32, torch.float64):
        z = z.float()
    n = z.shape[0]
    sim = z @ z.t() / temperature  # [N,N]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    # log p(j | i) over j ≠ i: the anchor itself is excluded from the denominator
    lse = torch.logsumexp(sim.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    log_prob = (sim - lse).masked_fill(self_mask, 0.0)  # [N,N]
    out = {}
    for name, mask in zip(("F", "B", "X"), positive_masks(y_fg, y_bg)):
        size = mask.sum(1)  # [N]
        total = (log_prob * mask).sum(1)
        out[name] = torch.where(size > 0, -total / size.clamp(min=1), torch.zeros_like(total))
    return out


def smc_loss(z: torch.Tensor, y_fg: torch.Tensor, y_bg: torch.Tensor, lf: torch.Tensor | float,
             temperature: float = TEMPERATURE) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_SMC of [SMC paper Eq.4] and its (L_F, L_B, L_X) parts. lf: scalar or per-anchor [N]."""
    terms = smc_terms(z, y_fg, y_bg, temperature)
    lf = torch.as_tensor(lf, dtype=terms["F"].dtype, device=z.device)
    per_anchor = (lf * terms["F"] + (1 - lf) * terms["B"] + 0.5 * terms["X"]) / 1.5  # [N]
    parts = {f"L_{k}": v.mean() for k, v in terms.items()}
    return per_anchor.mean(), parts


class SMCLoss(nn.Module):
    """The auxiliary SMC term: reads the projection head's output ``out.extras[head_name]`` and the
    SMC mixer's ``extras`` {"y_fg", "y_bg", "lf"} (both [2B] / scalar). Returns the *unweighted*
    L_SMC; the composite loss multiplies by ``weight`` (η)."""

    # similarities of unit vectors are in [-1, 1]: divided by τ >= 0.001 they stay finite in
    # fp32 softmaxes
    RULES = {"feature_dim": values.integer(1), "weight": values.number(0, 1000),
             "temperature": values.number(0.001, 100), "proj_dim": values.integer(1, 65536),
             "head_name": values.text()}

    def __init__(self, env, feature_dim: int, weight: float = ETA, temperature: float = TEMPERATURE,
                 proj_dim: int = PROJ_DIM, head_name: str = "smc"):
        values.check_values("aux smc", self.RULES, locals())
        super().__init__()
        self.env = env
        self.feature_dim = int(feature_dim)
        self.weight = float(weight)
        self.temperature = float(temperature)
        self.proj_dim = int(proj_dim)
        self.head_name = head_name

    def make_head(self) -> nn.Module:
        return ProjectionHead(self.feature_dim, self.proj_dim)

    def forward(self, out, mixed, ctx=None) -> torch.Tensor:
        if self.head_name not in out.extras:
            raise ValueError(f"aux smc: the model output has no head {self.head_name!r} "
                             f"(heads: {sorted(out.extras)})")
        ex = mixed.extras
        if "y_fg" not in ex or "y_bg" not in ex:
            # Not an SMC batch (e.g. an unmixed step): foreground = background = label.
            y_fg, y_bg, lf = mixed.y_b, mixed.y_a, 1.0 - mixed.lam
        else:
            y_fg, y_bg, lf = ex["y_fg"], ex["y_bg"], ex.get("lf", 0.5)
        with torch.autocast(device_type=out.logits.device.type, enabled=False):
            loss, _ = smc_loss(out.extras[self.head_name], y_fg, y_bg, lf, self.temperature)
        return loss
