"""OTmix's class-confusion matrix (Gao et al., NeurIPS'23 §4, Table 8;
METHODS.md: OTmix; Streams P and Q).

Fcnt[k, k'] = #(true k, predicted k') of the current model (eval mode) on a class-balanced
held-out set, summed over ranks; F = Fcnt / rowsum (an empty row stays 0); F̂ = F with the
diagonal set to 0 and no renormalisation. The set is the shard directory's ``confusion_split``
(default "val"). When the shards have no such split, ltpipe falls back to min(n_k, 20) samples
per class of the train split, drawn once with a fixed seed. Deviation: those samples are
not withheld from training, and the loader reads them with the train split's augmentation in
one full pass over that split (it has no id-subset mode), counting only the chosen ids.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from ltpipe.pipeline.batch import Batch


def subset_ids(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """min(n_k, per_class) ids of every class k, sorted; int64 [M]."""
    rng = np.random.default_rng(seed)
    ids = [rng.permutation(np.flatnonzero(labels == k))[:per_class] for k in np.unique(labels)]
    return np.sort(np.concatenate(ids)).astype(np.int64)


@torch.no_grad()
def confusion_counts(model: nn.Module, steps: Iterable[Mapping[str, Batch]], num_classes: int,
                     device: torch.device, keep_ids: torch.Tensor | None = None) -> torch.Tensor:
    """int64 [C, C] counts of (true, predicted) over the "uniform" batches of ``steps``.

    ``keep_ids``: a sorted int64 tensor of sample ids to count (others are skipped), or None.
    The model is switched to eval mode and back.
    """
    was_training = model.training
    model.eval()
    counts = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    try:
        for step in steps:
            batch = step["uniform"]
            out = model(batch.images)
            pred = (out.logits if hasattr(out, "logits") else out).argmax(1)
            cell = batch.labels.to(device) * num_classes + pred.to(device)
            if keep_ids is not None:
                idx = batch.index.to(keep_ids.device)
                pos = torch.searchsorted(keep_ids, idx).clamp(max=keep_ids.numel() - 1)
                cell = cell[(keep_ids[pos] == idx).to(device)]
            # index_add_ rather than bincount: no C² temporary per batch (8142² on iNat)
            counts.index_add_(0, cell, torch.ones_like(cell))
    finally:
        model.train(was_training)
    return counts.view(num_classes, num_classes)


def confusion_matrix(counts: torch.Tensor) -> torch.Tensor:
    """F̂ float32 [C, C]: row-normalised counts (empty row -> 0) with the diagonal set to 0."""
    c = counts.to(torch.float32)
    f = c / c.sum(1, keepdim=True).clamp(min=1)
    return f.fill_diagonal_(0.0)


def all_reduce_counts(counts: torch.Tensor, world: int) -> torch.Tensor:
    """Sum the counts over ranks under DDP (METHODS.md: Streams P and Q); a no-op on one process."""
    if world > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return counts


def split_size(shards: str, split: str) -> int | None:
    """Samples in ``split`` of the shard directory, or None when it has no such split."""
    from ltpipe.shards.format import load_manifest

    splits = load_manifest(shards).splits
    return splits[split].num_samples if split in splits else None
