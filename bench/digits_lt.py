"""A small real-image set that needs no download: scikit-learn's handwritten digits as an image
folder, for the fidelity runs (bench/fidelity.py) on data that is not synthetic.

The digits (1,797 scans, 8×8, 17 grey levels, about 180 per class; UCI "Optical Recognition of
Handwritten Digits") ship inside the scikit-learn wheel. Each is written as a 32×32 RGB PNG
(bicubic upscale), so the CIFAR-style 32-px recipes apply unchanged; ``ltpipe shard`` then holds
out a balanced val split and makes train long-tailed:

    pip install scikit-learn            # bench only, not a dependency of ltpipe
    python -m ltpipe.bench.digits_lt /tmp/digits
    ltpipe shard imagefolder:/tmp/digits /tmp/digits-lt --val-per-class 50 --imbalance 64

which gives train counts 128, 83, 52, 33, 20, 13, 8, 5, 3, 2 (many/medium/few classes 1/4/5)
and 50 val images per class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 32


def write_digits(out: Path) -> list[int]:
    """Write every digit as OUT/<digit>/<index>.png; returns the count per class."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("digits_lt: needs scikit-learn (pip install scikit-learn)") from None
    digits = load_digits()
    counts = [0] * 10
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        grey = np.clip(image * (255.0 / 16.0), 0, 255).astype(np.uint8)
        big = Image.fromarray(grey, mode="L").resize((SIDE, SIDE), Image.BICUBIC).convert("RGB")
        folder = out / f"digit{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{i:04d}.png.tmp"
        big.save(tmp, format="PNG")
        tmp.replace(folder / f"{i:04d}.png")  # no half-written file under its final name
        counts[int(label)] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="image folder to write (one folder per digit)")
    args = parser.parse_args()
    counts = write_digits(args.out)
    print(f"digits_lt: {sum(counts)} images in {args.out} (per class {counts})")


if __name__ == "__main__":
    main()
