"""What a loader is asked for, checked before any pipeline exists: the stream names, one-line
errors naming a bad argument, the streams and r a mixer declares, and how ranks split a split.
Shared by the DALI loader (loader.py) and the torch reference (torch_loader.py).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ltpipe.pipeline import values
from ltpipe.pipeline.dali_graph import PRESETS
from ltpipe.pipeline.shardset import ShardSplit

STREAMS = ("uniform", "minority", "balanced")
WEIGHTED_STREAMS = frozenset({"minority", "balanced"})  # drawn by the class counts (q ∝ n_k^-r)
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8)  # uint8: normalize.py
# the keywords of make_loader and make_torch_loader that take plain values (pipeline/values.py)
RULES = {
    "batch_size": values.integer(1), "image_size": values.integer(1, values.MAX_IMAGE_SIDE,
                                                                  optional=True, what="px"),
    "channels_last": values.FLAG, "r": values.number(0, values.MAX_R, optional=True),
    "seed": values.SEED, "rank": values.integer(0), "world": values.integer(1),
    "epoch": values.integer(0), "prefetch": values.PREFETCH,
    # 0 threads / workers: fit the machine (loader_threads; the reference loader: read in the
    # main process)
    "num_threads": values.integer(0, values.MAX_THREADS),
    "py_workers": values.integer(0, values.MAX_THREADS), "hw_decoder_load": values.PROB,
    "max_image_side": values.integer(0), "concurrency": values.choice("full", "backend"),
    "validate": values.FLAG, "allow_empty_classes": values.FLAG, "skip_corrupt": values.FLAG,
    "count_pixels": values.FLAG, "q_cache_gb": values.Q_CACHE_GB,
    "q_cache_side": values.Q_CACHE_SIDE, "num_workers": values.integer(0, values.MAX_THREADS),
    "split": values.text(),  # which names exist, the manifest says
}


def check_values(arguments: dict) -> None:
    """A loader's plain keyword values, by their rules, before any data is opened: a one-line
    ValueError naming the keyword (``image_size: must be ...``)."""
    found = values.first_problem(RULES, arguments)
    if found:
        raise ValueError(f"{found[0]}: {found[1]}")


def check_arguments(data: ShardSplit, split: str, batch_size: int, streams, device: str,
                    preset: str, dtype, r: float, rank: int, world: int,
                    allow_empty_classes: bool = False) -> tuple[str, ...]:
    """One-line ValueErrors naming the field; returns the stream names as a tuple."""
    streams = (streams,) if isinstance(streams, str) else tuple(streams)
    where = f"{data.root / split}"
    unknown = [s for s in streams if not isinstance(s, str) or s not in STREAMS]
    if unknown:  # before set(): a list among them is unhashable
        raise ValueError(f"streams: unknown {unknown}, expected names from {STREAMS}")
    if not streams or len(set(streams)) != len(streams):
        raise ValueError(f"streams: need distinct names from {STREAMS}, got {streams}")
    if split != "train" and streams != ("uniform",):
        raise ValueError(f"streams: split {split!r} is read in order by the 'uniform' stream only")
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
    if batch_size > data.num_samples:
        raise ValueError(
            f"batch_size: {batch_size} exceeds the {data.num_samples} samples of {where}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but torch sees no CUDA device")
    if preset not in PRESETS:
        raise ValueError(f"preset: must be one of {PRESETS}, got {preset!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: must be one of {DTYPES}, got {dtype}")
    if not np.isfinite(r) or r < 0:
        raise ValueError(f"r: must be a finite number >= 0, got {r}")
    if not isinstance(rank, (int, np.integer)) or not 0 <= rank < world:
        raise ValueError(f"rank/world: need 0 <= rank < world, got rank={rank} world={world}")
    if world > data.num_samples:  # a rank without a sample: DALI's reader asserts, many lines
        raise ValueError(f"world: {world} ranks exceed the {data.num_samples} samples of {where} "
                         f"(every rank needs at least one)")
    empty = np.flatnonzero(data.class_counts == 0)
    if empty.size and not allow_empty_classes and set(streams) & WEIGHTED_STREAMS:
        raise ValueError(f"{data.root / 'manifest.json'}: class {int(empty[0])} has no training "
                         "samples (pass allow_empty_classes=True to give it q=0)")
    return streams


def declared_streams(mixer, streams, r, split: str = "train") -> tuple[tuple[str, ...], float]:
    """(streams, r) of a loader: the mixer's declaration when one is given, else the arguments,
    else P and Q with r = 1 for training and P alone for evaluation (a val split is read in
    order, once). A ValueError names an argument that contradicts the mixer."""
    if isinstance(streams, str):  # one name, not its letters
        streams = (streams,)
    if mixer is not None:
        if not isinstance(getattr(mixer, "streams", None), (tuple, list)):
            raise TypeError(f"mixer: must be a mixer (ltpipe.train.mixers: build_mixer(...)), "
                            f"got {type(mixer).__name__}")
        mine = tuple(mixer.streams)
        if streams is not None and tuple(streams) != mine:
            raise ValueError(f"streams: {tuple(streams)} given, but the mixer "
                             f"{type(mixer).__name__} reads {mine}")
        fg_r = getattr(mixer, "fg_r", None)
        if r is not None and fg_r is not None and float(r) != float(fg_r):
            raise ValueError(f"r: {r} given, but the mixer {type(mixer).__name__} has fg_r={fg_r}")
        streams, r = mine, (fg_r if fg_r is not None else r)
    if streams is None:
        streams = ("uniform", "minority") if split == "train" else ("uniform",)
    return tuple(streams), 1.0 if r is None else float(r)


def natural_preset(manifest, split: str = "train", preset: str | None = None) -> tuple[str, int]:
    """(preset, image size) that fit a split's stored images: "cifar" at the images' own side for
    small images (<= 64 px on the long side: CIFAR-like sets, the synthetic default), else
    "imagenet" at 224 px (the papers' crop). A ``preset`` asked for gets its own size where it
    is not the natural one (cifar 32, imagenet 224)."""
    stats = manifest.image_stats(split)  # informative: None when absent or malformed
    side = int(max(stats["width"]["max"], stats["height"]["max"])) if stats else 0
    natural = ("cifar", side) if 0 < side <= 64 else ("imagenet", 224)
    if preset is None or preset == natural[0]:
        return natural
    return preset, 32 if preset == "cifar" else 224


def cpus_per_rank() -> int:
    """This rank's share of the CPUs it may run on (torchrun sets LOCAL_WORLD_SIZE)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cpus or 1) // local_world_size())


def local_world_size(default: int = 1) -> int:
    """torchrun's LOCAL_WORLD_SIZE (the ranks on this node): a one-line ValueError naming it when
    it is not a positive integer, not int()'s "invalid literal"."""
    value = os.environ.get("LOCAL_WORLD_SIZE", str(default))
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise ValueError(f"environment: LOCAL_WORLD_SIZE={value!r} is not an integer >= 1")
    return int(value)


def loader_threads(num_threads: int, py_workers: int) -> tuple[int, int]:
    """(DALI threads, Q's reader processes); 0 = automatic: all of this rank's CPUs for DALI's
    threads and a quarter of them for Q's readers, as bench/e2e.py measures. More than the
    machine has only adds switching (a 2-core box with 4 threads and 2 readers ran the README
    loop at half speed)."""
    threads = num_threads or cpus_per_rank()
    return threads, py_workers or max(1, threads // 4)


def shard_sizes(num_samples: int, world: int) -> list[int]:
    """Samples of DALI shard s: [N*s//W, N*(s+1)//W)."""
    return [num_samples * (s + 1) // world - num_samples * s // world for s in range(world)]
