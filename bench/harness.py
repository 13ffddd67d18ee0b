"""Shared by every benchmark: the result JSON schema (bench/README.md) and honest timers."""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import time
from pathlib import Path
from typing import Callable

from ltpipe.train.provenance import git_hash

# A source checkout's committed results/; an installed wheel has none (results are data, not
# shipped), and its benchmarks write to ./ltpipe-bench instead of into site-packages.
_CHECKOUT_RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_DIR = _CHECKOUT_RESULTS if _CHECKOUT_RESULTS.is_dir() else Path("ltpipe-bench")
SCHEMA_KEYS = ("name", "date", "git", "device", "cpu_count", "params", "results", "baselines")


class ScriptParser(argparse.ArgumentParser):
    """argparse for bench/*.py: a bad option is one line naming it (no usage block), exit 2."""

    def __init__(self, script: str, doc: str | None):
        super().__init__(prog=f"ltpipe.bench.{Path(script).stem}",
                         description=(doc or "").split("\n")[0])

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (warm-up steps, ...)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_ints(text: str) -> list[int]:
    """argparse type: comma-separated positive integers ("" -> [])."""
    return [positive_int(v) for v in text.split(",") if v.strip()]


def device_name() -> str:
    """GPU name, or "cpu" when the figures come from the CPU."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def write_result(name: str, params: dict, results: dict, baselines: dict | None = None,
                 out_dir: str | Path | None = None, device: str | None = None) -> Path:
    """Write ``<out_dir>/<name>-<device>.json`` atomically and return its path."""
    doc = {
        "name": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_hash(),
        "device": device or device_name(),
        "cpu_count": os.cpu_count(),
        "params": params,
        "results": results,
        "baselines": baselines or {},
    }
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "cpu" if doc["device"] == "cpu" else doc["device"].replace(" ", "-").lower()
    path = out_dir / f"{name}-{tag}.json"
    from ltpipe.train.outputs import json_text, write_text_atomic

    write_text_atomic(path, json_text(doc, indent=2) + "\n")  # a nan measurement: null
    return path


def validate_result(doc: dict) -> None:
    missing = [k for k in SCHEMA_KEYS if k not in doc]
    if missing:
        raise ValueError(f"bench result: missing keys {missing}")
    for k in ("params", "results", "baselines"):
        if not isinstance(doc[k], dict):
            raise ValueError(f"bench result: {k} must be an object")


def time_cuda(fn: Callable[[], object], warmup: int = 10, runs: int = 50) -> list[float]:
    """Per-run milliseconds of ``fn`` with CUDA events after warm-up (wall clock on the CPU)."""
    import torch

    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        out = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
        return out
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def add_shard_source_args(parser, size_default: str | None, size_help: str) -> None:
    """``--shards DIR`` | ``--generate DIR`` (+ ``--size``, ``--gen-workers``): the options that
    feed ``benchmark_shards``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", type=Path, help="an existing shard directory")
    src.add_argument("--generate", type=Path, help="write the synthetic set here (reused if done)")
    parser.add_argument("--size", default=size_default, help=size_help)
    parser.add_argument("--gen-workers", type=int, default=os.cpu_count() or 1)


def benchmark_shards(shards: Path | None, generate: Path | None, size: str, workers: int,
                     log: Callable[[str], None] = print, max_size: int | None = None) -> Path:
    """``shards`` if given, else the synthetic ``size`` profile written to ``generate`` (once: a
    finished directory is reused), so benchmark data is made on the measuring machine.
    ``max_size``: the same images stored with their long side <= PX (``ltpipe shard
    --max-size``)."""
    if shards:
        return Path(shards)
    from ltpipe.shards.format import MANIFEST
    from ltpipe.shards.write import write_shards

    generate = Path(generate)
    if not (generate / MANIFEST).is_file():
        t0 = time.perf_counter()
        write_shards("synthetic", generate, size=size, workers=workers, seed=0, max_size=max_size)
        log(f"generated {generate} in {time.perf_counter() - t0:.0f} s")
    return generate
