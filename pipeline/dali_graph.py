"""The DALI graph: readers P and Q, decode and augmentation, in ONE pipeline.

One pipeline per rank holds every stream so that a single ``run()`` yields a whole step, a single
``checkpoint()`` captures P's reader and Q's iteration counter together, and the executor overlaps
the decoders of both streams. Per stream:

    P ("uniform"):  fn.readers.webdataset(.jpg, .id as INT64) over the tars + DALI index files,
                    shuffle buffer, shard_id/num_shards = rank/world, pad_last_batch (see loader.py)
    Q ("minority", "balanced"): fn.external_source(MinoritySource, parallel=True, batch=True)
    -> decode (device "mixed" = nvJPEG with the hardware decoder where present, "cpu" otherwise)
    -> preset augmentation -> crop_mirror_normalize to fp32/fp16, layout CHW or HWC (or, for
    uint8 output, crop, flip and layout only: normalize.py normalises on the consumer's side).

Presets (torchvision equivalents):
    imagenet train: RandomResizedCrop(S, scale (0.08, 1), ratio (3/4, 4/3)) as ROI decode +
                    resize, flip
    imagenet eval:  Resize(round(S*256/224)) shorter side + CenterCrop(S)
    cifar train:    RandomCrop(S, padding=4) (zero pad) + flip
    cifar eval:     identity (a center crop to S, a no-op on SxS images)
Planned Q (a mixer declares a mix plan, mix_plan.py): Q's crop window and flip are drawn on the
host, and the source feeds per-sample decode windows (q_decode.py): ``decoders.image_slice`` (an
ROI decode, libjpeg-turbo or nvJPEG; or, without ``roi_decode``, the whole image and a ``slice``
of the same window) -> ``resize`` of the exact ROI to the
output size ("imagenet") or a zero-padded ``slice`` ("cifar") -> crop_mirror_normalize with the
plan's flip -> ``pad`` to the batch's largest tile. With ``tiles`` only the mixed rows' boxes are
decoded. Why B entries with 1 x 1 placeholders rather than a second pipeline fed only on mixed
steps, or conditionals: one pipeline keeps one run() per step and one checkpoint for P and Q,
and the graph stays static (no batch split and merge per step). A placeholder is not free,
though: about 60 µs of CPU per row through decode, resize, normalisation and padding (DALI runs
one batch size per pipeline). With Q's decoded cache, most rows would be placeholders, so Q
leaves this pipeline and its few uncached rows get one of their own (q_misses.py).
Normalization: ImageNet mean/std for both presets (CMO/OTmix CIFAR code uses CIFAR statistics; the
difference is a fixed affine map of the input that the first conv absorbs).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ltpipe.pipeline.worker_lifetime import (no_garbage_across_fork, sigint_ignored_while_forking,
                                             tied_at_fork)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PRESETS = ("cifar", "imagenet")
DEFAULT_SIZE = {"cifar": 32, "imagenet": 224}
CIFAR_PAD = 4
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def eval_resize(size: int) -> int:
    """Shorter-side resize before the eval center crop: 256 for 224."""
    return int(round(size * 256 / 224))


@dataclass(frozen=True)
class GraphSpec:
    """Everything the graph depends on (no DALI objects, so it is cheap to build and compare)."""

    batch_size: int
    preset: str
    size: int
    train: bool
    device: str  # "cpu" | "cuda"
    half: bool  # fp16 output, else fp32
    channels_last: bool
    num_threads: int
    prefetch: int
    seed: int
    device_id: int | None
    hw_decoder_load: float = 0.65  # DALI's default
    py_workers: int = 2
    py_start_method: str = "fork"
    max_side: int = 0  # largest encoded image side, for nvJPEG preallocation (0: no hint)
    # "full": the P and Q decode/augment chains run concurrently, on their own CUDA streams
    concurrency: str = "full"
    # streams decoded and resized by CPU operators even on "cuda" (uploaded as uint8 S x S before
    # normalisation): moves their decode off the GPU the training step needs (bench/e2e.py
    # ``cpudec=``); worth it when the CPUs can keep up, e.g. with images stored small
    cpu_decode: tuple[str, ...] = ()
    # a third output per stream: the shape [H, W, C] of what each sample decoded (bench/loader.py
    # sums the decoded source pixels)
    count_pixels: bool = False
    raw: bool = False  # uint8 pixels out, not normalised (pipeline/normalize.py)
    # planned Q: decode each window by an ROI decode (True), or decode the whole image and cut
    # the window where it was decoded (False; loader.py, q_decode="tiles-whole": an older DALI
    # note says ROI decoders leave out nvJPEG's hardware decoder; on an H200 it did not help)
    roi_decode: bool = True


def outputs_per_stream(spec: GraphSpec) -> int:
    return 3 if spec.count_pixels else 2


def _decoder_args(spec: GraphSpec, cpu_decode: bool) -> tuple[str, dict]:
    """(decoder device, nvJPEG memory settings) of a stream."""
    mixed = spec.device == "cuda" and not cpu_decode
    hw = {}
    if mixed:  # nvJPEG memory settings as in DALI's ResNet-50 example: no reallocation mid-run
        hw = {"hw_decoder_load": spec.hw_decoder_load, "device_memory_padding": 211025920,
              "host_memory_padding": 140544512}
        if spec.max_side:
            hw.update(preallocate_width_hint=spec.max_side, preallocate_height_hint=spec.max_side)
    return ("mixed" if mixed else "cpu"), hw


def _normalize(img, spec: GraphSpec, mirror, crop=None):
    from nvidia.dali import fn, types

    kwargs = {"crop": crop, "out_of_bounds_policy": "pad"} if crop else {}
    if spec.raw:  # crop, flip and layout: the pixels stay uint8, normalised by the consumer
        return fn.crop_mirror_normalize(
            img, dtype=types.UINT8, output_layout="HWC" if spec.channels_last else "CHW",
            mirror=mirror, **kwargs)
    return fn.crop_mirror_normalize(
        img, dtype=types.FLOAT16 if spec.half else types.FLOAT,
        output_layout="HWC" if spec.channels_last else "CHW",
        mean=[m * 255 for m in IMAGENET_MEAN], std=[v * 255 for v in IMAGENET_STD],
        mirror=mirror, **kwargs)


def _planned(inputs, spec: GraphSpec, cpu_decode: bool = False):
    """Q under a mix plan: (jpg, decode anchor, decode shape, roi start, roi end (not for
    "cifar"), out size, mirror) per sample (q_decode.py) -> (normalized tiles padded to the
    batch's largest, what was decoded: the window, or the whole image without ``roi_decode``)."""
    from nvidia.dali import fn, types

    if spec.preset == "imagenet":
        jpg, anchor, shape, roi_start, roi_end, out, mirror = inputs
    else:  # cifar: unit scale, the ROI's start and the output size say it all
        jpg, anchor, shape, roi_start, out, mirror = inputs
    dec, hw = _decoder_args(spec, cpu_decode)
    # windows in the header's (stored) coordinates: shards hold upright images (q_decode.py)
    if spec.roi_decode:
        window = decoded = fn.decoders.image_slice(
            jpg, anchor, shape, device=dec, output_type=types.RGB, normalized_anchor=False,
            normalized_shape=False, adjust_orientation=False, **hw)
    else:  # the same window, cut from the whole image where it was decoded
        decoded = fn.decoders.image(jpg, device=dec, output_type=types.RGB,
                                    adjust_orientation=False, **hw)
        window = fn.slice(decoded, anchor, shape, axis_names="WH", normalized_anchor=False,
                          normalized_shape=False)
    if spec.preset == "imagenet":
        img = fn.resize(window, size=out, roi_start=roi_start, roi_end=roi_end,
                        interp_type=types.INTERP_LINEAR)  # antialiased, as the full crop's
    else:  # cifar: unit scale, zero padding where the shifted window leaves the image
        img = fn.slice(window, roi_start, out, axis_names="HW", normalized_anchor=False,
                       normalized_shape=False, out_of_bounds_policy="pad", fill_values=0)
    if spec.device == "cuda" and cpu_decode:
        img = img.gpu()
    img = _normalize(img, spec, mirror)
    return fn.pad(img, axis_names="HW", fill_value=0), decoded


def _augment(jpg, spec: GraphSpec, cpu_decode: bool = False):
    """Encoded bytes -> (normalized [3,S,S] (CHW) or [S,S,3] (HWC), the decoded window [h,w,3])
    per sample; ``cpu_decode``: decode and resize on the CPU, then upload (only matters when
    spec.device is "cuda")."""
    from nvidia.dali import fn, types

    dec, hw = _decoder_args(spec, cpu_decode)
    s = spec.size
    mirror = fn.random.coin_flip(probability=0.5) if spec.train else 0
    crop = None
    if spec.preset == "imagenet" and spec.train:
        # ROI decode: only the random crop window is decoded, then resized to S x S.
        decoded = fn.decoders.image_random_crop(
            jpg, device=dec, output_type=types.RGB, random_area=list(RRC_SCALE),
            random_aspect_ratio=list(RRC_RATIO), num_attempts=10, **hw)
        img = fn.resize(decoded, size=[s, s], interp_type=types.INTERP_LINEAR)  # antialiased
    elif spec.preset == "imagenet":
        decoded = fn.decoders.image(jpg, device=dec, output_type=types.RGB, **hw)
        img = fn.resize(decoded, resize_shorter=eval_resize(s), interp_type=types.INTERP_LINEAR)
        crop = (s, s)
    elif spec.train:  # cifar: zero-pad 4 then random S x S crop == slice at an anchor in [-4, 4]
        decoded = fn.decoders.image(jpg, device=dec, output_type=types.RGB, **hw)
        offsets = [float(v) for v in range(-CIFAR_PAD, CIFAR_PAD + 1)]
        anchor = fn.random.uniform(values=offsets, shape=[2])  # (x, y), absolute pixels
        img = fn.slice(decoded, anchor, types.Constant([s, s], dtype=types.FLOAT),
                       axis_names="WH", normalized_anchor=False, normalized_shape=False,
                       out_of_bounds_policy="pad", fill_values=0)
    else:
        img = decoded = fn.decoders.image(jpg, device=dec, output_type=types.RGB, **hw)
        crop = (s, s)
    if spec.device == "cuda" and cpu_decode:
        img = img.gpu()  # uint8: a quarter of the normalised fp32 bytes over PCIe
    return _normalize(img, spec, mirror, crop), decoded


def build_pipeline(spec: GraphSpec, reader: dict | None, sources: dict, checkpoint=None):
    """Build the pipeline; outputs are (images, ids[, decoded shapes]) per stream
    (``outputs_per_stream``): P first, then ``sources``' order.

    ``reader``: kwargs of fn.readers.webdataset for P (None when P is not requested).
    ``sources``: stream name -> MinoritySource for the Q-type streams (or a MissSource: Q's
    cache misses, with their rows in place of the ids).
    """
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.pipeline import OperatorConcurrency, StreamPolicy

    workers = any(src.parallel for src in sources.values())
    if spec.concurrency not in ("full", "backend"):
        raise ValueError(f"concurrency: must be 'full' or 'backend', got {spec.concurrency!r}")
    full = spec.concurrency == "full"

    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.num_threads,
                  device_id=spec.device_id, seed=spec.seed, prefetch_queue_depth=spec.prefetch,
                  enable_checkpointing=True, checkpoint=checkpoint,
                  py_num_workers=spec.py_workers if workers else 1,
                  py_start_method=spec.py_start_method,
                  concurrency=OperatorConcurrency.FULL if full else OperatorConcurrency.BACKEND,
                  stream_policy=StreamPolicy.PER_OPERATOR if full else StreamPolicy.PER_BACKEND)
    def graph():
        outs = []

        def add(stream_out, ids):
            images, decoded = stream_out
            outs.extend([images, ids] + ([decoded.shape()] if spec.count_pixels else []))

        if reader is not None:
            jpg, ids = fn.readers.webdataset(
                **reader, ext=["jpg", "id"], dtypes=[types.UINT8, types.INT64], name="P")
            add(_augment(jpg, spec, "uniform" in spec.cpu_decode), ids)
        for name, src in sources.items():
            planned = src.planned is not None
            dtypes = [types.UINT8, types.INT64]
            if planned:  # decode anchor, shape, roi start[, roi end], out size, mirror
                roi = [types.FLOAT] * (3 if spec.preset == "imagenet" else 2)
                dtypes += [types.INT32, types.INT32, *roi, types.INT32]
            # Q's workers (minority.py), or a callback of this process (q_misses.py)
            queue = {"parallel": True, "prefetch_queue_depth": max(2, spec.prefetch,
                                                                   spec.py_workers)} \
                if src.parallel else {}
            got = fn.external_source(source=src, num_outputs=len(dtypes), batch=True,
                                     batch_info=True, dtype=dtypes, **queue)
            on_cpu = name in spec.cpu_decode
            if planned:
                add(_planned([got[0], *got[2:]], spec, on_cpu), got[1])
            else:
                add(_augment(got[0], spec, on_cpu), got[1])
        return tuple(outs)

    pipe = graph()
    with _starting_workers(spec.py_start_method if workers else None):
        pipe.build()
    return pipe


@contextlib.contextmanager
def _starting_workers(start_method: str | None):
    """Guards ``pipe.build()``, where DALI starts the reader processes of the parallel sources
    (Q's) by ``start_method``; None, without any: no guard. Forked readers are tied to this
    process at birth (they ignore Ctrl-C and SIGTERM, and die with it) and no garbage crosses
    the fork; this process keeps its handlers, so a signal that comes meanwhile still reaches
    it. Spawned readers (CUDA already initialised) inherit only an ignored disposition, so the
    signals are ignored here too while they start, and one that comes then is lost
    (train/SAFETY.md)."""
    if start_method is None:
        yield
        return
    with contextlib.ExitStack() as guards:
        if start_method != "fork":
            guards.enter_context(sigint_ignored_while_forking())
        guards.enter_context(tied_at_fork())
        guards.enter_context(no_garbage_across_fork())
        yield
