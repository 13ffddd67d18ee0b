"""The mixer interface: stream batches in, one MixedBatch out (ALGORITHMS.md §0 label convention).

A mixer declares the loader streams it needs (``streams``); the trainer builds the loader with
exactly those and never branches on a mixer's name. Mixers are ``nn.Module``s so any state they
own (a feature bank, a confusion matrix, a frozen classifier) goes into the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ltpipe.pipeline.batch import Batch, MixedBatch


@dataclass(frozen=True)
class MixerEnv:
    """What every mixer is built with (``MixerClass(env, **params)``), fixed for the run."""

    class_counts: torch.Tensor  # int64 [C], global train counts, on the training device
    device: torch.device
    image_size: int  # H = W of the training images
    batch_size: int  # per rank
    epochs: int
    seed: int = 0
    shards: str | None = None  # shard directory (OTmix's confusion split, M2m's loaders)
    rank: int = 0
    world: int = 1

    @property
    def num_classes(self) -> int:
        return int(self.class_counts.numel())


@dataclass(frozen=True)
class StepContext:
    """Everything a mixer or criterion may read about the current step (read-only)."""

    epoch: int  # 0-indexed
    epochs: int  # total epochs E of the run
    step: int  # global optimizer step
    class_counts: torch.Tensor  # int64 [C], global train counts n_k, on the training device
    generator: torch.Generator  # seeded per (seed, epoch, step, rank) on the training device
    model: nn.Module | None = None  # the model being trained (OTmix features, M2m's f)
    aux: Mapping[str, Any] = field(default_factory=dict)


class Mixer(nn.Module):
    """Subclasses set ``streams`` and implement ``forward(streams, ctx) -> MixedBatch``.

    Constructors take ``(env: MixerEnv, **params)``; params come from the recipe's ``[mixer]``
    table and CLI overrides, and an unknown param is an error naming it.
    """

    streams: tuple[str, ...] = ("uniform",)
    aux_terms: tuple[str, ...] = ()  # loss terms the trainer adds (losses/aux.py AUX_TERMS)

    def __init__(self, env: MixerEnv):
        super().__init__()
        self.env = env

    def forward(self, streams: Mapping[str, Batch], ctx: StepContext) -> MixedBatch:
        raise NotImplementedError

    def observe(self, out: Any, mixed: MixedBatch) -> None:
        """Hook after the training forward pass (``out``: ModelOutput). Default: nothing.

        OTmix's bank mode keeps the features of unmixed rows here, so it needs no extra forward."""

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> None:
        """Hook for per-epoch state (OTmix confusion refresh, schedule draws). Default: none."""

    def mixes_in(self, epoch: int, epochs: int) -> bool:
        """Whether the schedule lets this mixer act in ``epoch`` (the trainer warns when it
        never does). Default: a ``mix_schedule`` attribute decides, else every epoch."""
        schedule = getattr(self, "mix_schedule", None)
        return schedule is None or active_in_epoch(epoch, epochs, schedule)

    def extra_repr(self) -> str:
        return f"streams={self.streams}"


def active_in_epoch(epoch: int, epochs: int, schedule: str) -> bool:
    """Whether mixing may run in ``epoch`` (ALGORITHMS.md §1 and §7.3).

    "repo": only when 3 < e < E−3 (the code behind the published numbers);
    "paper": every epoch except the last 3; "always": every epoch.
    This is the epoch window only; the per-batch gate is the mixer's ``prob``. CMO's and OTmix's
    default prob follows the schedule (``resolve_prob``: 1.0 under "paper", so that "paper" is
    the papers' text, every batch; 0.5 otherwise).
    """
    if schedule == "repo":
        return 3 < epoch < epochs - 3
    if schedule == "paper":
        return epoch < epochs - 3
    if schedule == "always":
        return True
    raise ValueError(f"mix_schedule: unknown value {schedule!r} (repo, paper, always)")


MixerFactory = Callable[..., Mixer]


def resolve_prob(prob: float | None, mix_schedule: str) -> float:
    """The batch gate's probability (ALGORITHMS.md §1, §7.3). Not given (None): 1.0 under
    ``mix_schedule="paper"`` (the papers' Algorithm 1 mixes every batch) and 0.5 otherwise (the
    repos' mixup_prob); a prob given explicitly, 0.5 included, wins."""
    if prob is None:
        return 1.0 if mix_schedule == "paper" else 0.5
    return prob


def mix_gate(prob: float, generator: torch.Generator) -> torch.Tensor:
    """bool [] on device: True with probability ``prob`` (the repo's ``r < mixup_prob``)."""
    if prob >= 1.0:
        return torch.ones((), dtype=torch.bool, device=generator.device)
    return torch.rand((), generator=generator, device=generator.device) < prob
