"""The training step (it fits one screen).

streams {name: Batch} -> mixer -> MixedBatch -> model (autocast) -> criterion (fp32) -> SGD step.
The step knows no method names; every random draw of a mixer comes from a generator seeded by
(seed, epoch, step, rank) (train/step_keys.py), so a resumed run redraws exactly what an
uninterrupted one drew.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from ltpipe.train.mixers.base import StepContext


def make_autocast(device: torch.device,
                  precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16/fp16 autocast on CUDA; the CPU always trains in fp32 (exact and reproducible)."""
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast("cuda", dtype=dtype)


@dataclass
class EpochSums:
    """Running sums of the current epoch (checkpointed, so a resumed epoch logs the same loss)."""

    loss: torch.Tensor  # fp32 [] on device: Σ batch loss · batch size
    changed: torch.Tensor  # int64 [] on device: Σ rows whose image the mixer changed
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    samples: int = 0
    seconds: float = 0.0
    # train/step_timer.py: Σ ms the host waited for the loader, Σ ms the device idled between
    # steps, and the steps they cover
    wait_ms: float = 0.0
    idle_ms: float = 0.0
    timed_steps: int = 0
    waits: list[float] = field(default_factory=list)  # this rank's host wait of every step, ms
    # Q rows served by the loader's decoded cache, and Q rows drawn (pipeline/q_cache.py)
    q_served: int = 0
    q_drawn: int = 0

    @classmethod
    def zeros(cls, device: torch.device) -> "EpochSums":
        return cls(torch.zeros((), device=device),
                   torch.zeros((), dtype=torch.int64, device=device))

    def add(self, loss: torch.Tensor, parts: dict, n: int, changed: torch.Tensor) -> None:
        self.loss += loss * n
        self.changed += changed
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, torch.zeros_like(self.loss)) + v * n
        self.samples += n

    def add_q_cache(self, streams: dict) -> None:
        """A step's (served, drawn) Q rows, where the loader reports them (``meta["q_cache"]``,
        shared by the step's batches)."""
        served = next(iter(streams.values())).meta.get("q_cache")
        if served is not None:
            self.q_served += served[0]
            self.q_drawn += served[1]

    def add_timing(self, per_step: dict[str, list[float]]) -> None:
        """StepTimer.collect()'s figures."""
        self.wait_ms += sum(per_step["wait"])
        self.idle_ms += sum(per_step["idle"])
        self.timed_steps += len(per_step["wait"])
        self.waits += [round(w, 4) for w in per_step["wait"]]

    def state_dict(self) -> dict:
        # on the CPU: the states of all ranks are gathered into rank 0's checkpoint
        return {"loss": self.loss.detach().cpu(), "changed": self.changed.cpu(),
                "parts": {k: v.detach().cpu() for k, v in self.parts.items()},
                "samples": self.samples,
                "seconds": self.seconds, "wait_ms": self.wait_ms, "idle_ms": self.idle_ms,
                "timed_steps": self.timed_steps, "waits": list(self.waits),
                "q_served": self.q_served, "q_drawn": self.q_drawn}

    @classmethod
    def from_state(cls, state: dict, device: torch.device) -> "EpochSums":
        changed = state.get("changed", torch.zeros((), dtype=torch.int64))  # older checkpoints
        return cls(state["loss"].to(device), changed.to(device),
                   {k: v.to(device) for k, v in state["parts"].items()},
                   state["samples"], state["seconds"], state.get("wait_ms", 0.0),
                   state.get("idle_ms", 0.0), state.get("timed_steps", 0),
                   list(state.get("waits", [])), state.get("q_served", 0),
                   state.get("q_drawn", 0))


def train_step(*, model, mixer, criterion, optimizer, scheduler, scaler, streams,
               ctx: StepContext, autocast) -> tuple[torch.Tensor, dict, int, torch.Tensor]:
    """One optimizer step; returns (loss [] detached, parts {name: []}, batch size, rows whose
    image the mixer changed [] int64, on the device: no host sync)."""
    mixed = mixer(streams, ctx)  # MixedBatch(images, y_a, y_b, lam [B], extras)
    with autocast():
        out = model(mixed.images)  # ModelOutput(logits [B,C], features [B,D], extras)
    mixer.observe(out, mixed)  # e.g. a feature bank; no-op for most mixers
    result = criterion(out, mixed, ctx)  # fp32, outside autocast
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(result.loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return result.loss.detach(), result.parts, int(mixed.y_a.shape[0]), \
        mixed.changed_rows().sum()
