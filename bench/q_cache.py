"""Coverage of Q's decoded cache against its size per rank, for iNaturalist 2018's class counts.

Coverage is the share of Q's draws the cache serves (pipeline/q_cache.py): the images ranked by
their draw probability q(y_i)/n_{y_i} (q_k ∝ n_k^−r, paper meaning), taken in that order until the
budget is full, and their probabilities summed. This computes it with the loader's own ranking
(``MinorityDraws.sample_probabilities``, ``q_cache.ranking``) on a class-count profile:

iNaturalist 2018 (train): 8,142 classes, 437,513 images, at most 1,000 and at least 2 per
class. The counts are not shipped here, so two smooth long tails through those four facts stand
in for them, each with one shape parameter found by bisection so that the counts sum to 437,513
(one-image corrections to the largest classes fix the rounding):
    "stretched_exp" (the table's): n_k = round(1000 · (2/1000)^((k/(C−1))^γ)), k = 0..C−1;
        γ = 1 is the exponential profile of the CIFAR-LT/ImageNet-LT recipes, which would hold
        1.3 M images: iNat's total needs a tail that falls faster at first (γ ≈ 0.51).
    "shifted_zipf": n_k = round(1000 · (1 + k/s)^−β), β such that the last class has 2.
They bracket the shape the facts leave open; the result records each profile's Many / Medium /
Few class counts (> 100, 20-100, < 20 images). ``--shards DIR`` uses a shard directory's own
train counts instead (e.g. the real iNat 2018, ``ltpipe shard inat:...``).
Image size: iNat 2018's images have a long side of at most 800 px; all are taken as 800 x 600
(4:3), so a cached image at the bound S is S x 3S/4 x 3 bytes. ``crop_detail_224`` says what a
bound costs a 224 px crop (``crop_detail``): the basis of the default bound, 384.

    python -m ltpipe.bench.q_cache --out bench/results
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ltpipe.bench.harness import ScriptParser, positive_int, positive_ints, write_result
from ltpipe.pipeline.minority import MinorityDraws
from ltpipe.pipeline.q_cache import DEFAULT_SIDE, GB, ranking
from ltpipe.pipeline.samplers import class_probabilities

INAT2018 = dict(classes=8142, images=437_513, most=1000, fewest=2)
STORED = (800, 600)  # the long side of iNat 2018's images, at 4:3


def _fit(make, lo: float, hi: float, images: int) -> tuple[np.ndarray, float]:
    """Bisect the shape parameter (the total grows with it) so the counts sum to ``images``."""
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if make(mid).sum() > images else (mid, hi)
    n = make(hi)
    gap = images - int(n.sum())  # a few images from the rounding, moved at the head
    n = np.sort(n)[::-1]
    n[1:1 + abs(gap)] += np.sign(gap)
    return n, hi


def profiles(classes: int, images: int, most: int, fewest: int) -> dict:
    """name -> (class counts int64 [C], largest first, summing to ``images``; shape parameter)."""
    k = np.arange(classes)
    x = k / (classes - 1)

    def stretched(g: float) -> np.ndarray:
        return np.round(most * (fewest / most) ** (x ** g)).astype(np.int64)

    def zipf(s: float) -> np.ndarray:
        beta = np.log(most / fewest) / np.log(1 + (classes - 1) / s)
        return np.round(most * (1 + k / s) ** -beta).astype(np.int64)

    return {"stretched_exp": _fit(stretched, 1e-3, 1.0, images),
            "shifted_zipf": _fit(zipf, 1.0, 1e6, images)}


def groups(counts: np.ndarray) -> dict:
    return {"many": int((counts > 100).sum()), "medium": int(((counts >= 20) &
                                                              (counts <= 100)).sum()),
            "few": int((counts < 20).sum()), "median": float(np.median(counts))}


def coverage(counts: np.ndarray, r: float, image_bytes: int, budgets_gb: list[float]) -> dict:
    """Coverage at each budget (GB per rank), and the bytes that hold every image Q can draw."""
    labels = np.repeat(np.arange(counts.size), counts)
    p = MinorityDraws(labels, class_probabilities(counts, r), 0, 0).sample_probabilities()
    held = np.cumsum(p[ranking(p)])  # coverage of the first n images
    out = {}
    for gb in budgets_gb:
        n = min(int(gb * GB // image_bytes), held.size)
        out[f"{gb:g}"] = {"images": n, "coverage": float(held[n - 1]) if n else 0.0}
    return out


def crop_detail(side: int, size: int = 224, crops: int = 200_000) -> dict:
    """How much of a crop's detail a cached copy keeps: per random-resized crop of an 800 x 600
    image (the loader's own rule, ``q_decode.crop_windows``), the source pixels per output pixel
    along each axis, capped at 1, from the copy at long side ``side`` relative to the stored
    image (geometric mean of the two axes); its mean and 10th percentile, and the share of crops
    the copy still holds at one source pixel or more per output pixel."""
    from ltpipe.pipeline.q_decode import crop_windows

    u = np.random.default_rng(0).random((crops, 10, 4))
    w0, h0 = STORED
    w1, h1 = side, side * h0 // w0
    orig = crop_windows(u, np.full(crops, w0), np.full(crops, h0), "imagenet", size)
    copy = crop_windows(u, np.full(crops, w1), np.full(crops, h1), "imagenet", size)
    per_px = lambda win: np.minimum(1.0, win[:, 2:] / size)  # noqa: E731  [n, 2] (x, y)
    kept = np.sqrt(np.prod(per_px(copy) / per_px(orig), axis=1))
    return {"mean": float(kept.mean()), "p10": float(np.percentile(kept, 10)),
            "full_detail_share": float(np.mean(np.all(copy[:, 2:] >= size, axis=1)))}


def parse_args(argv=None) -> argparse.Namespace:
    p = ScriptParser(__file__, __doc__)
    p.add_argument("--sides", type=positive_ints, default=[DEFAULT_SIDE, 256, 512],
                   help="cached long sides (px); the first is the table's")
    p.add_argument("--gb", default="0.25,0.5,1,2,4,8,16,32,64",
                   help="comma-separated budgets per rank (GB = 1e9 bytes)")
    p.add_argument("--shards", type=Path, default=None,
                   help="a shard directory: its train class counts instead of the profiles")
    p.add_argument("--crops", type=positive_int, default=200_000,
                   help="random-resized crops drawn for crop_detail")
    p.add_argument("--out", default=None, help="results folder (default bench/results)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        budgets = [float(v) for v in args.gb.split(",") if v]
    except ValueError:
        budgets = []
    if not budgets or min(budgets) <= 0:
        print(f"ltpipe.bench.q_cache: --gb: expected positive numbers, got {args.gb!r}",
              file=sys.stderr)
        return 2
    if args.shards is not None:
        from ltpipe.shards.format import load_manifest

        counts = np.asarray(load_manifest(args.shards).split("train").class_counts, np.int64)
        sets = {args.shards.name: (counts, None)}
        params = {"dataset": str(args.shards)}
    else:
        sets = profiles(**INAT2018)
        params = {"dataset": "iNaturalist 2018 train (profiles)", **INAT2018,
                  "profiles": {"stretched_exp": "round(most*(fewest/most)^((k/(C-1))^gamma))",
                               "shifted_zipf": "round(most*(1+k/s)^-beta), beta: last = fewest"}}
    results = {}
    for name, (counts, shape) in sets.items():
        results[name] = {"shape": shape, "groups": groups(counts)}
        for side in args.sides:
            w, h = side, side * STORED[1] // STORED[0]
            for r in (0.0, 1.0):
                results[name][f"side{side}_r{r:g}"] = {
                    "image_bytes": w * h * 3, "all_images_gb": counts.sum() * w * h * 3 / GB,
                    "by_gb": coverage(counts, r, w * h * 3, budgets)}
    sides = sorted({*args.sides, 224, 320, 448})
    results["crop_detail_224"] = {f"side{v}": crop_detail(v, crops=args.crops) for v in sides}
    params.update(stored_px=list(STORED), sides=args.sides, budgets_gb=budgets, crops=args.crops,
                  r_meaning="paper: q_k proportional to n_k^-r")
    path = write_result("q_cache_coverage", params, results, out_dir=args.out, device="cpu")
    side = args.sides[0]
    for name in sets:
        res = results[name]
        print(f"{name} {res['groups']}, side {side}: GB per rank -> images, coverage r=0, r=1")
        for gb, at in res[f"side{side}_r0"]["by_gb"].items():
            one = res[f"side{side}_r1"]["by_gb"][gb]["coverage"]
            print(f"  {gb:>6} GB: {at['images']:>7,} images  {100 * at['coverage']:5.1f} %  "
                  f"{100 * one:5.1f} %")
    for key, d in results["crop_detail_224"].items():
        print(f"  {key}: a 224 px crop keeps {100 * d['mean']:.0f} % of the stored image's detail "
              f"(p10 {100 * d['p10']:.0f} %), full detail in {100 * d['full_detail_share']:.0f} %")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
