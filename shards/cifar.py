"""CIFAR-10/100 python pickle batches (Krizhevsky, 2009) as shard-writer input.

``DIR`` is the extracted ``cifar-10-batches-py`` (data_batch_1..5, test_batch, batches.meta) or
``cifar-100-python`` (train, test, meta) folder, or a folder containing it. The test batch becomes
the balanced ``val`` split; CIFAR-LT is made by the writer's ``imbalance`` (ALGORITHMS.md §5).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ltpipe.shards.errors import ShardInputError

LAYOUT = {  # scheme -> (folder name, train batches, test batch, meta file, label key, names key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", b"labels", b"label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", b"fine_labels",
                 b"fine_label_names"),
}


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise ShardInputError(f"{path}: missing CIFAR batch file")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as exc:  # any unpickling failure means "not a CIFAR batch"
        raise ShardInputError(
            f"{path}: not a CIFAR pickle batch ({exc.__class__.__name__})") from None


Rows = list[tuple[str, int, np.ndarray]]  # (path, label, [32,32,3] uint8 pixels)


def load(root: Path, scheme: str) -> tuple[list[str], dict[str, Rows]]:
    """Class names and, per split, (path, label, [32,32,3] uint8 pixels) rows in file order."""
    folder, train_files, test_file, meta_file, label_key, names_key = LAYOUT[scheme]
    if not root.is_dir():
        raise ShardInputError(f"{scheme} {root}: no such directory")
    if (root / folder).is_dir():
        root = root / folder
    names = [n.decode() for n in _unpickle(root / meta_file)[names_key]]
    splits = {}
    for split, files in (("train", train_files), ("val", [test_file])):
        rows = []
        for name in files:
            batch = _unpickle(root / name)
            try:
                data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                labels = [int(x) for x in batch[label_key]]
            except (KeyError, ValueError) as exc:
                raise ShardInputError(f"{root / name}: not a {scheme} batch ({exc!r})") from None
            pixels = data.transpose(0, 2, 3, 1)  # [N,32,32,3]
            rows += [(f"{scheme}:{name}/{i}", labels[i], np.ascontiguousarray(pixels[i]))
                     for i in range(len(labels))]
        splits[split] = rows
    bad = [p for p, k, _ in splits["train"] + splits["val"] if not 0 <= k < len(names)]
    if bad:
        raise ShardInputError(f"{root}: label out of range for {bad[0]}")
    return names, splits
