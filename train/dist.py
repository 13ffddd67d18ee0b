"""Distributed setup from the environment (torchrun): a frozen DistInfo passed down explicitly.

RANK / WORLD_SIZE / LOCAL_RANK come from torchrun; without them the run is single-process.
Backend: nccl for CUDA, gloo for the CPU (how the tests run 2 processes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    # started by torchrun: a process group (and DDP) even for one process, so that
    # `torchrun --nproc_per_node=1` runs the multi-GPU path (nccl) on a single device
    launched: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1 or self.launched


def env_int(name: str, default: int, low: int = 0) -> int:
    """A torchrun variable: plain decimal digits (not "-1", " 2" or "1_0", which int() takes),
    at least ``low``; else a one-line ValueError naming it."""
    value = os.environ.get(name, str(default))
    if not (value.isascii() and value.isdigit()) or int(value) < low:
        raise ValueError(f"environment: {name}={value!r} is not an integer >= {low}")
    return int(value)


def init_distributed(device_kind: str) -> DistInfo:
    """Read the environment once and check it (a rank outside the world would wait for its
    peers until the rendezvous times out); start the process group when WORLD_SIZE > 1 or
    torchrun started this process."""
    rank, world = env_int("RANK", 0), env_int("WORLD_SIZE", 1, low=1)
    local_rank, local_world = env_int("LOCAL_RANK", 0), env_int("LOCAL_WORLD_SIZE", 1, low=1)
    if rank >= world:
        raise ValueError(f"environment: RANK={rank} is not below WORLD_SIZE={world}")
    if "LOCAL_WORLD_SIZE" in os.environ and local_rank >= local_world:
        raise ValueError(f"environment: LOCAL_RANK={local_rank} is not below "
                         f"LOCAL_WORLD_SIZE={local_world}")
    launched = "TORCHELASTIC_RUN_ID" in os.environ
    if world > 1 or launched:  # env:// rendezvous; torch's own error is a paragraph
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise ValueError(f"environment: WORLD_SIZE={world} needs {' and '.join(missing)} "
                             f"(start the ranks with torchrun)")
    if device_kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"environment: LOCAL_RANK={local_rank}, but this node has "
                             f"{torch.cuda.device_count()} CUDA devices")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if (world > 1 or launched) and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, device, launched)


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum over ranks in place (no-op on one process); returns the tensor."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Minimum over ranks in place (no-op on one process); returns the tensor."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every rank: DDP only broadcasts them
    before a forward, so after the last step of an epoch the ranks differ until this runs."""
    if info.distributed:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def gather_objects(obj, info: DistInfo) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (per-rank loader states)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
