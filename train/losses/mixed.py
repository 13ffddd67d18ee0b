"""The mixed-label loss for a training loop of one's own: lam·ℓ(y_a) + (1−lam)·ℓ(y_b).

ltpipe's trainer uses ``Criterion`` (class weights, auxiliary terms); this is the same label rule
for any criterion, e.g. ``mixed_loss(F.cross_entropy, logits, mixed)``. ``lam`` is the weight of
y_a, the background's label (train/METHODS.md, conventions).
"""

from __future__ import annotations

from typing import Callable

import torch

from ltpipe.pipeline.batch import MixedBatch


def mixed_loss(criterion: Callable[..., torch.Tensor], logits: torch.Tensor,
               mixed: MixedBatch) -> torch.Tensor:
    """Mean over the batch of lam_i·ℓ(logits_i, y_a_i) + (1−lam_i)·ℓ(logits_i, y_b_i).

    ``criterion(logits, targets)`` returns per-sample losses [B] or their mean. One that takes a
    ``reduction`` keyword (``F.cross_entropy``) is asked for ``reduction="none"``. A mean is exact
    when lam is the same for every row (one box per batch) and refused otherwise. A loss corrected
    by the mixed labels' prior (``build_base_loss("la", counts, prior="mixed")``) gets the prior
    the mixer declared on the batch (``mixed.extras["label_prior"]``), as in ltpipe's trainer.
    """
    rows = logits.shape[0] if isinstance(logits, torch.Tensor) and logits.dim() == 2 else None
    for name in ("y_a", "y_b", "lam"):  # a [B] each, row for row with the logits
        t = getattr(mixed, name)
        if rows is None or not isinstance(t, torch.Tensor) or tuple(t.shape) != (rows,):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"mixed_loss: logits must be [batch, classes] and mixed.{name} "
                             f"[batch], got logits {tuple(getattr(logits, 'shape', ()))} and "
                             f"{name} {got}")
    lam = mixed.lam.to(torch.float32)  # [B]
    extra = {"label_prior": mixed.extras.get("label_prior")} \
        if getattr(criterion, "reads_label_prior", False) else {}
    loss_a = _per_sample(criterion, logits, mixed.y_a, extra)
    if mixed.y_b is mixed.y_a:  # an unmixed batch: lam = 1
        return loss_a.mean()
    loss_b = _per_sample(criterion, logits, mixed.y_b, extra)
    if loss_a.dim() == 0:
        if not bool((lam == lam[0]).all()):
            raise ValueError("mixed_loss: the criterion returns one value per batch, but lam "
                             "differs between rows; give it reduction='none'")
        lam = lam[0]
    return (lam * loss_a + (1 - lam) * loss_b).mean()


def _per_sample(criterion, logits: torch.Tensor, targets: torch.Tensor,
                extra: dict) -> torch.Tensor:
    if extra:  # ltpipe's own per-sample losses: no reduction keyword
        return criterion(logits, targets, **extra)
    try:
        return criterion(logits, targets, reduction="none")
    except TypeError:  # no ``reduction`` keyword (an nn.Module, or a user's function)
        return criterion(logits, targets)
