"""Evaluation: per-class accuracy on the val split, and Many/Medium/Few means (METHODS.md,
Class groups).

Groups come from the *training* counts: many n > 100, medium 20 ≤ n ≤ 100, few n < 20; each
group's figure is the mean per-class accuracy of its classes. Counts are summed over ranks.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ltpipe.shards.longtail import GROUPS, group_of
from ltpipe.train.class_counts import check_class_counts, check_logits
from ltpipe.train.dist import DistInfo, all_reduce_sum


@torch.no_grad()
def class_hits(model, loader, num_classes: int, device: torch.device, autocast,
               info: DistInfo) -> tuple[np.ndarray, np.ndarray]:
    """(correct int64 [C], total int64 [C]) over the whole (sharded) val split."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(num_classes, dtype=torch.int64, device=device)
    total = torch.zeros(num_classes, dtype=torch.int64, device=device)
    for streams in loader:
        batch = streams["uniform"]
        with autocast():
            out = model(batch.images)
        logits = getattr(out, "logits", out)  # ltpipe's ModelOutput, or any model's logits
        check_logits("evaluate", logits, num_classes)
        pred = logits.argmax(1)
        total += torch.bincount(batch.labels, minlength=num_classes)
        hit = (pred == batch.labels).long()  # no boolean indexing: it would sync on CUDA
        correct += torch.bincount(batch.labels, weights=hit, minlength=num_classes).long()
    model.train(was_training)
    all_reduce_sum(correct, info)
    all_reduce_sum(total, info)
    return correct.cpu().numpy(), total.cpu().numpy()


def evaluate(model, loader, train_counts) -> dict:
    """Top-1 and the Many/Medium/Few means (percent) of ``model`` over a val loader.

    For a training loop of one's own: ``loader`` is ``make_loader(shards, split="val", ...)``,
    ``model`` returns logits (or ltpipe's ``ModelOutput``), ``train_counts`` are the training
    split's class counts (``MixerEnv.class_counts``), which define the groups. One process; the
    trainer's DDP path calls ``class_hits`` with its ``DistInfo``. ``format_table`` prints it.
    """
    num_classes = check_class_counts("evaluate", torch.as_tensor(train_counts))
    loader_classes = getattr(loader, "num_classes", num_classes)
    if loader_classes != num_classes:  # labels past C would only fail inside bincount
        raise ValueError(f"evaluate: the loader's split has {loader_classes} classes, but "
                         f"train_counts has {num_classes} (a loader of other shards?)")
    device = next(model.parameters()).device
    info = DistInfo(rank=0, world=1, local_rank=0, device=device)
    correct, total = class_hits(model, loader, num_classes, device,
                                contextlib.nullcontext, info)
    return summarize(correct, total, train_counts)


def summarize(correct: np.ndarray, total: np.ndarray, train_counts) -> dict:
    """top1 (over samples), per-class accuracy and the many/medium/few means, in percent.

    A group with no classes reports None; a class absent from val is left out of its group.
    """
    per_class = np.where(total > 0, correct / np.maximum(total, 1), np.nan) * 100.0
    out = {"top1": float(correct.sum() / max(total.sum(), 1) * 100.0)}
    groups = np.array([group_of(int(n)) for n in train_counts])
    for g in GROUPS:
        vals = per_class[(groups == g) & (total > 0)]
        out[g] = float(vals.mean()) if vals.size else None
    out["per_class"] = [None if np.isnan(v) else float(v) for v in per_class]
    return out


def format_table(result: dict, train_counts) -> str:
    """The Many/Medium/Few table printed at the end of a run."""
    sizes = {g: sum(group_of(int(n)) == g for n in train_counts) for g in GROUPS}
    head = f"{'':10s}{'All':>8s}{'Many':>8s}{'Medium':>8s}{'Few':>8s}"
    classes = f"{'classes':10s}{len(train_counts):>8d}" + "".join(
        f"{sizes[g]:>8d}" for g in GROUPS)
    fmt = lambda v: f"{v:>8.1f}" if v is not None else f"{'-':>8s}"  # noqa: E731
    acc = f"{'top-1 %':10s}{fmt(result['top1'])}" + "".join(fmt(result[g]) for g in GROUPS)
    return "\n".join([head, classes, acc])
