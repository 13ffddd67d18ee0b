"""Losses: per-sample base losses, class re-weighting, the mixed-label wrapper and auxiliary terms.

Public names: ``mixed_loss`` (lam·ℓ(y_a) + (1−lam)·ℓ(y_b) for any criterion, for a loop of one's
own), ``build_base_loss`` (ce, ldam, bs, la, focal by name), ``ClassWeights`` (none, inverse,
drw), ``Criterion`` (what ltpipe's trainer uses: weights and auxiliary terms), ``SMCLoss`` and
the ``ModelOutput`` / ``LossOutput`` records.
"""

from ltpipe.train.losses.base import LossOutput, ModelOutput
from ltpipe.train.losses.criterion import Criterion
from ltpipe.train.losses.mixed import mixed_loss
from ltpipe.train.losses.per_sample import build_base_loss
from ltpipe.train.losses.smc import SMCLoss
from ltpipe.train.losses.weights import ClassWeights

__all__ = ["ClassWeights", "Criterion", "LossOutput", "ModelOutput", "SMCLoss",
           "build_base_loss", "mixed_loss"]
