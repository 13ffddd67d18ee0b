"""The DALI graph: readers P and Q, decode and augmentation, in ONE pipeline (issue 3).

One pipeline per rank holds every stream so that a single ``run()`` yields a whole step, a single
``checkpoint()`` captures P's reader and Q's iteration counter together, and the executor overlaps
the decoders of both streams. Per stream:

    P ("uniform"):  fn.readers.webdataset(.jpg, .id as INT64) over the tars + DALI index files,
                    shuffle buffer, shard_id/num_shards = rank/world, pad_last_batch (see loader.py)
    Q ("minority", "balanced"): fn.external_source(MinoritySource, parallel=True, batch=True)
    -> decode (device "mixed" = nvJPEG with the hardware decoder where present, "cpu" otherwise)
    -> preset augmentation -> crop_mirror_normalize to fp32/fp16, layout CHW or HWC.

Presets (torchvision equivalents):
    imagenet train: RandomResizedCrop(S, scale (0.08, 1), ratio (3/4, 4/3)) as ROI decode +
                    resize, flip
    imagenet eval:  Resize(round(S*256/224)) shorter side + CenterCrop(S)
    cifar train:    RandomCrop(S, padding=4) (zero pad) + flip
    cifar eval:     identity (a center crop to S, a no-op on SxS images)
Normalization: ImageNet mean/std for both presets (CMO/OTmix CIFAR code uses CIFAR statistics; the
difference is a fixed affine map of the input that the first conv absorbs).
"""

from __future__ import annotations

from dataclasses import dataclass

from ltpipe.pipeline.worker_lifetime import sigint_ignored_while_forking

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


def _augment(jpg, spec: GraphSpec, cpu_decode: bool = False):
    """Encoded bytes -> normalized [3,S,S] (CHW) or [S,S,3] (HWC) per sample; ``cpu_decode``:
    decode and resize on the CPU, then upload (only matters when spec.device is "cuda")."""
    from nvidia.dali import fn, types

    mixed = spec.device == "cuda" and not cpu_decode
    dec = "mixed" if mixed else "cpu"
    hw = {}
    if mixed:  # nvJPEG memory settings as in DALI's ResNet-50 example: no reallocation mid-run
        hw = {"hw_decoder_load": spec.hw_decoder_load, "device_memory_padding": 211025920,
              "host_memory_padding": 140544512}
        if spec.max_side:
            hw.update(preallocate_width_hint=spec.max_side, preallocate_height_hint=spec.max_side)
    s = spec.size
    mirror = fn.random.coin_flip(probability=0.5) if spec.train else 0
    crop = None
    if spec.preset == "imagenet" and spec.train:
        # ROI decode: only the random crop window is decoded, then resized to S x S.
        img = fn.decoders.image_random_crop(
            jpg, device=dec, output_type=types.RGB, random_area=list(RRC_SCALE),
            random_aspect_ratio=list(RRC_RATIO), num_attempts=10, **hw)
        img = fn.resize(img, size=[s, s], interp_type=types.INTERP_LINEAR)  # antialiased
    elif spec.preset == "imagenet":
        img = fn.decoders.image(jpg, device=dec, output_type=types.RGB, **hw)
        img = fn.resize(img, resize_shorter=eval_resize(s), interp_type=types.INTERP_LINEAR)
        crop = (s, s)
    elif spec.train:  # cifar: zero-pad 4 then random S x S crop == slice at an anchor in [-4, 4]
        img = fn.decoders.image(jpg, device=dec, output_type=types.RGB, **hw)
        offsets = [float(v) for v in range(-CIFAR_PAD, CIFAR_PAD + 1)]
        anchor = fn.random.uniform(values=offsets, shape=[2])  # (x, y), absolute pixels
        img = fn.slice(img, anchor, types.Constant([s, s], dtype=types.FLOAT), axis_names="WH",
                       normalized_anchor=False, normalized_shape=False,
                       out_of_bounds_policy="pad", fill_values=0)
    else:
        img = fn.decoders.image(jpg, device=dec, output_type=types.RGB, **hw)
        crop = (s, s)
    if spec.device == "cuda" and cpu_decode:
        img = img.gpu()  # uint8: a quarter of the normalised fp32 bytes over PCIe
    kwargs = {"crop": crop, "out_of_bounds_policy": "pad"} if crop else {}
    return fn.crop_mirror_normalize(
        img, dtype=types.FLOAT16 if spec.half else types.FLOAT,
        output_layout="HWC" if spec.channels_last else "CHW",
        mean=[m * 255 for m in IMAGENET_MEAN], std=[v * 255 for v in IMAGENET_STD],
        mirror=mirror, **kwargs)


def build_pipeline(spec: GraphSpec, reader: dict | None, sources: dict, checkpoint=None):
    """Build the pipeline; outputs are (images, ids) per stream: P first, then ``sources``' order.

    ``reader``: kwargs of fn.readers.webdataset for P (None when P is not requested).
    ``sources``: stream name -> MinoritySource for the Q-type streams.
    """
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.pipeline import OperatorConcurrency, StreamPolicy

    has_q = bool(sources)
    if spec.concurrency not in ("full", "backend"):
        raise ValueError(f"concurrency: must be 'full' or 'backend', got {spec.concurrency!r}")
    full = spec.concurrency == "full"

    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.num_threads,
                  device_id=spec.device_id, seed=spec.seed, prefetch_queue_depth=spec.prefetch,
                  enable_checkpointing=True, checkpoint=checkpoint,
                  py_num_workers=spec.py_workers if has_q else 1,
                  py_start_method=spec.py_start_method,
                  concurrency=OperatorConcurrency.FULL if full else OperatorConcurrency.BACKEND,
                  stream_policy=StreamPolicy.PER_OPERATOR if full else StreamPolicy.PER_BACKEND)
    def graph():
        outs = []
        if reader is not None:
            jpg, ids = fn.readers.webdataset(
                **reader, ext=["jpg", "id"], dtypes=[types.UINT8, types.INT64], name="P")
            outs += [_augment(jpg, spec, "uniform" in spec.cpu_decode), ids]
        for name, src in sources.items():
            jpg, ids = fn.external_source(source=src, num_outputs=2, batch=True, batch_info=True,
                                          parallel=True, dtype=[types.UINT8, types.INT64],
                                          prefetch_queue_depth=max(2, spec.prefetch,
                                                                   spec.py_workers))
            outs += [_augment(jpg, spec, name in spec.cpu_decode), ids]
        return tuple(outs)

    pipe = graph()
    with sigint_ignored_while_forking():  # Q's workers are forked here; Ctrl-C is the trainer's
        pipe.build()
    return pipe
