"""A diverging run stops: the first step whose loss is nan or inf ends training with one line.

Left alone, a run whose loss turned nan (``--lr`` far too high) trains on for its remaining
epochs with nan weights and ends looking finished, its results those of a constant classifier.
``DivergenceWatch`` notes the first such step on the device, with no host sync per step, and is
read at fixed steps: after every step on the CPU (where a read costs nothing), every
``CUDA_CHECK_STEPS`` steps on CUDA, and always before a checkpoint, an epoch's metrics line or the
final results, which also check that the weights and BatchNorm statistics are finite. So no
checkpoint, metrics line or ``final.json`` is ever written from a diverged state, and the last
checkpoint stays the last good one. Under DDP every rank reads at the same steps and the ranks
agree by one all-reduce.
"""

from __future__ import annotations

import torch

from ltpipe.train.dist import DistInfo, all_reduce_min

CUDA_CHECK_STEPS = 100  # a host read of the flag waits for the device: amortised over 100 steps
NONE = 2**62  # "no bad step yet"


class Diverged(RuntimeError):
    """The loss or the weights became nan or inf (the message is one line)."""


class DivergenceWatch:
    def __init__(self, info: DistInfo):
        self.info = info
        self.every = 1 if info.device.type == "cpu" else CUDA_CHECK_STEPS
        self.first = torch.full((), NONE, dtype=torch.int64, device=info.device)

    def note(self, loss: torch.Tensor, step: int) -> None:
        """Keep ``step`` (the 0-based index of the step that produced ``loss``) when it is the
        first with a loss that is not finite; on the device, no host sync."""
        self.first = torch.where(torch.isfinite(loss) | (self.first != NONE), self.first, step)

    def due(self, steps_done: int) -> bool:
        return steps_done % self.every == 0

    def first_bad_step(self, model: torch.nn.Module | None = None,
                       steps_done: int = 0) -> int | None:
        """The first step (0-based) with a non-finite loss on any rank, or None; with ``model``,
        weights that are not finite count as a bad last step (``steps_done`` - 1). Every rank
        must call this at the same step (it is a collective under DDP). The weights include
        the buffers (BatchNorm's running statistics), which a checkpoint holds too."""
        first = self.first.clone()
        if model is not None:
            tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
            finite = torch.stack([t.detach().isfinite().all() for t in tensors]).all()
            first = torch.where(finite, first, torch.minimum(first, first.new_tensor(
                max(steps_done - 1, 0))))
        first = int(all_reduce_min(first, self.info))
        return None if first == NONE else first
