"""Q from a decoded cache: Q's most-drawn images kept decoded, at a bounded size, on the device.

Why it pays: Q draws class k with probability q_k ∝ n_k^−r spread over the class's n_k images, so
image i is drawn with probability p_i = q(y_i)/n_{y_i}; at r = 1 an image of a 2-image class is
drawn 500 times as often as one of a 1,000-image class, and a small share of the images takes most
of Q's draws (iNaturalist 2018: the table in README.md).

What is kept: the images ranked by p_i (``MinorityDraws.sample_probabilities``, highest first,
ties by sample id), taken in that order while the budget holds them. Each is decoded once by the
loader's own decoder (nvJPEG or libjpeg-turbo, through DALI), resized with DALI's antialiased
linear filter so that its long side is at most ``side`` (smaller images are kept as stored), and
packed as uint8 (``kernels.crop_paste.SourceImages``): HWC on the loader's GPU, or in pinned host
memory when an explicit budget is larger than the device has room for; x-major in host memory for
a CPU loader (the CPU kernel's layout). Coverage, the share of Q's draws the cache serves, is
Σ p_i over the cached images (expected; the loader also counts it, ``Batch.meta["q_cache"]``).

A step's cached rows cost a gather (their slots, ``slot_of[ids]``), their crop windows on the
cached image's size (``q_decode.crop_windows``, all rows at once), one int32 buffer copied to the
device, and one ``crop_resize_paste_`` from the cache into the background's boxes (or, for a mixer
that reads Q's whole images, into Q's images): no JPEG decode and no Python per row. With a
cache, Q is not in the loader's main DALI pipeline: the loader draws Q's ids on the host (the same
pure function of (seed, rank, epoch, step) as Q's workers), and the rows the cache does not hold
are decoded by a pipeline of their own (q_misses.py). When the cache holds every image Q can draw
(``complete``: small sets such as CIFAR-LT, or a large enough budget) there is none: Q decodes
nothing.

Resume: the selection is a prefix of a ranking fixed by the class counts and r, so (images, side)
name it; the loader's state keeps them and a resumed loader rebuilds the same selection even when
its budget differs (an "auto" budget follows the free memory), so its cached rows are the same.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from ltpipe.kernels.crop_paste import SourceImages
from ltpipe.pipeline.dali_graph import IMAGENET_MEAN, IMAGENET_STD
from ltpipe.pipeline.mix_plan import MixPlan, host_to_device
from ltpipe.pipeline.q_decode import crop_windows, jpeg_size

log = logging.getLogger(__name__)

AUTO = "auto"
DEFAULT_SIDE = 384  # long side of a cached image (README.md: why 384)
AUTO_DEVICE_SHARE = 0.15  # "auto" on a GPU: this share of its free memory when the loader is built
AUTO_HOST_SHARE = 0.25  # "auto" on the CPU: this share of the available memory, split per rank
DEVICE_ROOM = 0.5  # a budget above this share of the free device memory goes to pinned host memory
BUILD_BATCH = 64
HEADER_CHUNK = 4096
GB = 1e9


def available_host_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), else the free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def budget_bytes(q_cache_gb, device: torch.device) -> int:
    """A budget in bytes: ``q_cache_gb`` × 10⁹, or for "auto" AUTO_DEVICE_SHARE of the GPU's free
    memory (the loader is built before the model, so the model and its activations keep the
    rest), or on the CPU AUTO_HOST_SHARE of the available memory split among the node's ranks."""
    if q_cache_gb != AUTO:
        return int(float(q_cache_gb) * GB)
    if device.type == "cuda":
        return int(AUTO_DEVICE_SHARE * torch.cuda.mem_get_info(device)[0])
    from ltpipe.pipeline.loader_args import local_world_size

    return int(AUTO_HOST_SHARE * available_host_bytes() / local_world_size())


def ranking(p: np.ndarray) -> np.ndarray:
    """Sample ids by draw probability, highest first (ties: lower id first); p = 0 left out."""
    order = np.argsort(-p, kind="stable")
    return order[p[order] > 0]


def fitted_shapes(ids: np.ndarray, payloads, side: int) -> np.ndarray:
    """int64 [n, 2] (h, w) of each image once its long side is at most ``side`` (from the JPEG
    headers; the rule of ``ltpipe shard --max-size``)."""
    from ltpipe.shards.encode import fitted_size

    out = np.empty((len(ids), 2), dtype=np.int64)
    for n, i in enumerate(ids):
        w, h = fitted_size(*jpeg_size(payloads.read(int(i))), side)
        out[n] = h, w
    return out


def select(order: np.ndarray, payloads, side: int, budget: int, images: int | None = None):
    """(ids, shapes) of the cached images: the longest prefix of ``order`` whose decoded bytes fit
    ``budget``, or exactly the first ``images`` (a resumed run's selection)."""
    if images is not None:
        ids = order[:images]
        return ids, fitted_shapes(ids, payloads, side)
    ids, shapes, total = [], [], 0
    for start in range(0, len(order), HEADER_CHUNK):  # headers read only as far as needed
        chunk = order[start:start + HEADER_CHUNK]
        sh = fitted_shapes(chunk, payloads, side)
        fits = total + np.cumsum(sh[:, 0] * sh[:, 1] * 3) <= budget
        stop = len(chunk) if fits.all() else int(np.argmin(fits))
        ids.append(chunk[:stop])
        shapes.append(sh[:stop])
        total += int((sh[:stop, 0] * sh[:stop, 1] * 3).sum())
        if stop < len(chunk):
            break
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
    return np.concatenate(ids), np.concatenate(shapes)


def placement(nbytes: int, device: torch.device) -> str:
    """"cuda" (the loader's GPU), "pinned" (host memory the GPU reads through its mapping) or
    "cpu"."""
    if device.type != "cuda":
        return "cpu"
    return "cuda" if nbytes <= DEVICE_ROOM * torch.cuda.mem_get_info(device)[0] else "pinned"


def decode_into(pixels: torch.Tensor, offsets, shapes, jpegs: list, decoder: str,
                device_id: int | None, threads: int, x_major: bool = False) -> None:
    """Decode ``jpegs`` with DALI on ``decoder`` ("mixed" = nvJPEG, "cpu"), resize each to its
    (h, w) of ``shapes`` (antialiased linear, the loader's own filter; a no-op at the stored size)
    and write it, HWC or ``x_major`` ([w, h, 3], ``SourceImages``), at its offset into
    ``pixels``."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=BUILD_BATCH, num_threads=threads, device_id=device_id,
                  prefetch_queue_depth=1, exec_dynamic=True)
    def graph():
        jpg = fn.external_source(name="jpg", dtype=types.UINT8)
        size = fn.external_source(name="size", dtype=types.FLOAT)
        img = fn.decoders.image(jpg, device=decoder, output_type=types.RGB,
                                adjust_orientation=False)  # shards hold upright images
        return fn.resize(img, size=size, interp_type=types.INTERP_LINEAR)

    pipe = graph()
    pipe.build()
    for start in range(0, len(jpegs), BUILD_BATCH):
        part = slice(start, start + BUILD_BATCH)
        pipe.feed_input("jpg", jpegs[part])
        pipe.feed_input("size", [np.asarray(s, np.float32) for s in shapes[part]])
        out = pipe.run()[0]
        for n in range(len(jpegs[part])):
            h, w = (int(v) for v in shapes[start + n])
            o = int(offsets[start + n])
            view = pixels[o:o + h * w * 3].view(h, w, 3) if not x_major else \
                pixels[o:o + h * w * 3].view(w, h, 3).permute(1, 0, 2)
            sample = out[n]
            if decoder == "mixed":
                with torch.cuda.device(device_id):
                    sample = torch.from_dlpack(sample)
            else:
                sample = torch.from_numpy(np.asarray(sample))
            view.copy_(sample)
        if decoder == "mixed":  # the copies read DALI's buffers: done before it reuses them
            torch.cuda.synchronize(device_id)
    del pipe


@dataclass(frozen=True)
class CachedRows:
    """A step's Q rows pasted from the cache (on the loader's device; read-only)."""

    cache: "QCache"
    slots: torch.Tensor  # int32 [b]: cache slot of each row pasted from the cache, else −1
    windows: torch.Tensor  # int32 [b, 4]: (x, y, w, h) crop window in the cached image's pixels
    boxes: torch.Tensor  # int32 [b, 4]: where the row's pixels go in the S x S image
    flips: torch.Tensor  # int32 [b]

    def __getitem__(self, rows: slice) -> "CachedRows":
        return CachedRows(self.cache, self.slots[rows], self.windows[rows], self.boxes[rows],
                          self.flips[rows])

    def paste_(self, dst: torch.Tensor) -> torch.Tensor:
        """Write these rows' boxes into ``dst`` [b, 3, S, S] (in place; returns dst)."""
        return self.cache.paste_(dst, self)


class QCache:
    """The cached images of one rank (``build``), their coverage, and a step's cached rows."""

    def __init__(self, source: SourceImages, ids: np.ndarray, shapes: np.ndarray, side: int,
                 expected: float, num_samples: int, place: str, seconds: float,
                 complete: bool = False):
        self.source, self.ids, self.side, self.place = source, ids, int(side), place
        self.heights, self.widths = shapes[:, 0], shapes[:, 1]
        self.expected, self.seconds = float(expected), float(seconds)
        self.complete = bool(complete)  # it holds every image Q can draw (coverage 1)
        self.slot_of = np.full(num_samples, -1, dtype=np.int32)  # sample id -> slot
        self.slot_of[ids] = np.arange(len(ids), dtype=np.int32)
        self.nbytes = int(source.pixels.numel())
        self._mean = [m * 255 for m in IMAGENET_MEAN]  # the loader's normalisation (dali_graph)
        self._inv_std = [float(np.float32(1.0) / np.float32(s * 255)) for s in IMAGENET_STD]

    @classmethod
    def build(cls, draws, payloads, *, budget: int, side: int, device: torch.device,
              decoder: str, threads: int, images: int | None = None) -> "QCache | None":
        """Select by draw probability within ``budget`` bytes (or the first ``images``) and
        decode; None when nothing fits."""
        t0 = time.perf_counter()
        p = draws.sample_probabilities()
        order = ranking(p)
        ids, shapes = select(order, payloads, side, budget, images)
        if not len(ids):
            return None
        sizes = shapes[:, 0] * shapes[:, 1] * 3
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        place = placement(int(sizes.sum()), device)
        pixels = torch.empty(int(sizes.sum()), dtype=torch.uint8,
                             device=device if place == "cuda" else "cpu",
                             pin_memory=place == "pinned")
        x_major = place == "cpu"  # the CPU kernel's layout (crop_paste_cpu.py), not the GPU's
        decode_into(pixels, offsets, shapes, payloads.read_many(ids), decoder,
                    device.index if device.type == "cuda" else None, threads, x_major)
        on = pixels.device
        source = SourceImages(pixels, torch.from_numpy(offsets).to(on),
                              torch.from_numpy(shapes.astype(np.int32)).to(on), x_major)
        return cls(source, ids, shapes, side, float(p[ids].sum()), p.size, place,
                   time.perf_counter() - t0, complete=len(ids) == len(order))

    def mask(self) -> np.ndarray:
        """bool [N]: the cached sample ids (Q's workers decode a placeholder for them)."""
        return self.slot_of >= 0

    def state(self) -> dict:
        return {"images": len(self.ids), "side": self.side}

    def describe(self) -> str:
        where = {"cuda": "on the GPU", "pinned": "in pinned host memory", "cpu": "in memory"}
        size = f"{self.nbytes / GB:.2f} GB" if self.nbytes >= 0.1 * GB else \
            f"{self.nbytes / 1e6:.1f} MB"
        return (f"Q cache: {len(self.ids):,} of {self.slot_of.size:,} images at <= {self.side} "
                f"px, {size} {where[self.place]}, built in "
                f"{self.seconds:.1f} s: {100 * self.expected:.1f} % of Q's draws (expected)"
                + ("; every image Q can draw, so Q decodes nothing" if self.complete else ""))

    def rows(self, plan: MixPlan, ids: np.ndarray, *, tiles: bool, preset: str, size: int,
             device, decoded: np.ndarray | None = None) -> tuple[CachedRows, torch.Tensor, int]:
        """The step's cached rows (``CachedRows``), the boxes of the rows Q's decoder still
        tiles (int32 [b, 4]: the plan's, empty for the cached rows; or [n, 4]: only the rows
        ``decoded``, int64 [n], q_misses.py) and how many of the b rows are cached. ``tiles``:
        rows paste their boxes, else their whole S x S crop (full mode)."""
        b = ids.size
        slots = self.slot_of[ids]
        hit = slots >= 0
        if tiles:
            box = plan.boxes[:b]
            area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
            paste = hit & plan.mixed[:b] & (area > 0)
        else:
            box = np.tile(np.array([0, 0, size, size], np.int32), (b, 1))
            paste = hit
        windows = np.zeros((b, 4), np.int64)
        if paste.any():
            k = slots[paste]
            windows[paste] = crop_windows(plan.crop_u[:b][paste], self.widths[k],
                                          self.heights[k], preset, size)
        keep = paste[:, None]
        tiled = np.where(keep, 0, plan.boxes[:b]) if decoded is None else plan.boxes[decoded]
        packed = np.concatenate([np.where(paste, slots, -1), windows.reshape(-1),
                                 np.where(keep, box, 0).reshape(-1),
                                 plan.flip[:b].astype(np.int64),
                                 tiled.reshape(-1)]).astype(np.int32)
        flat = host_to_device(packed, device)  # one copy, no device sync
        parts = torch.split(flat, [b, 4 * b, 4 * b, b, tiled.size])
        rows = CachedRows(self, parts[0], parts[1].view(b, 4), parts[2].view(b, 4), parts[3])
        return rows, parts[4].view(-1, 4), int(hit.sum())

    def paste_(self, dst: torch.Tensor, rows: CachedRows) -> torch.Tensor:
        from ltpipe.kernels.crop_paste import crop_resize_paste_

        norm = {} if dst.dtype == torch.uint8 else {"mean": self._mean, "inv_std": self._inv_std}
        return crop_resize_paste_(dst, self.source, rows.slots, rows.windows, rows.boxes,
                                  rows.flips, **norm)
