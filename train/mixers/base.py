"""The mixer interface: stream batches in, one MixedBatch out (METHODS.md: Conventions).

A mixer declares the loader streams it needs (``streams``); the trainer builds the loader with
exactly those and never branches on a mixer's name. Mixers are ``nn.Module``s so any state they
own (a feature bank, a confusion matrix, a frozen classifier) goes into the checkpoint.

In a training loop of one's own (README, "Use ltpipe in your own training loop")::

    env = MixerEnv.from_shards("out/synthetic", epochs=30, batch_size=64)
    mixer = CMO(env, prob=0.5, mix_schedule="always")
    mixed = mixer.mix(streams, epoch, step)   # the trainer's draws for (seed, epoch, step, rank)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

import ltpipe.train as _train
from ltpipe.pipeline import values
from ltpipe.pipeline.batch import Batch, MixedBatch
from ltpipe.pipeline.mix_plan import SCHEDULES
from ltpipe.train.class_counts import check_class_counts
from ltpipe.train.step_keys import step_generator

MIX_SCHEDULE = values.choice(*SCHEDULES)  # the epoch window of mixing (``active_in_epoch``)


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
    skip_corrupt: bool = False  # loaders a mixer opens itself (OTmix's confusion split) skip them

    RULES = {"image_size": values.IMAGE_SIDE, "batch_size": values.integer(1),
             "epochs": values.EPOCHS, "seed": values.SEED, "rank": values.integer(0),
             "world": values.integer(1), "skip_corrupt": values.FLAG}

    def __post_init__(self):
        values.check_values("MixerEnv", self.RULES, self.__dict__)
        if self.rank >= self.world:  # the loaders refuse it too; say so where it was given
            raise ValueError(f"MixerEnv: need 0 <= rank < world, got rank={self.rank} "
                             f"world={self.world}")
        check_class_counts("MixerEnv", self.class_counts)

    @property
    def num_classes(self) -> int:
        return int(self.class_counts.numel())

    @classmethod
    def from_shards(cls, shards: str | Path, *, epochs: int, batch_size: int,
                    image_size: int = 32, seed: int = 0, device: str | torch.device = "cpu",
                    rank: int | None = None, world: int | None = None) -> "MixerEnv":
        """The environment of a run on ``shards`` outside ltpipe's trainer: class counts from the
        manifest's train split; ``rank``/``world`` from torch.distributed when it is initialised
        (else 0/1). ``epochs`` is the run's length, which the mix schedules read."""
        from ltpipe.shards.format import load_manifest  # only the library path reads a manifest

        if rank is None or world is None:
            dist = torch.distributed
            running = dist.is_available() and dist.is_initialized()
            rank = (dist.get_rank() if running else 0) if rank is None else rank
            world = (dist.get_world_size() if running else 1) if world is None else world
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"MixerEnv.from_shards: device {device!r}: {exc}") from None
        counts = load_manifest(shards).split("train").class_counts
        # the values as given (no int(): 2.5 epochs is refused, not cut to 2)
        return cls(class_counts=torch.tensor(counts, dtype=torch.int64, device=device),
                   device=device, image_size=image_size, batch_size=batch_size, epochs=epochs,
                   seed=seed, shards=str(shards), rank=rank, world=world)


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
    # a pipeline.mix_plan.PlanSpec when the mixer's draws are a host-side mix plan: the loader
    # (make_loader(mixer=...)) then draws each step's plan ahead and decodes Q by it
    mix_plan = None
    # param -> its pipeline.values rule: the constructor checks its arguments by them, and the
    # CLI and recipes check --mixer-opt values by the same rules (train/params.py)
    RULES: dict = {}

    def __init__(self, env: MixerEnv):
        if not isinstance(env, MixerEnv):  # its counts and sizes are checked once, there
            raise ValueError(f"mixer {type(self).__name__}: env must be a MixerEnv (e.g. "
                             f"MixerEnv.from_shards(...)), got {type(env).__name__}")
        super().__init__()
        self.env = env
        self._warned_off = False  # once per run (not checkpointed): see _warn_if_off
        self._label_priors: dict = {}  # (H, W, device) -> fp32 [C]: see _declare_label_prior
        self.register_forward_pre_hook(_check_streams)
        self.register_forward_pre_hook(_warn_if_off)
        self.register_forward_hook(_declare_label_prior)

    def forward(self, streams: Mapping[str, Batch], ctx: StepContext) -> MixedBatch:
        raise NotImplementedError

    def mix(self, streams: Mapping[str, Batch], epoch: int, step: int, *,
            model: nn.Module | None = None, inplace: bool = True) -> MixedBatch:
        """``forward`` with the StepContext built as ltpipe's trainer builds it: the generator is
        seeded by (env.seed, epoch, step, env.rank), so the same step draws the same boxes and λ.

        ``step`` counts optimizer steps from the start of the run. Mixers that paste (CMO, CutMix,
        OTmix's CMO steps) write into ``streams["uniform"].images`` in place, saving a copy of the
        batch; ``inplace=False`` pastes into a copy and leaves the caller's tensor as it was.
        ``model``: the model being trained, for the mixers that read it (OTmix, M2m)."""
        if not inplace and "uniform" in streams:
            bg = streams["uniform"]
            streams = {**streams, "uniform": replace(bg, images=bg.images.clone())}
        env = self.env
        ctx = StepContext(epoch, env.epochs, step, env.class_counts,
                          step_generator(env.seed, epoch, step, env.rank, env.device), model=model)
        return self(streams, ctx)

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

    # A mixer whose labels follow a known class distribution defines
    # ``label_prior(height, width) -> float64 [C]`` (METHODS.md: Losses, the mixed prior); every
    # batch it returns then carries it as ``extras["label_prior"]``, for ``prior="mixed"``.
    def declared_label_prior(self, height: int, width: int, device) -> torch.Tensor:
        """``label_prior(height, width)`` as fp32 on ``device``, computed once per run: a
        host-to-device copy per step would be waste."""
        key = (int(height), int(width), str(device))
        if key not in self._label_priors:
            self._label_priors[key] = self.label_prior(height, width).float().to(device)
        return self._label_priors[key]


def active_in_epoch(epoch: int, epochs: int, schedule: str) -> bool:
    """Whether mixing may run in ``epoch`` (METHODS.md: CMO; When to mix).

    "repo": only when 3 < e < E−3 (the code behind the published numbers);
    "paper": every epoch except the last 3; "always": every epoch.
    This is the epoch window only; the per-batch gate is the mixer's ``prob``. CMO's and OTmix's
    default prob follows the schedule (``resolve_prob``: 1.0 under "paper", so that "paper" is
    the papers' text, every batch; 0.5 otherwise).
    """
    from ltpipe.pipeline.mix_plan import in_window  # one definition for plans and mixers

    return in_window(epoch, epochs, schedule)


def check_streams(mixer: Mixer, streams) -> None:
    """One-line ValueError for streams a mixer cannot use, before a kernel fails deep inside
    (or a paste silently reads past a row): each declared stream a Batch of float images
    [B,3,H,W] and int64 labels [B] on the run's device type, Q at least as long as P. Shapes
    only, no host sync; labels are range-checked only on the CPU (reading a CUDA tensor's
    values would sync)."""
    who = f"mixer {type(mixer).__name__}"
    if not isinstance(streams, Mapping):
        raise ValueError(f"{who}: streams must be a mapping of stream name to Batch (what the "
                         f"loader yields), got {type(streams).__name__}")
    sizes = {}
    for name in mixer.streams:
        batch = streams.get(name)
        if not isinstance(batch, Batch):
            got = "missing" if batch is None else f"a {type(batch).__name__}"
            raise ValueError(f"{who}: stream {name!r} must be a Batch, got {got} (it reads "
                             f"{mixer.streams}: build the loader with mixer=...)")
        where = f"{who}: streams[{name!r}]"
        images, labels = batch.images, batch.labels
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3 \
                or not images.is_floating_point():
            what = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) \
                else type(images).__name__
            raise ValueError(f"{where}.images must be a float tensor [B, 3, H, W], got {what}")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or \
                labels.dtype != torch.int64:
            what = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) \
                else type(labels).__name__
            raise ValueError(f"{where}.labels must be an int64 tensor [B], got {what}")
        rows = len(labels)
        # Q decoded as tiles has no whole images (an empty [B,3,0,0]), its rows in the tiles
        if rows == 0 or (batch.tiles is None and images.shape[0] != rows):
            raise ValueError(f"{where}: {images.shape[0]} images and {rows} labels (need the "
                             f"same number, at least one)")
        for tensor in (images, labels):
            if tensor.device.type != mixer.env.device.type:
                raise ValueError(f"{where}: on {tensor.device}, but the mixer's env is on "
                                 f"{mixer.env.device}")
        if labels.device.type == "cpu" and not \
                (0 <= int(labels.min()) and int(labels.max()) < mixer.env.num_classes):
            raise ValueError(f"{where}.labels must be in [0, {mixer.env.num_classes}) (the "
                             f"env's classes), got {int(labels.min())}..{int(labels.max())}")
        sizes[name] = rows
    short = [n for n in sizes if n != "uniform" and sizes[n] < sizes.get("uniform", 0)]
    if short:  # row i of P is mixed with row i of Q (a longer Q is fine: its rows are spare)
        raise ValueError(f"{who}: the streams' batch sizes {sizes}: {short[0]!r} has fewer "
                         f"rows than 'uniform'")


def _check_streams(mixer: Mixer, args: tuple) -> None:
    """Forward pre-hook: ``check_streams`` on every call, the trainer's and a user's."""
    check_streams(mixer, args[0] if args else None)


def _warn_if_off(mixer: Mixer, args: tuple) -> None:
    """Forward pre-hook: say once per run that the schedule left a called mixer off, since
    "repo" (the published code's window) returns unmixed batches in the first and last epochs."""
    ctx = args[1] if len(args) > 1 else None
    if mixer._warned_off or not isinstance(ctx, StepContext) or mixer.env.rank != 0:
        return
    if not mixer.mixes_in(ctx.epoch, ctx.epochs):
        mixer._warned_off = True
        schedule = getattr(mixer, "mix_schedule", None)
        why = f'mix_schedule="{schedule}"' if schedule else "its schedule"
        warnings.warn(f"{type(mixer).__name__}: {why} keeps mixing off in epoch {ctx.epoch} of "
                      f"{ctx.epochs}: the batches pass unmixed (train/METHODS.md, schedules)",
                      stacklevel=_caller_level())


def _caller_level() -> int:
    """warnings' stacklevel of the first frame outside ltpipe.train and torch: the user's line
    that called the mixer, not torch's module machinery that runs the hook."""
    import sys

    inside = tuple(str(Path(m.__file__).resolve().parent) + "/" for m in (torch, _train))
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def _declare_label_prior(mixer: Mixer, args: tuple, out: Any) -> Any:
    """Forward hook: put the mixer's label prior on every batch it returns, unmixed ones too
    (the prior is the run's expectation, not the batch's own label histogram)."""
    if not hasattr(mixer, "label_prior") or not isinstance(out, MixedBatch):
        return None
    height, width = out.images.shape[-2:]
    prior = mixer.declared_label_prior(height, width, out.y_a.device)
    return replace(out, extras={**out.extras, "label_prior": prior})


MixerFactory = Callable[..., Mixer]


def resolve_prob(prob: float | None, mix_schedule: str) -> float:
    """The batch gate's probability (METHODS.md: CMO; When to mix). Not given (None): 1.0 under
    ``mix_schedule="paper"`` (the papers' Algorithm 1 mixes every batch) and 0.5 otherwise (the
    repos' mixup_prob); a prob given explicitly, 0.5 included, wins."""
    if prob is None:
        return 1.0 if mix_schedule == "paper" else 0.5
    return prob


def gate_open(prob: float, generator: torch.Generator) -> bool:
    """``mix_gate`` read on the host, for mixers that branch on it; at prob >= 1 (the defaults)
    no device read, so no host-device sync."""
    return prob >= 1.0 or bool(mix_gate(prob, generator))


def mix_gate(prob: float, generator: torch.Generator) -> torch.Tensor:
    """bool [] on device: True with probability ``prob`` (the repo's ``r < mixup_prob``)."""
    if prob >= 1.0:
        return torch.ones((), dtype=torch.bool, device=generator.device)
    return torch.rand((), generator=generator, device=generator.device) < prob
