"""End-to-end training throughput: is the GPU ever waiting for data?

One run measures, per mixer (``--mixers cmo,smc,otmix``; OTmix in bank mode), the SAME training
step (``ltpipe.train.loop.train_step`` on the model, mixer, criterion and optimizer that
train/build.py builds, torch.compile'd like the trainer does) fed three ways:
  (a) ceiling:     a few batches copied once to the device and cycled: no loader at all (the
                   loader that produced them is closed first);
  (b) ltpipe:      ``make_loader`` (DALI, nvJPEG on cuda) end to end;
  (c) torchvision: ``make_torch_loader`` (PIL + torchvision transforms, ``--ref-workers``
                   DataLoader processes split over the streams) end to end.
images/s counts the P (background) images a step consumes; the result holds the ratios b/a and
b/c. Device idle per step: on CUDA the gap between two CUDA events, one recorded after step i's
work and one right after ``next(it)`` returns step i+1's batch, i.e. time the GPU had no step work
queued (loader output copies on the compute stream count as idle); on the CPU the wall time
blocked in ``next(it)``. Timing: wall clock with a synchronize at both ends, after ``--warmup``
steps (which absorb torch.compile), ``--repeats`` runs of ``--steps`` steps: mean ± std.
Only full batches are fed (a ragged epoch end would recompile the model; its wait still counts).
On CUDA the host time per step is split into the wait in ``next(it)`` and the time to issue the
step (host syncs show there). ``--variants`` sweeps loader settings (stream priority, hardware-
decoder share, threads, prefetch, a smaller copy of the data, CPU decode) on the first mixer; the
fastest feeds "ltpipe" of every mixer; each variant records what Q's decoded cache held
(``q_cache``: images, GB, place, the share of Q's draws it is expected to serve), as ``qcache=``
sets its budget. The step runs on a high-priority CUDA stream unless
``prio=default`` (train/cuda_stream.py, as the trainer does). ``--profile-steps N`` profiles N
ceiling steps and N ltpipe steps of the fastest variant (torch.profiler: top ops on stderr,
``e2e-<mixer>[-ceiling]-<device>-trace.json.gz`` in ``--out``; on CUDA the per-step split of GPU
time into step and loader, bench/trace_summary.py, goes into the JSON as ``profile``).

Mixing runs on every step (prob 1, mix_schedule "always"): the pipeline's worst case. OTmix bank:
F̂ is set to the uniform off-diagonal matrix, use_ot is forced and the bank holds random unit
features of the model's width, so every step computes the [B,B] cost and Sinkhorn.

Targets (the project's, one H100): cmo b/a >= 0.97 and b/c >= 6; smc, otmix b/a >= 0.95.

GPU (generates the synthetic iNat-like set, ~36k JPEGs of 500-800 px, on that machine):
    python -m ltpipe.bench.e2e --device cuda --generate /tmp/ltpipe-inat --gen-workers 16 \
        --mixers cmo,smc,otmix
CPU (resnet8, fp32, no compile, batch 32 at the images' own size, DALI threads and torchvision
workers = the cores; ``--tiny``: batch 8, 4 steps, for tests; labelled cpu):
    python -m ltpipe.bench.e2e --device cpu --shards out/synthetic --mixers cmo,smc,otmix
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import statistics
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from ltpipe.bench import trace_summary
from ltpipe.bench.harness import (ScriptParser, add_shard_source_args, benchmark_shards,
                                  positive_int, write_result)
from ltpipe.pipeline.batch import Batch
from ltpipe.train import build
from ltpipe.train.config import resolve
from ltpipe.train.cuda_stream import PRIORITIES, compute_stream
from ltpipe.train.dist import DistInfo
from ltpipe.train.loop import make_autocast, train_step
from ltpipe.train.mixers.base import StepContext
from ltpipe.train.mixers.registry import MIXERS, mixer_params
from ltpipe.train.step_keys import step_generator
from ltpipe.train.step_timer import StepTimer, tail

GPU = dict(size="inat", model="resnet50", batch_size=256, image_size=224, preset="imagenet",
           precision="bf16", compile=True, steps=15, repeats=3, warmup=10, ref_steps=10,
           ref_workers=16, threads=min(16, os.cpu_count() or 1), torch_threads=0)
TINY = dict(size="default", model="resnet8", batch_size=8, image_size=32, preset="cifar",
            precision="fp32", compile=False, steps=4, repeats=2, warmup=2, ref_steps=4,
            ref_workers=2, threads=2, torch_threads=1)
# The CPU's defaults fit a small machine (`ltpipe bench e2e SHARDS` on the README's shards takes
# a minute or two on 2 cores); preset and image size are the images' own (filled in main).
CPU = dict(TINY, batch_size=32, steps=8, warmup=3, ref_steps=8, ref_workers=os.cpu_count() or 1,
           threads=os.cpu_count() or 1, preset=None, image_size=None)
MIXER_PARAMS = {"otmix": {"mode": "bank"}}  # the variant the targets name
TARGET_VS_CEILING = {"cmo": 0.97, "smc": 0.95, "otmix": 0.95}
TARGET_VS_TORCHVISION = {"cmo": 6.0}
EPOCHS, EPOCH = 10, 5  # the step context's epoch (mixing is forced on in every epoch anyway)
RESIDENT_STEPS = 4  # distinct batches cycled by the ceiling


def parse_args(argv=None) -> argparse.Namespace:
    p = ScriptParser(__file__, __doc__)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    add_shard_source_args(p, None, "synthetic profile for --generate (inat; tiny: default)")
    p.add_argument("--tiny", action="store_true", help="CPU-sized defaults (see module doc)")
    p.add_argument("--mixers", default="cmo", help="comma-separated mixer names")
    p.add_argument("--model")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--image-size", type=positive_int)
    p.add_argument("--preset", choices=("imagenet", "cifar"))
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile-mode", choices=("default", "reduce-overhead"), default="default",
                   help="torch.compile mode of the model, for the ceiling and ltpipe alike "
                   "(reduce-overhead: CUDA graphs)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--steps", type=positive_int, help="timed steps per repeat")
    p.add_argument("--repeats", type=positive_int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--ref-steps", type=positive_int, help="timed steps per repeat for torchvision")
    p.add_argument("--ref-workers", type=positive_int,
                   help="torchvision DataLoader processes in all")
    p.add_argument("--threads", type=positive_int,
                   help="DALI CPU threads (Q workers: threads // 4)")
    p.add_argument("--torch-threads", type=int,
                   help="torch CPU threads (0: torch's default; tiny: 1, as OpenMP spin-waits on "
                   "a shared CPU)")
    p.add_argument("--prefetch", type=int, default=3)
    p.add_argument("--hw-decoder-load", type=float, default=0.65)
    p.add_argument("--compute-stream", choices=PRIORITIES, default="high",
                   help="CUDA priority of the step's stream (train/cuda_stream.py)")
    p.add_argument("--variants", default="",
                   help="loader settings to sweep on the FIRST mixer, ';'-separated, each "
                   "'key=value,...' over hw, threads, workers, prefetch, prio, shards (another "
                   "copy of the data), cpudec (streams decoded on the CPU, e.g. minority or "
                   "uniform+minority), qdec (auto: the loader's default; tiles: Q decodes only the "
                   "boxes of the mixer's plan; tiles-whole: the same tiles cut from whole-image "
                   "decodes of the mixed rows; full: whole Q images, no plan in the loader), u8 "
                   "(1: uint8 out of DALI, normalised on the device), qcache (Q's decoded cache "
                   "per rank: auto, or GB, 0 = off); "
                   "unset keys keep the options above; the fastest is used "
                   "for the other mixers and the reference, e.g. "
                   "'prio=default;prio=high;prio=high,hw=0.8;prio=high,shards=/tmp/inat-400'")
    p.add_argument("--max-image-side", type=int, default=800, help="nvJPEG preallocation hint")
    p.add_argument("--mix-prob", type=float, default=1.0, help="mixers' prob param, if any")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="after the ltpipe run, profile N more steps (top ops + Chrome trace)")
    p.add_argument("--skip-reference", action="store_true", help="no torchvision run")
    p.add_argument("--reference-mixers", default="",
                   help="comma-separated mixers that get the torchvision run (default: all)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = p.parse_args(argv)
    profile = TINY if args.tiny else CPU if args.device == "cpu" else GPU
    for key, value in profile.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.mixer_names = [m.strip() for m in args.mixers.split(",") if m.strip()]
    try:
        args.variant_list = parse_variants(args.variants, args)
    except ValueError as exc:
        p.error(f"--variants: {exc}")
    unknown = [m for m in args.mixer_names if m not in MIXERS]
    if unknown or not args.mixer_names:
        p.error(f"--mixers: unknown {unknown or args.mixers!r} (choose from {', '.join(MIXERS)})")
    args.reference_names = [m.strip() for m in args.reference_mixers.split(",") if m.strip()] \
        or args.mixer_names
    if not set(args.reference_names) <= set(args.mixer_names):
        p.error(f"--reference-mixers: {sorted(set(args.reference_names) - set(args.mixer_names))}"
                " are not among --mixers")
    return args


VARIANT_KEYS = {"hw": float, "threads": int, "workers": int, "prefetch": int, "prio": str,
                "shards": str, "cpudec": str, "qdec": str, "u8": int, "qcache": str}
# u8=1: uint8 pixels out of DALI, normalised on the device before the step (pipeline/normalize.py,
# the trainer's [loader] images = "uint8")
# qdec: "auto" (the product default), "tiles" and "tiles-whole" build the loader from the mixer
# (make_loader(mixer=..., q_decode=...)): a mixer that declares a mix plan (CMO, OTmix bank) gets
# Q as box tiles where q_decode says so; "full" decodes whole Q images with no plan in the loader,
# as every loader did before plans (the mixer then draws the same plan itself)
QDECS = ("auto", "tiles", "tiles-whole", "full")
# qcache: Q's decoded cache per rank, "auto" (the product default) or GB (0: off)


def q_cache_gb(text: str):
    """A variant's qcache= value as make_loader's q_cache_gb ("auto", or GB >= 0)."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"qcache={text}: expected auto or GB >= 0")
    return value


def parse_variants(text: str, args) -> list[dict]:
    """'prio=default;prio=high,hw=0.8' -> full settings dicts (the options fill unset keys)."""
    base = {"hw": args.hw_decoder_load, "threads": args.threads, "workers": None,
            "prefetch": args.prefetch, "prio": args.compute_stream, "shards": "",
            "cpudec": "", "qdec": "auto", "u8": 0, "qcache": "auto"}
    out = []
    for spec in [v for v in text.split(";") if v.strip()] or [""]:
        v = dict(base)
        for item in [i for i in spec.split(",") if i.strip()]:
            key, sep, value = (x.strip() for x in item.partition("="))
            if not sep or key not in VARIANT_KEYS:
                raise ValueError(f"{item!r}: expected key=value with key in {list(VARIANT_KEYS)}")
            v[key] = VARIANT_KEYS[key](value)
        if v["prio"] not in PRIORITIES or not 0 <= v["hw"] <= 1 or v["qdec"] not in QDECS:
            raise ValueError(f"{spec!r}: prio must be one of {PRIORITIES}, hw in [0, 1], "
                             f"qdec one of {QDECS}")
        q_cache_gb(v["qcache"])
        if v["shards"] and not (Path(v["shards"]) / "manifest.json").is_file():
            raise ValueError(f"{v['shards']}: not a shard directory (no manifest.json)")
        if v["workers"] is None:  # Q's reader processes: a quarter of DALI's threads
            v["workers"] = max(1, v["threads"] // 4)
        out.append(v)
    return out


def variant_label(v: dict) -> str:
    """All settings, plus ``shards=`` when the variant reads another copy of the data (e.g. one
    written with ``ltpipe shard --max-size``: the same images, fewer pixels to decode) and
    ``cpudec=`` when streams are decoded on the CPU (a mixer without such a stream ignores it),
    ``qdec=`` when it is not the loader's default."""
    quiet = {"shards": "", "cpudec": "", "qdec": "auto", "u8": 0, "qcache": "auto"}  # left out
    return ",".join(f"{k}={v[k]}" for k in VARIANT_KEYS if k not in quiet or v[k] != quiet[k])


def check_same_data(manifest, other: str) -> None:
    """A variant's ``shards=`` must hold the same samples (e.g. a --max-size copy)."""
    from ltpipe.shards.format import load_manifest

    if not other:
        return
    copy = load_manifest(other)
    if copy.classes != manifest.classes or \
            copy.split("train").class_counts != manifest.split("train").class_counts:
        raise ValueError(f"--variants shards={other}: not a copy of {manifest.root} (its classes "
                         "or per-class counts differ)")


def shard_dir(args) -> Path:
    return benchmark_shards(args.shards, args.generate, args.size, args.gen_workers, log)


def log(msg: str) -> None:
    print(f"[e2e] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the step under test

class StepUnderTest:
    """The trainer's step for one mixer: ``run(streams) -> P images consumed``."""

    def __init__(self, name: str, shards: Path, args, counts: torch.Tensor):
        self.device = torch.device(args.device)
        params = {k: v for k, v in (("prob", args.mix_prob), ("mix_schedule", "always"))
                  if k in mixer_params(name)}
        train = dict(mixer=name, model=args.model, batch_size=args.batch_size,
                     image_size=args.image_size, preset=args.preset, precision=args.precision,
                     channels_last=args.channels_last, compile=args.compile,
                     device=args.device, epochs=EPOCHS, warmup=0, schedule="constant")
        cfg = resolve({}, train, {**params, **MIXER_PARAMS.get(name, {})})
        self.t = t = cfg["train"]
        info = DistInfo(0, 1, 0, self.device)
        self.env = build.make_env(t, counts.to(self.device), shards, info)
        self.mixer = build.make_mixer(cfg, self.env)
        self.model, self.criterion = build.make_model_and_criterion(cfg, self.env, self.mixer)
        self.optimizer, self.scheduler = build.make_optimizer(t, self.model, self.criterion,
                                                              steps_per_epoch=10**6)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.device.type == "cuda" and t["precision"] == "fp16")
        self.autocast = make_autocast(self.device, t["precision"])
        self.train_model = torch.compile(self.model, mode=args.compile_mode) if t["compile"] \
            else self.model
        self.step = 0
        steady_state(self.mixer, self.model)
        self.model.train()

    def run(self, streams: dict[str, Batch]) -> int:
        gen = step_generator(self.t["seed"], EPOCH, self.step, 0, self.device)
        ctx = StepContext(EPOCH, EPOCHS, self.step, self.env.class_counts, gen, model=self.model)
        train_step(model=self.train_model, mixer=self.mixer, criterion=self.criterion,
                   optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                   streams=streams, ctx=ctx, autocast=self.autocast)
        self.step += 1
        return len(streams[self.mixer.streams[0]])


def steady_state(mixer, model) -> None:
    """OTmix: take the OT path on every step, as in a late epoch with a trained model."""
    if not hasattr(mixer, "force_ot"):
        return
    c, n = mixer.env.num_classes, int(mixer.env.class_counts.sum())
    dev = mixer.fhat.device
    mixer.fhat.copy_((1 - torch.eye(c, device=dev)) / max(c - 1, 1))  # F̂ [C,C], zero diagonal
    mixer.has_fhat.fill_(True)
    mixer.force_ot = True
    if getattr(mixer, "mode", None) == "bank":
        feats = torch.nn.functional.normalize(torch.randn(n, model.feature_dim, device=dev), dim=1)
        mixer.set_bank(feats)


# ---------------------------------------------------------------- feeding and timing

def cache_summary(loader) -> dict | None:
    """What Q's decoded cache of a variant's loader holds, and the share of Q's draws it is
    expected to serve (None without a cache)."""
    cache = getattr(getattr(loader, "loader", loader), "q_cache", None)  # NormalizedLoader wraps
    if cache is None:
        return None
    return {"images": len(cache.ids), "gb": cache.nbytes / 1e9, "place": cache.place,
            "expected_coverage": cache.expected, "complete": cache.complete}


def full_steps(loader, batch_size: int):
    """Endless {stream: Batch} steps of exactly ``batch_size`` P images (epochs chained)."""
    while True:
        got = False
        for streams in loader:
            if all(len(b) == batch_size for b in streams.values()):
                got = True
                yield streams
        if not got:
            raise ValueError(f"loader: no step of {batch_size} samples in a whole epoch")


def resident_copy(streams: dict[str, Batch]) -> dict[str, Batch]:
    """A private device copy (same dtype, strides) that no loader will ever overwrite; Q's
    tiles too, where the loader decoded Q as tiles."""
    def tiles(t):
        return None if t is None else replace(t, pixels=t.pixels.clone(), boxes=t.boxes.clone())

    return {k: Batch(b.images.clone(), b.labels.clone(), b.index.clone(), dict(b.meta),
                     tiles(b.tiles)) for k, b in streams.items()}


def resident_batches(loader, batch_size: int) -> list[dict[str, Batch]]:
    """RESIDENT_STEPS private copies; the loader is closed before the ceiling runs, so no
    decode thread or worker competes with it."""
    source = full_steps(loader, batch_size)
    out = [resident_copy(next(source)) for _ in range(RESIDENT_STEPS)]
    source.close()
    del source, loader
    gc.collect()
    return out


def summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values),
            "runs": [round(v, 4) for v in values]}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: StepUnderTest, source, steps: int, repeats: int, warmup: int) -> dict:
    """images/s per repeat; per step (ms): device idle, host wait in next(), host time to issue
    the step (train/step_timer.py; CUDA: when wait + issue ~ the step time while the device
    idles, the host is the bottleneck: Python overhead or host syncs). See the module doc."""
    for _ in range(warmup):
        step.run(next(source))
    timer = StepTimer(step.device)
    feed = timer.iterate(source)
    rates, per_step = [], {"idle": [], "wait": [], "issue": []}
    for _ in range(repeats):
        sync(step.device)
        t0, n = time.perf_counter(), 0
        for _ in range(steps):
            streams = next(feed)
            with timer.step():
                n += step.run(streams)
        sync(step.device)
        rates.append(n / (time.perf_counter() - t0))
        for key, values in timer.collect().items():
            per_step[key] += values
    out = {"images_per_s": summary(rates),
           "device_idle_ms_per_step": summary(per_step["idle"] or [0.0]),
           # does the loader ever make the step wait? (its tail, not only its mean)
           "host_wait_ms_tail": tail(per_step["wait"])}
    if step.device.type == "cuda":
        out["host_wait_ms_per_step"] = summary(per_step["wait"])
        out["host_issue_ms_per_step"] = summary(per_step["issue"])
    return out


def profile(step: StepUnderTest, source, steps: int, path: Path) -> dict:
    """torch.profiler over ``steps`` steps: top ops to stderr, a Chrome trace to ``path``;
    returns the per-step GPU time summary (bench/trace_summary.py)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if step.device.type == "cuda" else [])
    with torch_profile(activities=acts) as prof:
        for _ in range(steps):
            step.run(next(source))
        sync(step.device)
    key = "self_cuda_time_total" if step.device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=15), file=sys.stderr)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15), file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(path))
    log(f"profile trace: {path}")
    if step.device.type != "cuda":
        return {}
    summary_ = trace_summary.summarize(trace_summary.load_kernels(path), steps)
    log(trace_summary.format_summary(path.name, summary_))
    return summary_


def loader_kwargs(args, counts_device: torch.device) -> dict:
    return dict(batch_size=args.batch_size, device=args.device, preset=args.preset,
                image_size=args.image_size, channels_last=args.channels_last, seed=0,
                dtype=build.loader_dtype(counts_device, args.precision))


# ---------------------------------------------------------------- the three ways

def measure_mixer(name: str, shards: Path, args, counts: torch.Tensor,
                  variants: list[dict]) -> tuple[dict, dict]:
    """(results entry, baselines entry) of one mixer: ceiling, ltpipe under each loader variant
    (the fastest is "ltpipe"), torchvision with the fastest variant's stream."""
    from ltpipe.pipeline.loader import make_loader

    step = StepUnderTest(name, shards, args, counts)
    common = loader_kwargs(args, step.device)
    streams = tuple(step.mixer.streams)
    r = {"r": step.mixer.fg_r} if hasattr(step.mixer, "fg_r") else {}

    def dali(v: dict) -> dict:
        # tiles: the loader from the mixer's declaration (streams, r and its mix plan)
        source = {"streams": streams, **r} if v["qdec"] == "full" \
            else {"mixer": step.mixer, "q_decode": v["qdec"]}
        return dict(num_threads=v["threads"], py_workers=v["workers"],
                    prefetch=v["prefetch"], hw_decoder_load=v["hw"],
                    cpu_decode=tuple(x for x in v["cpudec"].split("+") if x in streams),
                    max_image_side=args.max_image_side, q_cache_gb=q_cache_gb(v["qcache"]),
                    **source, **common)

    def loader(v: dict):
        data = Path(v["shards"]) if v["shards"] else shards
        if not v["u8"]:
            return make_loader(data, **dali(v))
        from ltpipe.pipeline.normalize import NormalizedLoader

        return NormalizedLoader(make_loader(data, **{**dali(v), "dtype": torch.uint8}),
                                common["dtype"], compile=args.compile)

    resident = resident_batches(loader(variants[0]), args.batch_size)
    log(f"{name}: ceiling (compiles during warm-up)" if args.compile else f"{name}: ceiling")
    ceiling = timed(step, itertools.cycle(resident), args.steps, args.repeats, args.warmup)
    out_dir = args.out or Path(__file__).resolve().parent / "results"
    profiles = {}
    if args.profile_steps > 0:
        profiles["ceiling"] = profile(step, itertools.cycle(resident), args.profile_steps,
                                      out_dir / f"e2e-{name}-ceiling-{args.device}-trace.json.gz")
    del resident
    log(f"{name}: ceiling {ceiling['images_per_s']['mean']:,.0f} img/s")
    swept, failed = {}, {}
    for v in variants:
        label = variant_label(v)
        source = None
        try:
            built = loader(v)
            source = full_steps(built, args.batch_size)
            with compute_stream(step.device, v["prio"]):
                swept[label] = timed(step, source, args.steps, args.repeats, args.warmup)
            if (held := cache_summary(built)) is not None:
                swept[label]["q_cache"] = held
        except Exception as exc:  # one GPU session: a setting that breaks must not end the sweep
            traceback.print_exc()
            failed[label] = f"{type(exc).__name__}: {exc}"
            log(f"{name}: ltpipe [{label}] failed: {failed[label]}")
            continue
        finally:
            if source is not None:
                close(source)
        log(f"{name}: ltpipe [{label}] {swept[label]['images_per_s']['mean']:,.0f} img/s")
    if not swept:
        raise RuntimeError(f"every loader variant failed, e.g. {next(iter(failed.values()))}")
    best = max((v for v in variants if variant_label(v) in swept),
               key=lambda v: swept[variant_label(v)]["images_per_s"]["mean"])
    best_label = variant_label(best)
    if args.profile_steps > 0:
        source = full_steps(loader(best), args.batch_size)
        with compute_stream(step.device, best["prio"]):
            for _ in range(max(2, args.warmup // 2)):
                step.run(next(source))
            profiles["ltpipe"] = profile(step, source, args.profile_steps,
                                         out_dir / f"e2e-{name}-{args.device}-trace.json.gz")
        close(source)
    baselines, ref = {}, None
    if not args.skip_reference and name in args.reference_names:
        ref_shards = Path(best["shards"]) if best["shards"] else shards  # the same images
        ref = reference(step, ref_shards, args, streams, r, common, best["prio"])
        baselines[f"torchvision_w{args.ref_workers}"] = ref
        log(f"{name}: torchvision {ref['images_per_s']['mean']:,.0f} img/s")
    result = compare(name, ceiling, swept[best_label], ref)
    result["ltpipe_variant"] = best_label
    if len(swept) > 1:
        result["variants"] = swept
    if failed:
        result["failed_variants"] = failed
    if profiles:
        result["profile"] = profiles
    return result, baselines


def reference(step: StepUnderTest, shards: Path, args, streams, r: dict, common: dict,
              priority: str) -> dict:
    """The torchvision loaders (``--ref-workers`` processes split over the streams)."""
    from ltpipe.pipeline.torch_loader import make_torch_loader

    per_stream = max(1, args.ref_workers // len(streams))
    tv = make_torch_loader(shards, streams=streams, num_workers=per_stream,
                           prefetch=args.prefetch, **r, **common)
    source = full_steps(tv, args.batch_size)
    # warm-up also consumes the batches the workers queued while starting (workers × prefetch
    # per stream): timing only that backlog overstates the reference loader.
    backlog = per_stream * args.prefetch
    with compute_stream(step.device, priority):
        ref = timed(step, source, args.ref_steps, args.repeats, max(2, args.warmup // 2) + backlog)
    close(source)
    return ref


def close(source) -> None:
    """End a loader generator (its frame drops the loader) and collect the pipeline now (DALI
    threads, workers, GPU buffers) rather than when the next loader is already running."""
    source.close()
    gc.collect()


def compare(name: str, ceiling: dict, ours: dict, ref: dict | None) -> dict:
    rate = ours["images_per_s"]["mean"]
    out = {"ceiling": ceiling, "ltpipe": ours,
           "ltpipe_vs_ceiling": rate / ceiling["images_per_s"]["mean"]}
    checks = [out["ltpipe_vs_ceiling"] >= TARGET_VS_CEILING.get(name, 0.95)]
    out["target_vs_ceiling"] = TARGET_VS_CEILING.get(name, 0.95)
    if ref is not None:
        out["ltpipe_vs_torchvision"] = rate / ref["images_per_s"]["mean"]
        if name in TARGET_VS_TORCHVISION:
            out["target_vs_torchvision"] = TARGET_VS_TORCHVISION[name]
            checks.append(out["ltpipe_vs_torchvision"] >= TARGET_VS_TORCHVISION[name])
    out["meets_targets"] = all(checks)
    return out


def print_table(results: dict, baselines: dict) -> None:
    print(f"{'mixer':8} {'ceiling':>10} {'ltpipe':>10} {'torchvision':>12} {'b/a':>6} {'b/c':>6} "
          f"{'idle ms':>8}")
    for name, res in results.items():
        if "error" in res:
            print(f"{name:8} {res['error'][:100]}")
            continue
        ref = next(iter(baselines.get(name, {}).values()), None)
        tv = f"{ref['images_per_s']['mean']:12,.0f}" if ref else f"{'-':>12}"
        bc = f"{res['ltpipe_vs_torchvision']:6.2f}" if "ltpipe_vs_torchvision" in res else \
            f"{'-':>6}"
        print(f"{name:8} {res['ceiling']['images_per_s']['mean']:10,.0f} "
              f"{res['ltpipe']['images_per_s']['mean']:10,.0f} {tv} "
              f"{res['ltpipe_vs_ceiling']:6.3f} {bc} "
              f"{res['ltpipe']['device_idle_ms_per_step']['mean']:8.2f}")
    print("images/s; b/a = ltpipe / ceiling, b/c = ltpipe / torchvision; idle ms = ltpipe's "
          "device idle per step")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("ltpipe.bench.e2e: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    from ltpipe.shards.format import ShardFormatError, load_manifest

    try:
        shards = shard_dir(args)
        manifest = load_manifest(shards)
        for v in args.variant_list:
            check_same_data(manifest, v["shards"])
    except ValueError as exc:  # ShardFormatError / ShardInputError: one line naming the file
        print(f"ltpipe.bench.e2e: {exc}", file=sys.stderr)
        return 2
    if args.preset is None or args.image_size is None:
        from ltpipe.pipeline.loader_args import natural_preset

        args.preset, size = natural_preset(manifest, preset=args.preset)
        args.image_size = args.image_size or size
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    counts = torch.tensor(manifest.split("train").class_counts, dtype=torch.int64)
    if args.device == "cuda":
        torch.cuda.init()  # CUDA first: DALI's Python workers are then spawned, never forked
        torch.backends.cudnn.benchmark = True
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    params.update(train_samples=manifest.split("train").num_samples,
                  num_classes=manifest.num_classes, mixer_params=MIXER_PARAMS,
                  torch=torch.__version__)
    results, baselines, path = {}, {}, None
    variants = args.variant_list
    for name in args.mixer_names:
        try:
            results[name], baselines[name] = measure_mixer(name, shards, args, counts, variants)
            # the first mixer's sweep picks the loader settings of the others
            label = results[name]["ltpipe_variant"]
            variants = [v for v in variants if variant_label(v) == label]
            params["chosen_variant"] = label
        except ShardFormatError:  # the data, not this mixer: every mixer would fail alike
            raise  # one line (bench/cli.py), not a traceback per mixer
        except Exception as exc:  # one GPU session: keep the other mixers' numbers
            traceback.print_exc()
            results[name], baselines[name] = {"error": f"{type(exc).__name__}: {exc}"}, {}
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        # written after every mixer, so a run cut short still leaves what it measured
        path = write_result("e2e", params, results, baselines, out_dir=args.out,
                            device="cpu" if args.device == "cpu" else None)
    print_table(results, baselines)
    print(path)
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
