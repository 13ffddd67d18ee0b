"""The reference loader, built the way users do today.

A map-style dataset reads samples by random access into the tars (what ``wids`` does; here
through ``index.npy``), decodes with PIL and augments with torchvision transforms; P is a seeded
permutation of this rank's shard, Q is ``WeightedRandomSampler`` over w_i = q(y_i)/n_{y_i}
(samplers.py), each fed through ``DataLoader(num_workers, pin_memory)``. Same keywords and the same
``{stream: Batch}`` hand-off as ``make_loader``; the benchmarks' baseline and the fallback without
DALI. Epoch semantics match loader.py (L = ceil(ceil(N/W)/B) steps on every rank, last batch cut to
the real samples, Q cut to P's size, eval never padded), but P's order differs from DALI's:
rank r reads ids [N*r//W, N*(r+1)//W) of the (corrupt-free) sample list in every epoch.
Resume is exact: every epoch's index lists are a function of (seed, epoch, rank), and
``load_state_dict`` skips the consumed steps of the list.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from ltpipe.pipeline.batch import Batch
from ltpipe.pipeline.dali_graph import (CIFAR_PAD, DEFAULT_SIZE, IMAGENET_MEAN, IMAGENET_STD,
                                        RRC_RATIO, RRC_SCALE, eval_resize)
from ltpipe.pipeline.loader_args import check_arguments, check_values, declared_streams, shard_sizes
from ltpipe.pipeline.minority import ShardBytes
from ltpipe.pipeline.samplers import class_probabilities, sample_weights
from ltpipe.pipeline.shardset import open_split


def torchvision_transform(preset: str, size: int, train: bool, raw: bool = False):
    """The torchvision twin of the DALI preset (dali_graph.py); ``raw``: uint8 pixels, not
    normalised (pipeline/normalize.py)."""
    from torchvision import transforms as T

    if preset == "imagenet" and train:
        geo = [T.RandomResizedCrop(size, scale=RRC_SCALE, ratio=RRC_RATIO),
               T.RandomHorizontalFlip()]
    elif preset == "imagenet":
        geo = [T.Resize(eval_resize(size)), T.CenterCrop(size)]
    elif train:
        # pad_if_needed: images smaller than size - 2 * pad (e.g. stored with --max-size) are
        # zero-padded, as DALI's out-of-bounds slice does, instead of raising
        geo = [T.RandomCrop(size, padding=CIFAR_PAD, pad_if_needed=True),
               T.RandomHorizontalFlip()]
    else:
        geo = [T.CenterCrop(size)]
    if raw:
        return T.Compose(geo + [T.PILToTensor()])
    return T.Compose(geo + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class TarJpegDataset(Dataset):
    """Sample id -> (image float [3,H,W], label, id), by random access into the tars."""

    def __init__(self, data, transform):
        self.bytes = ShardBytes(data.rows, data.tar_paths)
        self.labels = data.labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from ltpipe.shards.jpegscan import open_jpeg

        # no PIL bomb limit: the split's scan decoded every image within the manifest's max_pixels
        img = open_jpeg(self.bytes.read(int(i)).tobytes()).convert("RGB")
        return self.transform(img), int(self.labels[i]), int(i)


def make_torch_loader(shards, split: str = "train", batch_size: int = 128,
                      streams=None, device: str = "cpu", preset: str = "cifar",
                      image_size: int | None = None, dtype=torch.float32,
                      channels_last: bool = False, r: float | None = None, seed: int = 0,
                      rank: int = 0, world: int = 1, epoch: int = 0, num_workers: int = 4,
                      prefetch: int = 2, num_threads: int | None = None, validate: bool = True,
                      allow_empty_classes: bool = False, skip_corrupt: bool = False,
                      mixer=None) -> "TorchLoader":
    """Reference loader with ``make_loader``'s keywords (``num_threads`` is an alias of workers).

    As there, a split with corrupt samples is refused unless ``skip_corrupt``; ``skipped`` on the
    loader counts the samples left out.
    """
    workers = num_workers if num_threads is None else num_threads
    given = {k: v for k, v in locals().items() if k not in ("num_threads", "num_workers")}
    check_values({**given, "num_workers" if num_threads is None else "num_threads": workers})
    streams, r = declared_streams(mixer, streams, r, split)
    data = open_split(shards, split, validate=validate, skip_corrupt=skip_corrupt)
    streams = check_arguments(data, split, batch_size, streams, device, preset, dtype, r, rank,
                              world, allow_empty_classes)
    size = DEFAULT_SIZE[preset] if image_size is None else image_size
    dataset = TarJpegDataset(data, torchvision_transform(preset, size, split == "train",
                                                         raw=dtype == torch.uint8))
    return TorchLoader(data, dataset, streams, batch_size=int(batch_size), device=device,
                       dtype=dtype, channels_last=channels_last, r=r, seed=seed, rank=rank,
                       world=world, epoch=epoch, num_workers=workers, prefetch=prefetch)


class TorchLoader:
    def __init__(self, data, dataset, streams, *, batch_size, device, dtype, channels_last, r,
                 seed, rank, world, epoch, num_workers, prefetch):
        self.data, self.dataset, self.streams = data, dataset, streams
        self.batch_size, self.dtype, self.channels_last = batch_size, dtype, channels_last
        self.device = torch.device(device)
        self.r, self.seed, self.rank, self.world = float(r), int(seed), rank, world
        self.train = data.split == "train"
        self.num_workers, self.prefetch = int(num_workers), int(prefetch)
        self.class_counts = data.class_counts.copy()
        self.num_classes = int(data.num_classes)
        self.skipped = data.skipped  # corrupt samples left out of every epoch (skip_corrupt)
        self._good = np.flatnonzero(data.good_mask())  # readable ids, ascending
        n = self._good.size
        self._sizes = shard_sizes(n, world)
        self._first = n * rank // world
        self._steps = math.ceil(math.ceil(n / world) / batch_size)
        self.epoch, self.step = int(epoch), 0

    def __len__(self) -> int:
        if self.train:
            return self._steps
        return math.ceil(self._sizes[self.rank] / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if self.step >= self._steps:
            self.epoch, self.step = self.epoch + 1, 0
        if epoch != self.epoch:
            self.epoch, self.step = int(epoch), 0

    def _generator(self, stream: int) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, self.rank, stream])
                          .generate_state(1)[0]))
        return g

    def _uniform_batches(self) -> list[list[int]]:
        ids = self._good[self._first:self._first + self._sizes[self.rank]]
        if self.train:
            ids = ids[torch.randperm(ids.size, generator=self._generator(0)).numpy()]
        b = self.batch_size
        batches = [ids[i:i + b].tolist() for i in range(0, ids.size, b)]
        if self.train and len(batches) < self._steps:
            batches.append(ids[-1:].tolist())  # one duplicate keeps DDP step counts equal
        return batches

    def _minority_batches(self, name: str, sizes: list[int]) -> list[list[int]]:
        r = self.r if name == "minority" else 0.0
        q = class_probabilities(self.class_counts, r, allow_empty=True)
        labels = self.data.labels[self._good]
        present = np.bincount(labels, minlength=q.size) > 0
        w = sample_weights(labels, np.where(present, q, 0.0))
        sampler = WeightedRandomSampler(torch.from_numpy(w), self._steps * self.batch_size,
                                        replacement=True, generator=self._generator(1))
        drawn = self._good[np.fromiter(iter(sampler), dtype=np.int64)]
        b = self.batch_size
        return [drawn[s * b: s * b + n].tolist() for s, n in enumerate(sizes)]

    def _loader(self, batches: list[list[int]]) -> DataLoader:
        extra = {"prefetch_factor": self.prefetch} if self.num_workers > 0 else {}
        return DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                          pin_memory=self.device.type == "cuda", **extra)

    def __iter__(self):
        if self.step >= self._steps:
            self.epoch, self.step = self.epoch + 1, 0
        p = self._uniform_batches()
        sizes = [len(x) for x in p]
        plan = {s: p if s == "uniform" else self._minority_batches(s, sizes) for s in self.streams}
        start, epoch = self.step, self.epoch
        iters = {s: iter(self._loader(plan[s][start:])) for s in self.streams}
        for step in range(start, len(p)):
            out = {s: self._to_batch(next(iters[s]), epoch, step) for s in self.streams}
            self.step = step + 1
            yield out
        self.epoch, self.step = self.epoch + 1, 0

    def _to_batch(self, item, epoch: int, step: int) -> Batch:
        images, labels, index = item
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.to(self.device, non_blocking=True).to(dtype=self.dtype, memory_format=fmt)
        return Batch(images, labels.to(self.device, torch.int64, non_blocking=True),
                     index.to(self.device, torch.int64, non_blocking=True),
                     {"epoch": epoch, "step": step})

    def state_dict(self) -> dict:
        return {"version": 1, "epoch": self.epoch, "step": self.step, "streams": list(self.streams),
                "batch_size": self.batch_size, "seed": self.seed, "rank": self.rank,
                "world": self.world, "r": self.r}

    def load_state_dict(self, state: dict) -> None:
        for key in ("streams", "batch_size", "seed", "rank", "world", "r"):
            mine = list(self.streams) if key == "streams" else getattr(self, key)
            if state.get(key) != mine:
                raise ValueError(
                    f"loader state: {key} is {state.get(key)!r}, this loader has {mine!r}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
