"""Kernel benchmark: paste_/resize_paste_/paste_tiles_, crop_resize_paste_ (Q's decoded cache)
and batched Sinkhorn vs torch/POT baselines.

    python -m ltpipe.bench.kernels --device cuda    # B=256, 3x224x224 fp16; CUDA events
    python -m ltpipe.bench.kernels --device cpu     # smaller batch, wall clock, labelled "cpu"

Median (and p10/p90) milliseconds over --runs runs after warm-up, written with
ltpipe.bench.harness.write_result to bench/results/kernels-<device>.json.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ltpipe.kernels import (cutmix_boxes, paste_, resize_paste_, resizemix_boxes, sample_lam,
                            sinkhorn, sinkhorn_reference)
from ltpipe.kernels.crop_paste import SourceImages, crop_resize_paste_, crop_resize_paste_reference
from ltpipe.kernels.paste import _resize_paste_cpu
from ltpipe.kernels.paste_tiles import _paste_tiles_loop, paste_tiles_
from ltpipe.bench.harness import ScriptParser, positive_int, time_cuda, write_result


def _stats(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=10)
    return {"median_ms": statistics.median(ms), "p10_ms": q[0], "p90_ms": q[-1], "runs": len(ms)}


def _timed(fn, runs: int, warmup: int) -> dict:
    out = _stats(time_cuda(fn, warmup=warmup, runs=runs))
    if torch.cuda.is_available():  # host time per call: launch overhead vs GPU time above
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(runs):
            fn()
        out["host_ms_per_call"] = (time.perf_counter() - t0) * 1e3 / runs
        torch.cuda.synchronize()
    return out


def _with_dlpack(fn, runs: int, warmup: int) -> dict:
    from ltpipe.kernels import numba_bridge

    mode, numba_bridge.ARG_MODE = numba_bridge.ARG_MODE, "dlpack"
    try:
        return _timed(fn, runs, warmup)
    except Exception as exc:  # noqa: BLE001 - an optional path: record why it failed
        return {"median_ms": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
    finally:
        numba_bridge.ARG_MODE = mode


def _box_mask(boxes: torch.Tensor, H: int, W: int) -> torch.Tensor:
    ys = torch.arange(H, device=boxes.device)[None, :, None]
    xs = torch.arange(W, device=boxes.device)[None, None, :]
    b = boxes.long()[:, :, None, None]  # [B,4,1,1]
    inside = (xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])  # [B,H,W]
    return inside[:, None]  # [B,1,H,W]


def _slice_loop(dst, src, boxes_list):
    for i, (x0, y0, x1, y1) in enumerate(boxes_list):
        dst[i, :, y0:y1, x0:x1] = src[i, :, y0:y1, x0:x1]


def _interp_loop(dst, src, boxes_list):
    for i, (x0, y0, x1, y1) in enumerate(boxes_list):
        dst[i, :, y0:y1, x0:x1] = F.interpolate(src[i:i + 1].float(), size=(y1 - y0, x1 - x0),
                                                mode="bilinear", align_corners=False)[0]


def bench_paste(device, B, size, runs, warmup) -> tuple[dict, dict]:
    g = torch.Generator(device=device).manual_seed(0)
    results, baselines = {}, {}
    for layout in ("nchw", "nhwc"):
        fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        dst = torch.rand(B, 3, size, size, device=device, generator=g).half().contiguous(
            memory_format=fmt)
        src = torch.rand_like(dst).contiguous(memory_format=fmt)
        boxes, _ = cutmix_boxes(sample_lam(B, 1.0, g), size, size, g)
        rboxes, _ = resizemix_boxes(B, size, size, g)
        mask = _box_mask(boxes, size, size)
        blist, rlist = boxes.tolist(), rboxes.tolist()
        results[f"paste_{layout}"] = _timed(
            lambda: paste_(dst, src, boxes, validate=False), runs, warmup)
        if device == "cuda":  # the other way of handing tensors to numba (numba_bridge.ARG_MODE)
            results[f"paste_{layout}_dlpack_args"] = _with_dlpack(
                lambda: paste_(dst, src, boxes, validate=False), runs, warmup)
        results[f"resize_paste_{layout}"] = _timed(
            lambda: resize_paste_(dst, src, rboxes, validate=False), runs, warmup)
        # Q's box-sized tiles under a mix plan (padded to the largest box), same boxes as paste
        sides = (boxes[:, 2:] - boxes[:, :2]).amax(0).clamp_min(1).tolist()  # (w, h) max
        tiles = src[:, :, :sides[1], :sides[0]].contiguous(memory_format=fmt)
        results[f"paste_tiles_{layout}"] = _timed(
            lambda: paste_tiles_(dst, tiles, boxes, validate=False), runs, warmup)
        baselines[f"paste_tiles_{layout}_slice_loop"] = _timed(
            lambda: _paste_tiles_loop(dst, tiles, boxes), runs, warmup)
        baselines[f"paste_{layout}_torch_where"] = _timed(
            lambda: torch.where(mask, src, dst), runs, warmup)
        baselines[f"paste_{layout}_slice_loop"] = _timed(
            lambda: _slice_loop(dst, src, blist), runs, warmup)
        baselines[f"resize_paste_{layout}_interpolate_loop"] = _timed(
            lambda: _interp_loop(dst, src, rlist), runs, warmup)
        baselines[f"resize_paste_{layout}_torch_reference"] = _timed(
            lambda: _resize_paste_cpu(dst, src, rboxes, None), runs, warmup)
    return results, baselines


CROP_SOURCE = (288, 384)  # (h, w): a 4:3 image at the cache's default long side, 384
CROP_IMAGES = 64


def crop_rows(B: int, size: int) -> tuple[list[torch.Tensor], dict]:
    """(slots, windows, boxes, flips) of B cached rows as the loader pastes them, and what they
    are: random-resized-crop windows of 288 x 384 images (q_decode.crop_windows), one CutMix box
    for the batch (CMO's default) of half the image (CMO's mean area), random flips."""
    import numpy as np

    from ltpipe.pipeline.q_decode import crop_windows

    h, w = CROP_SOURCE
    rng = np.random.default_rng(2)
    windows = crop_windows(rng.random((B, 10, 4)), np.full(B, w), np.full(B, h), "imagenet",
                           size)
    box, _ = cutmix_boxes(torch.tensor([0.5]), size, size, torch.Generator().manual_seed(2))
    rows = [torch.from_numpy(rng.integers(0, CROP_IMAGES, B)).int(),
            torch.from_numpy(windows).int(), box.int().repeat(B, 1),
            torch.from_numpy(rng.integers(0, 2, B)).int()]
    about = {"source": list(CROP_SOURCE), "images": CROP_IMAGES, "box": box[0].tolist(),
             "window_w_mean": float(windows[:, 2].mean()), "dtypes": ["float32", "uint8"]}
    return rows, about


def bench_crop_paste(device, B, size, runs, warmup) -> tuple[dict, dict]:
    """Q's cached rows (``crop_rows``) pasted into normalised float32 and uint8 dsts, from HWC
    images and, on the CPU, from the x-major copy Q's host cache keeps. Baseline: the torch
    reference (3 runs: it is slow)."""
    g = torch.Generator().manual_seed(2)
    pixels = torch.randint(0, 256, (CROP_IMAGES, *CROP_SOURCE, 3), dtype=torch.uint8, generator=g)
    sources = {"": SourceImages.pack(pixels.to(device))}
    if device == "cpu":
        sources["_xmajor"] = SourceImages.pack(pixels, x_major=True)
    rows = [t.to(device) for t in crop_rows(B, size)[0]]
    norm = {"mean": [123.675, 116.28, 103.53], "inv_std": [1 / 58.395, 1 / 57.12, 1 / 57.375]}
    results, baselines = {}, {}
    for dtype, name in ((torch.float32, "f32"), (torch.uint8, "u8")):
        kw = norm if dtype == torch.float32 else {}
        for layout in ("nchw", "nhwc"):
            fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
            dst = torch.zeros(B, 3, size, size, dtype=dtype, device=device).contiguous(
                memory_format=fmt)
            for tag, source in sources.items():
                results[f"crop_paste_{layout}_{name}{tag}"] = _timed(
                    lambda: crop_resize_paste_(dst, source, *rows, **kw), runs, warmup)
        dst = torch.zeros(B, 3, size, size, dtype=dtype, device=device)
        baselines[f"crop_paste_nchw_{name}_torch_reference"] = _timed(
            lambda: crop_resize_paste_reference(dst, sources[""], *rows, **kw), 3, 1)
    return results, baselines


def _pot_loop(C, eps, tol):
    import ot

    n, m = C.shape[1:]
    a = torch.full((n,), 1.0 / n, dtype=C.dtype, device=C.device)
    b = torch.full((m,), 1.0 / m, dtype=C.dtype, device=C.device)
    return [ot.sinkhorn(a, b, C[k], eps, method="sinkhorn_log", stopThr=tol, numItermax=1000,
                        warn=False) for k in range(C.shape[0])]


def _pot_batch(C, eps, tol):
    import ot

    return ot.batch.solve_batch(C, reg=eps, method="log_sinkhorn", max_iter=1000, tol=tol).plan


def bench_sinkhorn(device, shapes, runs, warmup, eps=0.01, tol=1e-6) -> tuple[dict, dict]:
    results, baselines = {}, {}
    for G, n in shapes:
        g = torch.Generator(device=device).manual_seed(1)
        C = torch.rand(G, n, n, device=device, generator=g)  # fp32 costs in [0, 1)
        a = torch.full((G, n), 1.0 / n, device=device)
        key = f"sinkhorn_G{G}_{n}x{n}"
        _, _, _, iters = sinkhorn(C, eps=eps, tol=tol, return_info=True)
        results[key] = _timed(lambda: sinkhorn(C, eps=eps, tol=tol), runs, warmup)
        results[key]["iterations"] = iters.tolist()
        if device == "cuda":
            results[key + "_dlpack_args"] = _with_dlpack(
                lambda: sinkhorn(C, eps=eps, tol=tol), runs, warmup)
        baselines[key + "_torch_reference"] = _timed(
            lambda: sinkhorn_reference(C, a, a, eps, 1000, tol), runs, warmup)
        baselines[key + "_pot_batch"] = _timed(lambda: _pot_batch(C, eps, tol), runs, warmup)
        baselines[key + "_pot_loop"] = _timed(lambda: _pot_loop(C, eps, tol), runs, warmup)
    return results, baselines


def main(argv=None) -> None:
    ap = ScriptParser(__file__, __doc__)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--batch", type=positive_int, default=None,
                    help="paste batch (cuda 256, cpu 32)")
    ap.add_argument("--size", type=positive_int, default=224)
    ap.add_argument("--runs", type=int, default=50, help="timed runs (>= 2: percentiles)")
    ap.add_argument("--warmup", type=int, default=None, help="(cuda 10, cpu 3)")
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    ap.add_argument("--parts", default="paste,crop_paste,sinkhorn",
                    help="comma-separated: paste, crop_paste, sinkhorn (its baseline needs POT)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device; use --device cpu")
    if args.runs < 2:
        ap.error("--runs must be >= 2 (percentiles)")
    cuda = args.device == "cuda"
    if not cuda:
        torch.set_num_threads(1)  # shared CPUs: oversubscribed intra-op threads stall every op
    B = args.batch or (256 if cuda else 32)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 3)
    shapes = [(1, 256), (8, 128)]
    results, baselines = {}, {}
    parts = [p for p in args.parts.split(",") if p]
    benches = {"paste": lambda: bench_paste(args.device, B, args.size, args.runs, warmup),
               "crop_paste": lambda: bench_crop_paste(args.device, B, args.size, args.runs,
                                                      warmup),
               "sinkhorn": lambda: bench_sinkhorn(args.device, shapes, args.runs, warmup)}
    if not parts or set(parts) - set(benches):
        ap.error(f"--parts: expected names from {', '.join(benches)}, got {args.parts!r}")
    for part in tqdm(parts, desc="kernels bench"):
        r, b = benches[part]()
        results.update(r)
        baselines.update(b)
    params = {"device": args.device, "batch": B, "image": [3, args.size, args.size],
              "dtype": "float16", "boxes": "cutmix lam0~Beta(1,1) / resizemix", "runs": args.runs,
              "warmup": warmup, "sinkhorn": {"shapes": shapes, "eps": 0.01, "tol": 1e-6,
                                            "dtype": "float32"},
              "timer": "cuda events" if cuda else "wall clock",
              "torch_threads": torch.get_num_threads(), "parts": parts}
    if "crop_paste" in parts:
        params["crop_paste"] = crop_rows(B, args.size)[1]
    path = write_result("kernels", params, results, baselines,
                        out_dir=args.out, device=None if cuda else "cpu")
    for k, v in {**results, **baselines}.items():
        ms = v["median_ms"]
        print(f"{k:48s} " + (f"{ms:10.3f} ms" if ms is not None else v.get("error", "failed")))
    print(path)


if __name__ == "__main__":
    main()
