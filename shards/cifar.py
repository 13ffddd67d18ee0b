"""CIFAR-10/100 python pickle batches (Krizhevsky, 2009) as shard-writer input.

``DIR`` is the extracted ``cifar-10-batches-py`` (data_batch_1..5, test_batch, batches.meta) or
``cifar-100-python`` (train, test, meta) folder, or a folder containing it. The test batch becomes
the balanced ``val`` split; CIFAR-LT is made by the writer's ``imbalance``
(METHODS.md: Class groups).

The batches are Python pickles, and a pickle can name any function to call. They are read with
``SafeUnpickler``, which resolves only the globals a CIFAR batch holds (numpy arrays and dtypes;
``_codecs.encode``, which Python 3 writes for bytes at protocol 2); any other global is refused
before anything is called, so a crafted file cannot run code.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np

try:
    import numpy._core as np_core  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
    import numpy.core as np_core

from ltpipe.shards.errors import ShardInputError

LAYOUT = {  # scheme -> (folder name, train batches, test batch, meta file, label key, names key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", b"labels", b"label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", b"fine_labels",
                 b"fine_label_names"),
}


# (module, name) -> the object: numpy's array/dtype reconstruction (numpy >= 2 names its core
# "numpy._core"; older pickles say "numpy.core") and the bytes of a protocol-2 pickle
_ALLOWED = {
    **{(f"numpy.{core}.multiarray", "_reconstruct"): np_core.multiarray._reconstruct
       for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): np_core.numeric._frombuffer
       for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class RefusedGlobal(pickle.UnpicklingError):
    pass


class SafeUnpickler(pickle.Unpickler):
    """An unpickler of plain data (dict, list, str, bytes, numbers) and numpy arrays only."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise RefusedGlobal(f"refused to load {module}.{name}: a CIFAR batch holds only "
                                f"plain data and numpy arrays") from None

    def persistent_load(self, pid):
        raise RefusedGlobal("refused a persistent id: a CIFAR batch holds none")


BATCH_MAX_BYTES = 1 << 30  # CIFAR-100's train batch is 155 MB


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise ShardInputError(f"{path}: missing CIFAR batch file")
    if path.stat().st_size > BATCH_MAX_BYTES:
        raise ShardInputError(f"{path}: {path.stat().st_size:,} bytes, more than a CIFAR batch "
                              f"({BATCH_MAX_BYTES:,} bytes at most)")
    try:
        with open(path, "rb") as f:
            doc = SafeUnpickler(f, encoding="bytes").load()
    except RefusedGlobal as exc:
        raise ShardInputError(f"{path}: not a CIFAR pickle batch ({exc})") from None
    except Exception as exc:  # any unpickling failure means "not a CIFAR batch"
        raise ShardInputError(
            f"{path}: not a CIFAR pickle batch ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict):
        raise ShardInputError(f"{path}: not a CIFAR pickle batch (a {type(doc).__name__}, "
                              f"not a dict)")
    return doc


Rows = list[tuple[str, int, np.ndarray]]  # (path, label, [32,32,3] uint8 pixels)


def _class_names(path: Path, key: bytes, scheme: str) -> list[str]:
    try:
        return [n.decode() for n in _unpickle(path)[key]]
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ShardInputError(f"{path}: not a {scheme} meta file (class names under {key!r}: "
                              f"{exc.__class__.__name__})") from None


def load(root: Path, scheme: str) -> tuple[list[str], dict[str, Rows]]:
    """Class names and, per split, (path, label, [32,32,3] uint8 pixels) rows in file order."""
    folder, train_files, test_file, meta_file, label_key, names_key = LAYOUT[scheme]
    if not root.is_dir():
        raise ShardInputError(f"{scheme} {root}: no such directory")
    if (root / folder).is_dir():
        root = root / folder
    names = _class_names(root / meta_file, names_key, scheme)
    splits = {}
    for split, files in (("train", train_files), ("val", [test_file])):
        rows = []
        for name in files:
            batch = _unpickle(root / name)
            try:
                data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                labels = [int(x) for x in batch[label_key]]
            except (KeyError, ValueError, TypeError) as exc:
                raise ShardInputError(f"{root / name}: not a {scheme} batch ({exc!r})") from None
            pixels = data.transpose(0, 2, 3, 1)  # [N,32,32,3]
            rows += [(f"{scheme}:{name}/{i}", labels[i], np.ascontiguousarray(pixels[i]))
                     for i in range(len(labels))]
        splits[split] = rows
    bad = [p for p, k, _ in splits["train"] + splits["val"] if not 0 <= k < len(names)]
    if bad:
        raise ShardInputError(f"{root}: label out of range for {bad[0]}")
    return names, splits
