"""Loader-only throughput: the DALI P+Q pipeline vs the torch reference loader.

Pairs/s for two streams (uniform P + minority Q: one pair = one P image + one Q image), images/s
for one stream (P), ImageNet preset (RandomResizedCrop + flip, fp16, channels_last by default),
at 8 and 16 workers: DALI CPU threads for DALI (Q's Python workers = workers // 4), DataLoader
worker processes for the reference (split evenly between its two DataLoaders for pairs).
Timing: wall clock over ``--steps`` steps after ``--warmup`` steps, with a CUDA synchronize at
both ends; each step's tensors are on the device when counted. Result: write_result("loader").

Stored size (``--max-sizes 384,256``): the same images also stored with their long side <= PX
(``ltpipe shard --max-size``, copies at DIR-PX: generated with ``--generate``, expected beside
``--shards``), DALI only; results ``..._px384``, and ``params.stored`` the mean stored width, height
and JPEG KB of each copy. Fewer stored pixels mean less decode and resize work per image, on the GPU
or, with ``--cpu-decode`` (decode and resize on the CPU even on "cuda", as ``cpu_decode``), on the
CPU cores: the cores' images/s there says whether a stream can leave the GPU.

GPU (generates the synthetic iNat-like set, ~36k JPEGs of 500-800 px, on that machine):
    python -m ltpipe.bench.loader --device cuda --generate /tmp/ltpipe-inat --gen-workers 16
CPU (small, labelled cpu):
    python -m ltpipe.bench.loader --device cpu --generate /tmp/ltpipe-small --size large \
        --batch-size 32 --steps 8 --ref-steps 8 --warmup 2 --workers 2 --image-size 112
Plan-aware Q (``--plan-probs 0.5,1``): CMO's mix plan (one box per batch, α = 1, every epoch)
at each prob, Q decoded in full (crop, resize to S x S) against Q decoded as tiles (only each
mixed row's box window), on the same shards in one run; the two loaders are built side by side
and timed in alternation, repeat by repeat, so a load change on a shared machine hits both.
Besides pairs/s it records the decoded source pixels per step of P and of Q, summed by the
pipeline (the shape of every decoded window), and ``results["q_over_p_pixels"]`` keyed by
configuration. CPU (the "inat" profile stored at long side <= 512, i.e. 300-512 px):
    ltpipe shard synthetic DIR --size inat --classes 60 --max-per-class 40 --max-size 512
    python -m ltpipe.bench.loader --device cpu --shards DIR --plan-probs 0.5,1 --plan-only \
        --workers 2 --batch-size 32 --steps 10 --warmup 3 --repeats 5 --out DIR-results
Q from its decoded cache (``--cache-probs 1``): P alone (images/s), P+Q with Q's cache warm
(pairs/s) and P+Q with Q decoded as tiles (pairs/s), in one run: the three loaders are built side
by side (the cache is built, i.e. warm, before any timing) and timed in alternation, and each
timed run first takes ``--prefetch`` + 1 steps untimed, so no loader is timed on batches decoded
while another was timed. A P+Q step includes the paste of Q's boxes into P's images (the tiles,
or the cached rows' crop-resize), the work the mixer adds. Records each loader's rate, their
ratios paired by repeat, Q's decoded pixels over P's, and the cache's coverage (expected and
counted) and size. ``--q-cache-gb`` (default auto) sets its budget. CPU:
    python -m ltpipe.bench.loader --device cpu --shards DIR --cache-probs 1 --plan-only \
        --workers 2 --batch-size 32 --steps 10 --warmup 3 --repeats 5 --out DIR-results
CPU decode cost per core by stored size (iNat-like images; DIR and DIR-384 written by
``ltpipe shard synthetic DIR --size inat --classes 200 --max-per-class 60 [--max-size 384]``):
    python -m ltpipe.bench.loader --device cpu --shards DIR --max-sizes 384 --workers 1,2 \
        --streams single --skip-reference --batch-size 64 --steps 12 --warmup 3 --out DIR-results
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from ltpipe.pipeline.loader import make_loader
from ltpipe.pipeline.torch_loader import make_torch_loader
from ltpipe.bench.harness import (ScriptParser, add_shard_source_args, benchmark_shards,
                                    non_negative_int, positive_int, positive_ints,
                                    write_result)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STREAM_SETS = {"pairs": (("uniform", "minority"), "pairs_per_s"),
               "single": (("uniform",), "images_per_s")}


def parse_args(argv=None) -> argparse.Namespace:
    p = ScriptParser(__file__, __doc__)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    add_shard_source_args(p, "inat", "synthetic profile for --generate")
    p.add_argument("--batch-size", type=positive_int, help="GPU 256; CPU 32")
    p.add_argument("--preset", choices=("imagenet", "cifar"),
                   help="GPU imagenet; CPU the images' own (cifar for <= 64 px)")
    p.add_argument("--image-size", type=positive_int,
                   help="GPU 224; CPU the images' own side (<= 64 px), else 224")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="GPU fp16; CPU fp32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="GPU on; CPU off")
    p.add_argument("--steps", type=positive_int, help="timed steps per run (GPU 40; CPU 10)")
    p.add_argument("--ref-steps", type=positive_int,
                   help="timed steps for the reference (GPU 15; CPU 10)")
    p.add_argument("--warmup", type=non_negative_int, help="GPU 8; CPU 3")
    p.add_argument("--repeats", type=positive_int, default=2, help="timed runs per configuration")
    p.add_argument("--workers", type=positive_ints,
                   help="comma-separated worker/thread counts (GPU 8,16; CPU the cores)")
    p.add_argument("--prefetch", type=positive_int, default=3)
    p.add_argument("--hw-decoder-load", default="0.65",
                   help="nvJPEG hardware share; comma-separated values are swept (DALI runs only)")
    p.add_argument("--max-image-side", type=int, default=800, help="nvJPEG preallocation hint")
    p.add_argument("--concurrency", choices=("full", "backend"), default="full")
    p.add_argument("--streams", default="pairs,single",
                   help="comma-separated: pairs (P+Q), single (P)")
    p.add_argument("--max-sizes", type=positive_ints, default=[],
                   help="comma-separated PX: also measure the copies stored at long side <= PX")
    p.add_argument("--cpu-decode", action="store_true",
                   help="decode and resize on the CPU even on cuda (DALI runs)")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--plan-probs", default="",
                   help="comma-separated CMO probs: full-decode Q vs plan-aware (tiles) Q")
    p.add_argument("--cache-probs", default="",
                   help="comma-separated CMO probs: P alone vs P+Q from Q's decoded cache vs "
                   "P+Q with Q as tiles")
    p.add_argument("--q-cache-gb", default="auto",
                   help="Q's cache budget for --cache-probs: auto or GB")
    p.add_argument("--plan-only", action="store_true",
                   help="only the --plan-probs / --cache-probs comparisons (no stream sets, no "
                   "reference)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    return p.parse_args(argv)


GPU = dict(batch_size=256, preset="imagenet", image_size=224, dtype="fp16", channels_last=True,
           steps=40, ref_steps=15, warmup=8, workers=[8, 16])
CPU = dict(batch_size=32, dtype="fp32", channels_last=False, steps=10, ref_steps=10, warmup=3)


def fit_defaults(args, shards: Path) -> None:
    """Fill the options not given: a GPU machine's, or on the CPU what fits the machine (the
    images' own size, a small batch, no more workers than cores), so that the default run on
    the README's shards takes a minute or two on a small box, not a GPU benchmark's hours."""
    from ltpipe.pipeline.loader_args import cpus_per_rank, natural_preset
    from ltpipe.shards.format import load_manifest

    if args.device == "cuda":
        defaults = GPU
    else:
        manifest = load_manifest(shards)
        preset, size = natural_preset(manifest, preset=args.preset)
        defaults = dict(CPU, preset=preset, image_size=size, workers=[cpus_per_rank()],
                        batch_size=min(CPU["batch_size"], manifest.split("train").num_samples))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def shard_dirs(args) -> dict[str, Path]:
    """Label -> shard directory: "" for the data itself, "px<PX>" for each ``--max-sizes`` copy."""
    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    dirs = {"": benchmark_shards(args.shards, args.generate, args.size, args.gen_workers, log)}
    for px in args.max_sizes:
        base = args.shards or args.generate
        copy = base.with_name(f"{base.name}-{px}")
        if args.shards and not copy.is_dir():
            raise SystemExit(f"ltpipe.bench.loader: --max-sizes {px}: {copy} does not exist "
                             f"(write it "
                             f"with `ltpipe shard ... --max-size {px}`, or use --generate)")
        dirs[f"px{px}"] = benchmark_shards(copy if args.shards else None, copy, args.size,
                                           args.gen_workers, log, max_size=px)
    return dirs


def stored_stats(shards: Path) -> dict:
    """Mean stored width, height (px) and JPEG size (KB) of the train split (manifest stats;
    empty when they are missing or malformed: they are informative)."""
    from ltpipe.shards.format import load_manifest

    stats = load_manifest(shards).image_stats("train")
    if stats is None:
        return {}
    return {"width": stats["width"]["mean"], "height": stats["height"]["mean"],
            "jpeg_kb": round(stats["jpeg_bytes"]["mean"] / 1e3, 1)}


def endless(loader):
    while True:
        yield from loader


def throughput(loader, args, steps_per_run: int, backlog: int = 0) -> list[float]:
    """P samples per second (= pairs/s with two streams, images/s with one), per repeat.

    ``backlog``: batches a loader can have queued before timing starts (DataLoader: workers ×
    prefetch_factor); they are consumed in the warm-up, else the timed steps only drain a queue
    filled while the workers started (an H100 run timed 8 steps of a 48-batch queue: 60k img/s)."""
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    steps = endless(loader)
    for _ in range(args.warmup + backlog):
        next(steps)
    rates = []
    for _ in range(args.repeats):
        sync()
        t0, n = time.perf_counter(), 0
        for _ in range(steps_per_run):
            n += len(next(steps)["uniform"])
        sync()
        rates.append(n / (time.perf_counter() - t0))
    return rates


def summary(rates: list[float]) -> dict:
    return {"mean": statistics.fmean(rates), "std": statistics.pstdev(rates), "runs": rates}


def stream_sets(args) -> list[tuple[str, tuple[str, ...], str]]:
    """(tag, streams, unit) for each name in ``--streams``."""
    names = [n for n in args.streams.split(",") if n]
    unknown = sorted(set(names) - set(STREAM_SETS))
    if unknown or not names:
        raise SystemExit(f"ltpipe.bench.loader: --streams: expected names from "
                         f"{list(STREAM_SETS)}, "
                         f"got {args.streams!r}")
    return [(n, *STREAM_SETS[n]) for n in names]


def measure_dali(shards: Path, args, common: dict, label: str = "") -> dict:
    """DALI pairs/s and images/s per worker count (and per hardware-decoder share if several);
    ``label`` (a stored-size copy) ends each key."""
    results = {}
    loads = [float(h) for h in args.hw_decoder_load.split(",")]
    for workers in args.workers:
        for kind, streams, unit in stream_sets(args):
            for load in loads:
                tag = f"{kind}_w{workers}"
                tag += f"_hw{load:g}" if len(loads) > 1 else ""
                tag += f"_{label}" if label else ""
                loader = make_loader(shards, streams=streams, num_threads=workers,
                                     py_workers=max(1, workers // 4), prefetch=args.prefetch,
                                     hw_decoder_load=load, max_image_side=args.max_image_side,
                                     concurrency=args.concurrency,
                                     cpu_decode=streams if args.cpu_decode else (), **common)
                results[f"dali_{tag}"] = {unit: summary(throughput(loader, args, args.steps))}
                print(f"dali  {tag}: {results[f'dali_{tag}'][unit]['mean']:.0f} {unit}",
                      file=sys.stderr)
                del loader
    return results


def measure_reference(shards: Path, args, common: dict) -> dict:
    """Reference pairs/s and images/s; ``workers`` DataLoader processes split over the streams."""
    baselines = {}
    for workers in args.workers:
        for kind, streams, unit in stream_sets(args):
            tag = f"{kind}_w{workers}"
            per_stream = max(1, workers // len(streams))
            ref = make_torch_loader(shards, streams=streams, prefetch=args.prefetch,
                                    num_workers=per_stream, **common)
            rates = throughput(ref, args, args.ref_steps, backlog=per_stream * args.prefetch)
            baselines[f"torch_{tag}"] = {unit: summary(rates)}
            print(f"torch {tag}: {baselines[f'torch_{tag}'][unit]['mean']:.0f} {unit}",
                  file=sys.stderr)
            del ref
    return baselines


def plan_probs(args, option: str = "plan_probs") -> list[float]:
    text = getattr(args, option)
    try:
        probs = [float(p) for p in text.split(",") if p]
    except ValueError:
        probs = [-1.0]
    if not all(0 < p <= 1 for p in probs):
        raise SystemExit(f"ltpipe.bench.loader: --{option.replace('_', '-')}: expected probs in "
                         f"(0, 1], got {text!r}")
    return probs


def cache_budget(args):
    """--q-cache-gb as make_loader's q_cache_gb."""
    if args.q_cache_gb == "auto":
        return "auto"
    try:
        gb = float(args.q_cache_gb)
    except ValueError:
        gb = -1.0
    if not gb > 0:
        raise SystemExit(f"ltpipe.bench.loader: --q-cache-gb: expected auto or GB > 0, got "
                         f"{args.q_cache_gb!r}")
    return gb


def measure_plans(shards: Path, args, common: dict) -> dict:
    """Full-decode vs plan-aware Q under CMO's plan, per prob and worker count (module doc)."""
    from ltpipe.pipeline.mix_plan import PlanSpec

    results, ratios = {}, {}
    steps_seen = args.warmup + args.repeats * args.steps
    for workers in args.workers:
        for prob in plan_probs(args):
            spec = PlanSpec(prob=prob, mix_schedule="always", epochs=1, alpha=1.0,
                            per_sample=False)
            loaders = {mode: make_loader(shards, streams=("uniform", "minority"),
                                         num_threads=workers, py_workers=max(1, workers // 4),
                                         prefetch=args.prefetch, mix_plan=spec, q_decode=mode,
                                         count_pixels=True, q_cache_gb=0, **common)
                       for mode in ("full", "tiles")}
            rates = {mode: [] for mode in loaders}
            steps = {mode: endless(x) for mode, x in loaders.items()}
            for mode in loaders:
                for _ in range(args.warmup):
                    next(steps[mode])
            for r in range(args.repeats):  # alternate, and alternate who goes first
                for mode in (("full", "tiles") if r % 2 == 0 else ("tiles", "full")):
                    t0, n = time.perf_counter(), 0
                    for _ in range(args.steps):
                        n += len(next(steps[mode])["uniform"])
                    rates[mode].append(n / (time.perf_counter() - t0))
            for mode, loader in loaders.items():
                tag = f"plan_cmo_p{prob:g}_{mode}_w{workers}"
                px = loader.decoded_pixels  # over the warm-up and timed steps (and prefetch)
                ratios[tag] = px["minority"] / px["uniform"]
                results[tag] = {"pairs_per_s": summary(rates[mode]),
                                "decoded_pixels_per_step": {k: v / steps_seen
                                                            for k, v in px.items()},
                                "q_over_p_pixels": ratios[tag]}
                print(f"plan  {tag}: {results[tag]['pairs_per_s']['mean']:.0f} pairs/s, "
                      f"Q/P pixels {ratios[tag]:.3f}", file=sys.stderr)
            full, tiles = (results[f"plan_cmo_p{prob:g}_{m}_w{workers}"] for m in ("full", "tiles"))
            paired = [t / f for t, f in zip(tiles["pairs_per_s"]["runs"],
                                            full["pairs_per_s"]["runs"])]
            results[f"plan_cmo_p{prob:g}_speedup_w{workers}"] = summary(paired)
            del loaders, steps
    results["q_over_p_pixels"] = ratios
    return results


def pasted(loader):
    """Steps of ``loader`` with Q's boxes pasted into P's images (the tiles, and rows from Q's
    decoded cache), the work the mixer adds; P alone as it comes."""
    for step in endless(loader):
        q = step.get("minority")
        if q is not None and q.tiles is not None and step["uniform"].meta["plan"].active:
            q.tiles[:len(step["uniform"])].paste_(step["uniform"].images)
        yield step


def measure_cache(shards: Path, args, common: dict) -> dict:
    """P alone vs P+Q from Q's decoded cache vs P+Q with Q as tiles, per prob and worker count
    (module doc)."""
    from ltpipe.pipeline.mix_plan import PlanSpec

    results = {}
    budget = cache_budget(args)
    for workers in args.workers:
        for prob in plan_probs(args, "cache_probs"):
            spec = PlanSpec(prob=prob, mix_schedule="always", epochs=1, alpha=1.0,
                            per_sample=False)
            kw = dict(num_threads=workers, py_workers=max(1, workers // 4),
                      prefetch=args.prefetch, count_pixels=True, **common)
            loaders = {"p_alone": make_loader(shards, streams=("uniform",), **kw),
                       "cache": make_loader(shards, streams=("uniform", "minority"),
                                            mix_plan=spec, q_decode="tiles", q_cache_gb=budget,
                                            **kw),
                       "tiles": make_loader(shards, streams=("uniform", "minority"),
                                            mix_plan=spec, q_decode="tiles", q_cache_gb=0, **kw)}
            steps = {name: pasted(x) for name, x in loaders.items()}
            served = [0, 0]
            rates = {name: [] for name in loaders}
            for name in loaders:
                for _ in range(args.warmup):
                    next(steps[name])
            order = list(loaders)
            for r in range(args.repeats):  # alternate, rotating who goes first
                for name in order[r % 3:] + order[:r % 3]:
                    for _ in range(args.prefetch + 1):  # what was decoded while others ran
                        next(steps[name])
                    t0, n = time.perf_counter(), 0
                    for _ in range(args.steps):
                        step = next(steps[name])
                        n += len(step["uniform"])
                        if name == "cache":
                            got = step["uniform"].meta["q_cache"]  # (served, drawn) Q rows
                            served = [served[0] + got[0], served[1] + got[1]]
                    rates[name].append(n / (time.perf_counter() - t0))
            tag = f"cache_cmo_p{prob:g}_w{workers}"
            cache = loaders["cache"].q_cache
            px = {name: x.decoded_pixels for name, x in loaders.items()}
            results[tag] = {
                "p_alone_images_per_s": summary(rates["p_alone"]),
                "cache_pairs_per_s": summary(rates["cache"]),
                "tiles_pairs_per_s": summary(rates["tiles"]),
                "cache_over_p_alone": summary([c / p for c, p in zip(rates["cache"],
                                                                     rates["p_alone"])]),
                "tiles_over_p_alone": summary([t / p for t, p in zip(rates["tiles"],
                                                                     rates["p_alone"])]),
                "q_over_p_pixels": {m: px[m]["minority"] / px[m]["uniform"]
                                    for m in ("cache", "tiles")},
                "q_cache": {"images": len(cache.ids) if cache else 0,
                            "gb": cache.nbytes / 1e9 if cache else 0.0,
                            "build_s": cache.seconds if cache else 0.0,
                            "coverage_expected": cache.expected if cache else 0.0,
                            "coverage_counted": served[0] / max(served[1], 1)}}
            print(f"cache {tag}: P alone {summary(rates['p_alone'])['mean']:.0f} img/s, P+Q "
                  f"cache {summary(rates['cache'])['mean']:.0f} pairs/s "
                  f"(x{results[tag]['cache_over_p_alone']['mean']:.2f}), tiles "
                  f"{summary(rates['tiles'])['mean']:.0f}; Q/P pixels "
                  f"{results[tag]['q_over_p_pixels']['cache']:.4f} (cache), "
                  f"{results[tag]['q_over_p_pixels']['tiles']:.3f} (tiles)", file=sys.stderr)
            del loaders, steps
    return results


def measure(dirs: dict[str, Path], args) -> tuple[dict, dict]:
    common = dict(batch_size=args.batch_size, device=args.device, preset=args.preset,
                  image_size=args.image_size, dtype=DTYPES[args.dtype],
                  channels_last=args.channels_last, r=1.0, seed=0)
    results = {}
    if not args.plan_only:
        for label, shards in dirs.items():
            results.update(measure_dali(shards, args, common, label))
    if args.plan_probs:
        results.update(measure_plans(dirs[""], args, common))
    if args.cache_probs:
        results.update(measure_cache(dirs[""], args, common))
    skip = args.skip_reference or args.plan_only
    baselines = {} if skip else measure_reference(dirs[""], args, common)
    return results, baselines


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("ltpipe.bench.loader: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    stream_sets(args)  # a bad --streams or --plan-probs fails before any data is written
    plan_probs(args)
    plan_probs(args, "cache_probs")
    cache_budget(args)
    dirs = shard_dirs(args)
    fit_defaults(args, dirs[""])
    if args.device == "cuda":
        torch.cuda.init()  # CUDA first: DALI's Python workers are then spawned, never forked
    load_before = os.getloadavg()  # the machine may be shared: the JSON says how busy it was
    results, baselines = measure(dirs, args)
    from ltpipe.shards.format import load_manifest

    manifest = load_manifest(dirs[""])
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    params.update(train_samples=manifest.split("train").num_samples,
                  num_classes=manifest.num_classes, target_pairs_per_s_h100=11000,
                  stored={label or "as_given": stored_stats(d) for label, d in dirs.items()},
                  load_average_1_5_15min={"before": load_before, "after": os.getloadavg()})
    path = write_result("loader", params, results, baselines, out_dir=args.out,
                        device="cpu" if args.device == "cpu" else None)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
