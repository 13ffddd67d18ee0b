"""Synthetic long-tailed images: the embedded default data set (no files, no downloads).

Built for the situation CMO (Park et al., CVPR 2022, §3) targets: the tail lacks *context*
diversity. Class k is a foreground object (a shape in a saturated colour, with a surface pattern
for large class numbers) pasted on a background *context* (a muted textured scene). Class sizes
follow the exponential profile of METHODS.md, Class groups; head classes are seen on many
contexts, tail classes on very few; the balanced val split draws contexts uniformly, so a model
must recognise the object, not the scene. Every image is rendered from (seed, split, class,
index) alone, in any process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from ltpipe.shards.longtail import longtail_counts

PALETTE = np.array([  # saturated hues, far from the muted context colours
    (230, 25, 25), (25, 200, 40), (30, 60, 235), (245, 220, 20), (235, 20, 220),
    (20, 225, 230), (250, 130, 0), (140, 20, 245), (255, 255, 255), (10, 10, 10),
], np.float32)
NUM_SHAPES = 10
SPLIT_CODES = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SynthSpec:
    """One synthetic data set; hashable so workers cache its textures."""

    num_classes: int = 20
    imbalance: float = 100.0
    n_max: int = 500
    side: tuple[int, int] = (32, 32)  # long side drawn uniformly in [lo, hi] per image
    aspects: tuple[float, ...] = (1.0,)  # width/height choices
    val_per_class: int = 50
    num_contexts: int = 16
    grain: float = 6.0  # per-image pixel noise amplitude
    detail: float = 10.0  # fixed fine texture amplitude of the contexts (JPEG size grows with it)
    seed: int = 0

    def class_counts(self) -> list[int]:
        # at least one image per class: a tiny override (e.g. 6 classes of <= 40) keeps every class
        return [max(1, n) for n in longtail_counts(self.n_max, self.num_classes, self.imbalance)]


PROFILES = {
    "default": SynthSpec(),
    "large": SynthSpec(num_classes=100, n_max=300, side=(96, 128), aspects=(1.0, 4 / 3, 3 / 4),
                       val_per_class=10, num_contexts=32),
    "inat": SynthSpec(num_classes=1000, imbalance=256.0, n_max=200, side=(500, 800),
                      aspects=(1.0, 4 / 3, 3 / 4), val_per_class=3, num_contexts=32, grain=0.0,
                      detail=7.0),
}


def make_spec(size: str = "default", *, classes: int | None = None,
              imbalance: float | None = None, max_per_class: int | None = None,
              image_size: int | None = None, seed: int = 0) -> SynthSpec:
    """A profile with optional overrides (tests use e.g. classes=6, max_per_class=40)."""
    if size not in PROFILES:
        raise ValueError(f"--size: unknown profile {size!r} (choose from {', '.join(PROFILES)})")
    spec = replace(PROFILES[size], seed=seed)
    if classes is not None:
        spec = replace(spec, num_classes=int(classes))
    if imbalance is not None:
        spec = replace(spec, imbalance=float(imbalance))
    if max_per_class is not None:
        val = min(spec.val_per_class, max(1, int(max_per_class) // 4))
        spec = replace(spec, n_max=int(max_per_class), val_per_class=val)
    if image_size is not None:
        spec = replace(spec, side=(int(image_size), int(image_size)), aspects=(1.0,))
    if spec.num_classes < 2 or spec.n_max < 1 or spec.side[0] < 8:
        raise ValueError("synthetic: need >= 2 classes, >= 1 image per class, images >= 8 px")
    return spec


def class_contexts(spec: SynthSpec) -> list[np.ndarray]:
    """Contexts each class is seen on in train: ~K*(n_k/n_max)^0.6, at least 1 (tail: 1-2)."""
    rng = np.random.default_rng([spec.seed, 7])
    k_all = spec.num_contexts
    out = []
    for n in spec.class_counts():
        m = int(np.clip(round(k_all * (n / spec.n_max) ** 0.6), 1, k_all))
        out.append(np.sort(rng.permutation(k_all)[:m]))
    return out


def synthetic_items(spec: SynthSpec) -> dict[str, list[tuple[str, int, tuple]]]:
    """Per split, (path, label, render-arg) triples in class order (the writer shuffles)."""
    counts = {"train": spec.class_counts(), "val": [spec.val_per_class] * spec.num_classes}
    return {split: [(f"synthetic:{split}/{k}/{i}", k, (spec, split, k, i))
                    for k, n in enumerate(per_class) for i in range(n)]
            for split, per_class in counts.items()}


def class_names(spec: SynthSpec) -> list[str]:
    return [f"class{k:0{len(str(spec.num_classes - 1))}d}" for k in range(spec.num_classes)]


def render(arg: tuple, max_bytes: int | None = None) -> np.ndarray:
    """The image [H,W,3] uint8 of sample (spec, split, class, index); deterministic."""
    spec, split, label, index = arg
    rng = np.random.default_rng([spec.seed, SPLIT_CODES[split], label, index])
    long_side = int(rng.integers(spec.side[0], spec.side[1] + 1))
    aspect = spec.aspects[int(rng.integers(len(spec.aspects)))]
    if aspect <= 1:  # portrait or square: the height is the long side
        h, w = long_side, round(long_side * aspect)
    else:
        h, w = round(long_side / aspect), long_side
    if split == "train":
        contexts = _contexts_of(spec)[label]
        context = int(contexts[rng.integers(len(contexts))])
    else:
        context = int(rng.integers(spec.num_contexts))
    img = _background(spec, context, h, w, rng)
    _paste_object(img, label, rng)
    if spec.grain > 0:
        img += rng.normal(0.0, spec.grain, size=(h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _contexts_of(spec: SynthSpec) -> list[np.ndarray]:
    return class_contexts(spec)


def _background(spec: SynthSpec, context: int, h: int, w: int, rng) -> np.ndarray:
    """A random crop (and flip) of the context's texture, colour-jittered; float32 [h,w,3]."""
    tex = _texture(spec, context)
    top = int(rng.integers(tex.shape[0] - h + 1))
    left = int(rng.integers(tex.shape[1] - w + 1))
    img = tex[top:top + h, left:left + w]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return img * rng.uniform(0.85, 1.15, size=3).astype(np.float32)  # float32 [h,w,3]


@functools.lru_cache(maxsize=64)
def _texture(spec: SynthSpec, context: int) -> np.ndarray:
    """Context texture [T,T,3] uint8, T = 1.25 x the largest image side: two muted colours
    mixed by a pattern (stripes, checks, rings or blobs) plus fine detail."""
    rng = np.random.default_rng([spec.seed, 11, context])
    t = int(np.ceil(spec.side[1] * 1.25))
    yy, xx = np.mgrid[0:t, 0:t].astype(np.float32) / spec.side[1]  # ~1 per image side
    freq = rng.uniform(1.5, 4.0) * 2 * np.pi
    theta = rng.uniform(0, np.pi)
    kind = context % 4
    if kind == 0:  # stripes
        pattern = np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)))
    elif kind == 1:  # checks
        pattern = np.sign(np.sin(freq * xx) * np.sin(freq * yy)) * 0.8
    elif kind == 2:  # rings
        cy, cx = rng.uniform(0, t / spec.side[1], size=2)
        pattern = np.sin(freq * np.hypot(yy - cy, xx - cx))
    else:  # blobs: a few random low-frequency waves
        pattern = sum(np.sin(rng.uniform(1, 3) * 2 * np.pi * (xx * np.cos(a) + yy * np.sin(a))
                             + rng.uniform(0, 6.3)) for a in rng.uniform(0, np.pi, size=3)) / 2
    grey = rng.uniform(70, 180)
    c1, c2 = (grey + rng.uniform(-45, 45, size=3) for _ in range(2))  # muted: near a grey level
    mix = (0.5 + 0.5 * np.clip(pattern, -1, 1))[..., None]
    detail = rng.normal(0, spec.detail, size=(t, t, 1))
    # uint8: a quarter of float32's memory per cached texture (inat: 32 x 3 MB per worker)
    return np.clip(c1 * mix + c2 * (1 - mix) + detail, 0, 255).astype(np.uint8)


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of shape `shape` on coordinates u, v in [-1, 1]."""
    au, av = np.abs(u), np.abs(v)
    r = np.hypot(u, v)
    masks = (
        lambda: r < 0.95,  # disc
        lambda: np.maximum(au, av) < 0.8,  # square
        lambda: (v > -0.8) & (v < 0.85) & (au < (0.85 - v) * 0.55),  # triangle
        lambda: (np.minimum(au, av) < 0.28) & (np.maximum(au, av) < 0.95),  # plus
        lambda: (r < 0.95) & (r > 0.55),  # ring
        lambda: au + av < 0.95,  # diamond
        lambda: (au < 0.95) & (av < 0.38),  # horizontal bar
        lambda: (np.abs(au - av) < 0.25) & (np.maximum(au, av) < 0.9),  # X
        lambda: (r < 0.95) & (v < 0.1),  # half disc
        lambda: (av < 0.95) & (au < 0.3),  # vertical bar
    )
    return masks[shape % NUM_SHAPES]()


def _paste_object(img: np.ndarray, label: int, rng) -> None:
    """Draw class `label`'s object in place: shape, colour and surface pattern from the label;
    position, size and brightness vary per image."""
    h, w = img.shape[:2]
    colour = label % len(PALETTE)
    shape = (label + 3 * (label // len(PALETTE))) % NUM_SHAPES
    variant = label // (len(PALETTE) * NUM_SHAPES)
    size = max(4, int(min(h, w) * rng.uniform(0.45, 0.65)))
    top = int(rng.integers(h - size + 1))
    left = int(rng.integers(w - size + 1))
    u = np.linspace(-1, 1, size, dtype=np.float32)
    v, u = np.meshgrid(u, u, indexing="ij")
    mask = _shape_mask(shape, u, v)
    shade = np.ones_like(u)
    if variant:  # surface stripes whose angle/frequency encode the variant
        angle = variant * np.pi / 5
        shade = 0.75 + 0.25 * np.sign(np.sin((2 + variant % 3) * np.pi
                                              * (u * np.cos(angle) + v * np.sin(angle))))
    rgb = PALETTE[colour] * rng.uniform(0.85, 1.0) * shade[..., None]
    region = img[top:top + size, left:left + size]
    region[mask] = rgb[mask]
