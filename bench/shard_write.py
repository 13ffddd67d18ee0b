"""Shard-writer throughput: images/s and MB/s of ``write_shards`` on a synthetic profile.

Measures the whole ``ltpipe shard synthetic OUT --size PROFILE`` job (render + JPEG encode in
``--workers`` processes, tar + DALI index + checksums in the main process, manifest) at each
worker count, wall clock, ``--repeats`` runs each (a fresh OUT per run). Baseline: the
``webdataset`` library's ``ShardWriter`` writing the same rendered images in one process (what a
single-process script would do), at the same shard size. Nothing here uses a GPU; ``device`` in the
result names the machine (write_result: GPU name, or "cpu" when there is none).

GPU machine (16 cores), the iNat-like profile the GPU benchmarks read:
    python -m ltpipe.bench.shard_write --size inat --workers 1,4,16 --repeats 1
CPU (small, labelled cpu):
    python -m ltpipe.bench.shard_write --size large --max-per-class 100 --workers 1,2 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from ltpipe.bench.harness import ScriptParser, write_result
from ltpipe.shards.write import write_shards


def parse_args(argv=None) -> argparse.Namespace:
    p = ScriptParser(__file__, __doc__)
    p.add_argument("--size", default="large", help="synthetic profile: default, large, inat")
    p.add_argument("--max-per-class", type=int, default=None, help="shrink the profile (CPU runs)")
    p.add_argument("--workers", default=f"1,{os.cpu_count() or 1}", help="comma-separated counts")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--shard-size", default="256MB")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: system temp)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    return p.parse_args(argv)


def _summary(seconds: list[float], images: int, nbytes: int) -> dict:
    mean = statistics.mean(seconds)
    ips = [images / s for s in seconds]
    return {"seconds_mean": round(mean, 3),
            "seconds_std": round(statistics.stdev(seconds), 3) if len(seconds) > 1 else 0.0,
            "images": images, "bytes": nbytes,
            "images_per_s_mean": round(statistics.mean(ips), 1),
            "images_per_s_std": round(statistics.stdev(ips), 1) if len(ips) > 1 else 0.0,
            "MB_per_s_mean": round(nbytes / 1e6 / mean, 2)}


def time_ltpipe(args, workers: int, scratch: Path) -> dict:
    seconds, images, nbytes = [], 0, 0
    for r in range(args.repeats):
        out = scratch / f"ltpipe-w{workers}-r{r}"
        t0 = time.perf_counter()
        m = write_shards("synthetic", out, size=args.size, max_per_class=args.max_per_class,
                         shard_size=args.shard_size, workers=workers, progress=False)
        seconds.append(time.perf_counter() - t0)
        images = sum(s.num_samples for s in m.splits.values())
        nbytes = sum(sh.bytes for s in m.splits.values() for sh in s.shards)
        shutil.rmtree(out)
    return _summary(seconds, images, nbytes)


def time_webdataset_baseline(args, scratch: Path) -> dict:
    """webdataset.ShardWriter, one process, same images, same members and shard size."""
    import webdataset as wds

    from ltpipe.shards.encode import encode_item, sample_members
    from ltpipe.shards.sources import plan_source
    from ltpipe.shards.write import parse_size

    seconds, images, nbytes = [], 0, 0
    for r in range(args.repeats):
        out = scratch / f"wds-r{r}"
        out.mkdir()
        t0 = time.perf_counter()
        plan = plan_source("synthetic", size=args.size, max_per_class=args.max_per_class)
        images = 0
        for split, items in plan.splits.items():
            pattern = str(out / f"{split}-%06d.tar")
            with wds.ShardWriter(pattern, maxsize=parse_size(args.shard_size), verbose=0) as sink:
                for sid, item in enumerate(items):
                    enc = encode_item(item, None, 90)
                    members = sample_members(sid, item.label, item.path,
                                             plan.classes[item.label], enc.jpeg)
                    sink.write({"__key__": f"{sid:09d}", **members})
            images += len(items)
        seconds.append(time.perf_counter() - t0)
        nbytes = sum(p.stat().st_size for p in out.iterdir())
        shutil.rmtree(out)
    return _summary(seconds, images, nbytes)


def main(argv=None) -> Path:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]  # a busy machine makes worker scaling meaningless: record it
    counts = [int(w) for w in args.workers.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="ltpipe-shard-bench-", dir=args.tmp))
    try:
        results = {f"workers_{w}": time_ltpipe(args, w, scratch) for w in counts}
        baselines = {} if args.skip_baseline else {
            "webdataset_shardwriter_1proc": time_webdataset_baseline(args, scratch)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for name, r in {**results, **baselines}.items():
        print(f"{name}: {r['images_per_s_mean']} img/s ± {r['images_per_s_std']}, "
              f"{r['MB_per_s_mean']} MB/s ({r['images']} images, {r['seconds_mean']} s)")
    params = {"size": args.size, "max_per_class": args.max_per_class, "workers": counts,
              "repeats": args.repeats, "shard_size": args.shard_size,
              "timing": "wall clock of the whole write_shards call, fresh OUT per run",
              "load_average_1min_before": round(load_before, 2)}
    path = write_result("shard_write", params, results, baselines, out_dir=args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
