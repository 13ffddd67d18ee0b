"""``make_loader``: one rank's P/Q streams as an iterable of steps (METHODS.md: Conventions).

Each step is ``{stream name: Batch}``: "uniform" = P (every sample once per epoch across ranks),
"minority" = Q with class probability q(r, k), "balanced" = Q with r = 0 (M2m's loader).

Epochs and the ragged end. DALI splits the N samples of a split into ``world`` contiguous shards
(shard s = [N*s//W, N*(s+1)//W)); in training rank r reads shard (r + k) % W in its k-th reader
epoch (DALI's rotation), in evaluation always shard r. ``pad_last_batch`` pads every shard to
ceil(N/W) samples and then to whole batches, so every rank runs L = ceil(ceil(N/W)/B) steps per
epoch and the next epoch starts on a batch boundary. The last step is cut to the rank's real
samples, so an epoch returns every sample exactly once across ranks, with one exception in
training: when a rank's shard ends exactly on a batch boundary one step early (only if
floor(N/W) is a multiple of B and W does not divide N), that rank's last step returns ONE padded
duplicate so that all ranks run the same number of DDP steps. Evaluation never returns padding:
such an all-padding step is skipped on that rank (``len`` is then one less there). Q draws B ids
every step and its last batch is cut to the P batch's size; Q's epoch is P's L steps.
P's order is DALI's buffer shuffle (up to 2,048 samples) over the writer's globally shuffled
sample order: each epoch holds every sample once, but is not a uniform random permutation.

Resume: ``state_dict()`` holds (epoch, step), the epoch the pipeline started at and DALI's
pipeline checkpoint, which restores P's reader and Q's iteration counter (Q's draws are a pure
function of (seed, epoch, rank, step), minority.py). ``set_epoch(e)`` continues the running
pipeline when e is the next epoch, otherwise rebuilds it for epoch e (seeded by seed, rank, e).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ltpipe.pipeline.batch import Batch, Tiles
from ltpipe.pipeline.dali_graph import DEFAULT_SIZE, GraphSpec, build_pipeline, outputs_per_stream
from ltpipe.pipeline.loader_args import (check_arguments, check_values, declared_streams,
                                          loader_threads, shard_sizes)
from ltpipe.pipeline.minority import MinorityDraws, MinoritySource, ShardBytes
from ltpipe.pipeline.mix_plan import MixPlanner
from ltpipe.pipeline.q_cache import AUTO, DEFAULT_SIDE, QCache, budget_bytes
from ltpipe.pipeline.q_decode import PlannedDecode
from ltpipe.pipeline.q_misses import MissSource, kept_rows
from ltpipe.pipeline.samplers import class_probabilities
from ltpipe.pipeline.shardset import ShardSplit, open_split

log = logging.getLogger(__name__)

STATE_VERSION = 1
Q_DECODES = ("auto", "tiles", "tiles-whole", "full")


def resolve_q_decode(q_decode: str, device: str, cpu_decode: tuple[str, ...],
                     cached: bool = False) -> str | None:
    """How a planned Q stream is decoded: "tiles", "tiles-whole" (tiles cut from whole-image
    decodes), "full" (whole images at the plan's crops), or None: no plan in the loader, Q
    decoded as before plans (DALI draws its own crop) while the mixer draws the same plan from
    the step's (epoch, step).

    "auto" takes what was measured faster: tiles where CPU operators decode Q (x1.46 the pairs/s
    at prob 0.5, bench/results/loader-plan-cpu.json), None on nvJPEG. On an H200 (CMO,
    ResNet-50) full decoding won or tied every run: ROI tiles 3,825 vs 5,167 img/s at prob 0.5
    (not profiled); "tiles-whole" level at prob 0.5 and 13-19 % slower at prob 1, where it
    decodes every Q image whole while full decoding decodes only each random-resized crop
    (bench/results/e2e-*plan*-nvidia-h200.json, e2e-tileswhole-*-nvidia-h200.json).
    With a decoded cache (``cached``) Q needs the loader's plan, and on nvJPEG "auto" takes
    "tiles-whole" for the rows the cache does not hold (the hardware decoder takes whole images;
    not measured yet: bench/gpu/loader_off_gpu.sh)."""
    if q_decode != "auto":
        return q_decode
    if device == "cpu" or "minority" in cpu_decode:
        return "tiles"
    return "tiles-whole" if cached else None


def make_loader(shards, split: str = "train", batch_size: int = 128,
                streams=None, device: str = "cpu", preset: str = "cifar",
                image_size: int | None = None, dtype=torch.float32, channels_last: bool = False,
                r: float | None = None, seed: int = 0, rank: int = 0, world: int = 1,
                epoch: int = 0, mixer=None,
                num_threads: int = 0, prefetch: int = 2, py_workers: int = 0,
                hw_decoder_load: float = 0.65, max_image_side: int = 0, concurrency: str = "full",
                cpu_decode=(), validate: bool = True, allow_empty_classes: bool = False,
                skip_corrupt: bool = False, mix_plan=None, q_decode: str = "auto",
                count_pixels: bool = False, q_cache_gb=AUTO, q_cache_side: int = DEFAULT_SIDE):
    """Build the DALI loader of one rank (falls back to the torch reference without DALI).

    Args:
        shards: a shard directory (shards/format.py). split: "train" or "val" (val: ("uniform",)
            only, read in order, every sample exactly once across ranks).
        batch_size: per rank, <= the split's size. streams: names from STREAMS (default P and
            Q; a ``mixer`` declares its own).
        device: "cuda" (nvJPEG "mixed" decode, current torch device) or "cpu" (CPU operators).
        preset / image_size: "cifar" (32) or "imagenet" (224), see dali_graph.py.
        dtype: torch.float32 | float16 | bfloat16 (bf16 is cast from fp32 on the device), or
            uint8: the pixels as decoded, cropped and flipped, not normalised (fewer bytes and
            no normalisation in DALI; ``pipeline.normalize`` turns them into model input).
        channels_last: images [B,3,H,W] with NHWC memory. r: Q's exponent (paper meaning,
            METHODS.md: The meaning of r; default 1, or the mixer's ``fg_r``).
        seed, rank, world, epoch: the draw keys and the DALI shard of this rank.
        mixer: the mixer these batches are for: the streams and Q's exponent are what it
            declares (``mixer.streams``, ``mixer.fg_r``), so the two cannot disagree; a
            ``streams`` or ``r`` given besides it must match.
        num_threads, prefetch, py_workers: DALI CPU threads, prefetch depth, Q's worker
            processes; 0 threads / workers: fit the machine (``loader_threads``).
        hw_decoder_load, max_image_side: nvJPEG hardware-decoder share and preallocation hint.
        concurrency: "full" (P and Q chains run concurrently, own CUDA streams) or "backend".
        cpu_decode: stream names whose decode and resize run on the CPU even on "cuda".
        validate: look for corrupt samples when opening the split (shardset.py).
        allow_empty_classes: give classes with n_k = 0 the probability q_k = 0 instead of raising.
        skip_corrupt: leave corrupt samples out of both streams; by default a split that has any
            is refused with a ShardFormatError (a ValueError) naming the shards and the count.
        mix_plan: a mix_plan.PlanSpec, by default the mixer's ``mix_plan`` declaration. With
            one, every step's MixPlan is drawn on the host and travels in each Batch's
            ``meta["plan"]``, and Q ("minority") takes its crop and flip from it.
        q_decode: under a plan whose mixer reads only the boxes (``PlanSpec.tiles``): "tiles"
            decodes only the pixels of Q's boxes (``Batch.tiles``; nothing on unmixed steps),
            "tiles-whole" the same tiles from whole-image decodes of the mixed rows only (the
            hardware JPEG decoder takes no ROI), "full" the whole S x S images at the plan's
            crops, "auto" tiles where CPU operators
            decode Q and no plan in the loader on nvJPEG (``resolve_q_decode``: what was
            measured faster; the mixer then draws the plan itself).
            Ignored without a plan.
        count_pixels: sum each stream's decoded source pixels in ``decoded_pixels``.
        q_cache_gb: under a plan, the budget in GB (10⁹ bytes) of Q's decoded cache
            (pipeline/q_cache.py): Q's most-drawn images kept decoded at a long side <=
            ``q_cache_side`` px on the loader's device, their rows pasted from there with no
            decode. 0: off; "auto": 15 % of the GPU's free memory, or on the CPU a quarter of
            the available memory shared by the node's ranks (``q_cache.budget_bytes``).
            ``loader.q_cache`` is the cache (None without one); its ``describe()`` says what
            it holds and the share of Q's draws it serves.
    Returns a DaliLoader: ``for step in loader`` -> {stream: Batch}; len, set_epoch,
    state_dict/load_state_dict, class_counts (int64 [C]), num_classes, and ``skipped``: the
    number of corrupt samples of the split left out (0 unless skip_corrupt).
    """
    check_values(locals())
    if q_decode not in Q_DECODES:
        raise ValueError(f"q_decode: must be one of {Q_DECODES}, got {q_decode!r}")
    if mix_plan is None and mixer is not None:
        mix_plan = getattr(mixer, "mix_plan", None)
    streams, r = declared_streams(mixer, streams, r, split)
    data = open_split(shards, split, validate=validate, skip_corrupt=skip_corrupt)
    streams = check_arguments(data, split, batch_size, streams, device, preset, dtype, r, rank,
                              world, allow_empty_classes)
    num_threads, py_workers = loader_threads(num_threads, py_workers)
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        from ltpipe.pipeline.torch_loader import make_torch_loader

        log.warning("nvidia.dali is not installed: using the torch reference loader")
        return make_torch_loader(shards, split=split, batch_size=batch_size, streams=streams,
                                 device=device, preset=preset, image_size=image_size, dtype=dtype,
                                 channels_last=channels_last, r=r, seed=seed, rank=rank,
                                 world=world, epoch=epoch, num_workers=num_threads,
                                 validate=validate, allow_empty_classes=allow_empty_classes,
                                 skip_corrupt=skip_corrupt)  # its mixers draw their own plans
    if num_threads < 1:
        raise ValueError(f"num_threads: DALI needs at least 1 CPU thread, got {num_threads}")
    cpu_decode = (cpu_decode,) if isinstance(cpu_decode, str) else tuple(cpu_decode)
    if not set(cpu_decode) <= set(streams):
        raise ValueError(f"cpu_decode: {sorted(set(cpu_decode) - set(streams))} are not among "
                         f"the streams {streams}")
    dev_id = torch.cuda.current_device() if device == "cuda" else None
    cache_budget = 0
    if mix_plan is not None and split == "train" and "minority" in streams:
        cache_budget = budget_bytes(q_cache_gb, torch.device(device, dev_id))
    mode = resolve_q_decode(q_decode, device, cpu_decode, cached=cache_budget > 0)
    size = DEFAULT_SIZE[preset] if image_size is None else image_size  # None: the preset's
    spec = GraphSpec(
        batch_size=int(batch_size), preset=preset, size=int(size),
        train=split == "train", device=device, half=dtype == torch.float16,
        raw=dtype == torch.uint8,
        channels_last=channels_last, num_threads=num_threads, prefetch=prefetch, seed=0,
        device_id=dev_id, hw_decoder_load=hw_decoder_load, py_workers=py_workers,
        # fork is fast but unsafe once CUDA is initialized in this process
        py_start_method="spawn" if torch.cuda.is_initialized() else "fork",
        max_side=int(max_image_side), concurrency=concurrency, cpu_decode=cpu_decode,
        count_pixels=bool(count_pixels), roi_decode=mode != "tiles-whole")
    planner = None
    if mix_plan is not None and spec.train and "minority" in streams and mode is not None:
        planner = MixPlanner(mix_plan, seed, rank, spec.batch_size, spec.size)
    return DaliLoader(data, spec, streams, r=r, seed=seed, rank=rank, world=world, epoch=epoch,
                      dtype=dtype, planner=planner,
                      tiles=planner is not None and mix_plan.tiles
                      and mode in ("tiles", "tiles-whole"),
                      q_cache=(cache_budget, int(q_cache_side)) if planner is not None else None)


def pipeline_seed(seed: int, rank: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0] & 0x7FFFFFFF)


class DaliLoader:
    """Iterating runs (the rest of) the current epoch; see the module docstring for semantics."""

    def __init__(self, data: ShardSplit, spec: GraphSpec, streams: tuple[str, ...], *, r: float,
                 seed: int, rank: int, world: int, epoch: int, dtype,
                 planner: MixPlanner | None = None, tiles: bool = False,
                 q_cache: tuple[int, int] | None = None):
        self.data, self.spec, self.streams = data, spec, streams
        self.planner, self.tiles = planner, tiles  # the step's mix plan; Q decoded as tiles
        self.decoded_pixels = {name: 0 for name in streams}  # spec.count_pixels: Σ h·w decoded
        self.r, self.seed, self.rank, self.world = float(r), int(seed), rank, world
        self.dtype, self.train = dtype, spec.train
        on_gpu = spec.device == "cuda"
        self.device = torch.device("cuda", spec.device_id) if on_gpu else torch.device("cpu")
        self.class_counts = data.class_counts.copy()  # int64 [C], global train counts
        self.num_classes = int(data.num_classes)
        self.skipped = data.skipped  # corrupt samples left out of every epoch (skip_corrupt)
        n = data.num_samples
        self._sizes = shard_sizes(n, world)
        self._steps = math.ceil(math.ceil(n / world) / spec.batch_size)
        self.epoch, self.step = int(epoch), 0
        self._labels = torch.from_numpy(data.labels).to(self.device)  # int64 [N_rows]
        self._pipe = None
        self._q_pipe = None  # Q's cache misses (q_misses.py), beside the main pipeline
        self._pipe_start = None  # epoch the running pipeline was built for
        self._pos = None  # (epoch, step) the running pipeline will produce next
        self._restore = None  # (state dict) to build from on the next iteration
        self.q_cache = None  # Q's decoded cache (q_cache.py), with its budget and side
        self._cache_request = q_cache
        self._q_draws = self._draws("minority") if "minority" in streams else None
        self._payloads = ShardBytes(data.rows, data.tar_paths)  # Q's random-access reads
        if q_cache is not None and q_cache[0] > 0:
            self.q_cache = self._make_cache(budget=q_cache[0], side=q_cache[1])
            if self.q_cache is not None:
                log.info("%s", self.q_cache.describe())
        # Q drawn on the host, served by the cache and its misses' pipeline, not the main one
        self.q_on_host = self._q_can_leave()

    def _draws(self, name: str) -> MinorityDraws:
        """The draws of Q-type stream ``name`` (what its DALI source, or the host, draws)."""
        r = self.r if name == "minority" else 0.0
        q = class_probabilities(self.class_counts, r, allow_empty=True)
        return MinorityDraws(self.data.labels, q, self.seed, self.rank, self.data.good_mask())

    def _q_can_leave(self) -> bool:
        """Whether Q can leave the main pipeline: it has a decoded cache, and P keeps a pipeline
        to run (q_cache.py)."""
        return self.q_cache is not None and "uniform" in self.streams

    def _make_cache(self, budget: int, side: int, images: int | None = None) -> QCache | None:
        on_cpu = self.spec.device == "cpu" or "minority" in self.spec.cpu_decode
        return QCache.build(self._q_draws, self._payloads,
                            budget=budget, side=side, device=self.device,
                            decoder="cpu" if on_cpu else "mixed",
                            threads=self.spec.num_threads, images=images)

    # ---- epoch bookkeeping -------------------------------------------------------------
    def __len__(self) -> int:
        if self.train:
            return self._steps
        return math.ceil(self._sizes[self.rank] / self.spec.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        """Pipeline steps per epoch on every rank (== len in training)."""
        return self._steps

    def _real(self, epoch: int, step: int) -> int:
        """Real (not padded) samples in step ``step`` of ``epoch`` on this rank."""
        b = self.spec.batch_size
        if step < self._steps - 1:
            return b
        shard = (self.rank + epoch - self._pipe_start) % self.world if self.train else self.rank
        return max(0, self._sizes[shard] - (self._steps - 1) * b)

    def _next(self, position: tuple[int, int] | None) -> tuple[int, int] | None:
        """Step L of epoch e is step 0 of epoch e+1."""
        if position is not None and position[1] >= self._steps:
            return position[0] + 1, 0
        return position

    def _normalize(self) -> None:
        """Move the loader and the running pipeline's position past a finished epoch (never
        while an epoch is being iterated: that loop would go on into the next epoch)."""
        self.epoch, self.step = self._next((self.epoch, self.step))
        self._pos = self._next(self._pos)

    def set_epoch(self, epoch: int) -> None:
        self._normalize()
        if epoch != self.epoch:
            self.epoch, self.step = int(epoch), 0
            self._restore = None

    # ---- pipeline lifetime -------------------------------------------------------------
    def _ensure_pipeline(self) -> None:
        self._normalize()
        if self._pipe is not None and self._pos == (self.epoch, self.step):
            return
        self._pipe = self._q_pipe = None
        state = self._restore
        if state is not None and (state["epoch"], state["step"]) == (self.epoch, self.step) \
                and state["dali"] is not None:
            start, ckpt = state["pipe_start_epoch"], state["dali"]
        elif self.step == 0:
            start, ckpt = self.epoch, None
        else:
            raise RuntimeError(f"loader: cannot resume at epoch {self.epoch} step {self.step} "
                               "without a checkpoint")
        self._pipe = self._build(start, ckpt)
        if self.q_on_host and not self.q_cache.complete:
            self._q_pipe = self._build_misses()
        self._pipe_start, self._pos, self._restore = start, (self.epoch, self.step), None

    def _build(self, start_epoch: int, checkpoint):
        from dataclasses import replace

        spec = replace(self.spec, seed=pipeline_seed(self.seed, self.rank, start_epoch))
        reader = None
        if "uniform" in self.streams:
            fill = int(min(2048, max(self.spec.batch_size, self._sizes[self.rank])))
            reader = dict(paths=[str(p) for p in self.data.tar_paths],
                          index_paths=[str(p) for p in self.data.idx_paths],
                          random_shuffle=self.train, initial_fill=fill, shard_id=self.rank,
                          num_shards=self.world, pad_last_batch=True,
                          stick_to_shard=not self.train)
        sources = {}
        for name in (s for s in self._order() if s != "uniform"):
            draws = self._q_draws if name == "minority" else self._draws(name)
            planned = None
            if name == "minority" and self.planner is not None:
                cached = self.q_cache.mask() if self.q_cache is not None else None
                planned = PlannedDecode(self.planner, tiles=self.tiles, preset=self.spec.preset,
                                        cached=cached)
            sources[name] = MinoritySource(draws, self._payloads, self.spec.batch_size, self._steps,
                                           start_epoch, planned)
        return build_pipeline(spec, reader, sources, checkpoint=checkpoint)

    def _build_misses(self):
        """Q's cache misses from the loader's position on (q_misses.py: no checkpoint)."""
        planned = PlannedDecode(self.planner, tiles=self.tiles, preset=self.spec.preset,
                                cached=self.q_cache.mask())
        source = MissSource(self._q_draws, planned, self._payloads, self.spec.batch_size,
                            self._steps, (self.epoch, self.step))
        return build_pipeline(self.spec, None, {"minority": source})

    def _order(self) -> list[str]:
        """The streams the DALI pipeline outputs, in its order (P first; not Q on the host)."""
        return (["uniform"] if "uniform" in self.streams else []) + \
            [s for s in self.streams if s != "uniform" and not (s == "minority" and self.q_on_host)]

    # ---- iteration ---------------------------------------------------------------------
    def __iter__(self):
        self._ensure_pipeline()
        while self.step < self._steps:
            outs = self._pipe.run()
            epoch, step = self.epoch, self.step
            real = self._real(epoch, step)
            self.step += 1
            self._pos = (self.epoch, self.step)
            if real == 0 and not self.train:
                continue  # eval: an all-padding step on this rank returns nothing
            yield self._to_step(outs, max(real, 1), epoch, step)
        self._normalize()
        self._pos = (self.epoch, self.step)

    def _to_step(self, outs, real: int, epoch: int, step: int) -> dict[str, Batch]:
        meta = {"epoch": epoch, "step": step}
        plan = None
        if self.planner is not None:  # the same pure function of (seed, rank, epoch, step) as
            plan = meta["plan"] = self.planner.draw(epoch, step)  # Q's workers drew
        result = {}
        per = outputs_per_stream(self.spec)
        for i, name in enumerate(self._order()):
            images, ids = self._stream(name, outs[per * i:per * (i + 1)], self._pipe)
            result[name] = self._batch(name, images[:real], ids[:real], real, plan, meta)
        if self.q_on_host:  # the ids Q's workers would draw; only the misses decoded
            ids = self._q_draws.draw(epoch, step, self.spec.batch_size)[:real]
            rows = np.zeros(0, dtype=np.int64)
            images = torch.empty((0, 3, 1, 1), dtype=self.dtype, device=self.device)
            if self._q_pipe is not None:
                images, rows = self._stream("minority", self._q_pipe.run(), self._q_pipe)
                kept = kept_rows(rows, real)
                images, rows = images[:kept], rows[:kept]
            result["minority"] = self._batch("minority", images, ids, real, plan, meta, rows)
        return {name: result[name] for name in self.streams}

    def _stream(self, name: str, outs, pipe) -> tuple[torch.Tensor, np.ndarray]:
        """(images, ids) of one stream's outputs of ``pipe`` (ids: rows, from Q's misses);
        counts its decoded pixels under ``count_pixels``."""
        ids = np.array(outs[1].as_tensor(), dtype=np.int64).reshape(-1)
        if self.spec.count_pixels:
            tl = outs[2]  # shapes: on the device after a GPU decode
            shapes = np.array((tl.as_cpu() if hasattr(tl, "as_cpu") else tl).as_tensor())
            shapes = shapes.reshape(-1, 3)
            self.decoded_pixels[name] += int((shapes[:, 0] * shapes[:, 1]).sum())
        return self._images(outs[0], pipe), ids

    def _batch(self, name: str, images: torch.Tensor, ids: np.ndarray, real: int, plan,
               meta: dict, rows: np.ndarray | None = None) -> Batch:
        """One stream's Batch; Q's cached rows and tiles under a plan. ``rows``: the batch rows
        that ``images`` hold (Q's cache misses), else every row."""
        index = torch.from_numpy(ids).to(self.device, non_blocking=True)
        tiles = cached = None
        boxes = plan.tensors(self.device, real)[0] if self.tiles else None
        if name == "minority" and self.q_cache is not None:
            cached, boxes, served = self.q_cache.rows(
                plan, ids, tiles=self.tiles, preset=self.spec.preset, size=self.spec.size,
                device=self.device, decoded=rows)
            meta["q_cache"] = (served, real)  # Q rows the cache served, Q rows drawn
            if not self.tiles:
                images = cached.paste_(self._whole(images, real, rows))
        if name == "minority" and self.tiles:
            tiles = Tiles(images, boxes, cached, rows)
            images = images.new_zeros((real, 3, 0, 0))
        return Batch(images, self._labels[index], index, meta, tiles)

    def _whole(self, images: torch.Tensor, real: int, rows: np.ndarray | None) -> torch.Tensor:
        """Q's S x S images for the cached rows to be pasted into: DALI's own output when it
        decoded any row in full (a copy on the GPU, where it is DALI's buffer), else zeros (every
        row came from the cache: DALI decoded 1 x 1 placeholders), with Q's decoded misses at
        their ``rows``."""
        s = self.spec.size
        if rows is not None:
            whole = images.new_zeros((real, 3, s, s))
            if self.spec.channels_last:
                whole = whole.contiguous(memory_format=torch.channels_last)
            if len(rows):
                whole.index_copy_(0, torch.from_numpy(rows).to(self.device), images)
            return whole
        if images.shape[-2:] != (s, s):
            images = images.new_zeros((real, 3, s, s))
            if self.spec.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
        elif images.is_cuda:
            images = images.clone(memory_format=torch.preserve_format)
        return images

    def _images(self, tl, pipe) -> torch.Tensor:
        """DALI batch -> torch [B,3,H,W] (channels_last strides for HWC output).

        GPU: zero-copy through DLPack under DALI's dynamic executor (outputs are reference
        counted there, as in DALI's own torch iterator), else a copy on torch's current stream.
        CPU: a copy (the tests' path).
        """
        dense = tl.as_tensor()
        if self.device.type == "cuda" and pipe.exec_dynamic:
            with self.device:
                out = torch.from_dlpack(dense)
        elif self.device.type == "cuda":
            from nvidia.dali.plugin.pytorch import feed_ndarray

            dtype = torch.uint8 if self.spec.raw else \
                torch.float16 if self.spec.half else torch.float32
            out = torch.empty(dense.shape(), dtype=dtype, device=self.device)
            feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(self.device))
        else:
            out = torch.from_numpy(np.array(dense))
        if self.spec.channels_last:
            out = out.permute(0, 3, 1, 2)  # [B,H,W,3] memory seen as [B,3,H,W]
        return out if out.dtype == self.dtype else out.to(self.dtype)

    # ---- state -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Where the next step comes from. Read-only: a checkpoint taken on an epoch's last
        step, while ``for steps in loader`` is suspended there, must not restart that loop."""
        if self._restore is not None:
            return dict(self._restore)
        epoch, step = self._next((self.epoch, self.step))
        dali = None
        if self._pipe is not None and self._next(self._pos) == (epoch, step):
            dali = self._pipe.checkpoint()
        elif step != 0:
            raise RuntimeError("loader: pipeline position lost; cannot checkpoint")
        return {"version": STATE_VERSION, "epoch": epoch, "step": step,
                "pipe_start_epoch": self._pipe_start if dali is not None else epoch,
                "dali": dali, "streams": list(self.streams), "batch_size": self.spec.batch_size,
                "seed": self.seed, "rank": self.rank, "world": self.world, "r": self.r,
                "q_cache": self.q_cache.state() if self.q_cache is not None else None,
                "q_on_host": self.q_on_host}

    def load_state_dict(self, state: dict) -> None:
        for key in ("streams", "batch_size", "seed", "rank", "world", "r"):
            mine = list(self.streams) if key == "streams" else getattr(self, key, None)
            if key == "batch_size":
                mine = self.spec.batch_size
            if state.get(key) != mine:
                raise ValueError(
                    f"loader state: {key} is {state.get(key)!r}, this loader has {mine!r}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self._restore = dict(state)
        self._pipe, self._pos = None, None
        if "q_cache" in state:  # older states: keep this loader's cache
            self._keep_cache(state["q_cache"])
        # the checkpoint's pipeline holds Q unless it was drawn on the host (states from before
        # Q could leave the pipeline hold it too): DALI restores into the same graph
        self.q_on_host = bool(state.get("q_on_host", False)) and self._q_can_leave()

    def _keep_cache(self, saved: dict | None) -> None:
        """Hold the saved run's cache selection (the same rows come from the cache, so the
        resumed run is exact even when its budget, e.g. "auto", differs)."""
        mine = self.q_cache.state() if self.q_cache is not None else None
        if saved == mine or self.planner is None:
            return
        self.q_cache = None
        if saved is not None and saved["images"] > 0:
            self.q_cache = self._make_cache(budget=0, side=int(saved["side"]),
                                            images=int(saved["images"]))
        log.info("loader: the checkpoint's Q cache (%s) replaces this run's (%s)", saved, mine)
