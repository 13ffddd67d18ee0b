"""Where does the step wait? GPU time per step from a torch.profiler Chrome trace.

Kernels are split into the training step's and the loader's: a stream that ran any DALI or nvJPEG
kernel belongs to the loader, every other stream to the step. Per profiled step it reports
  train_kernel_ms   sum of the step's kernel durations (grows when the loader slows its kernels)
  train_busy_ms     union of the step's kernel intervals (the step's stream(s) kept the GPU busy)
  train_gap_ms      wall span minus train_busy_ms (nothing of the step ran: launch gaps, waits)
  loader_kernel_ms  sum of the loader's kernel durations
  overlap_ms        time when a step kernel and a loader kernel ran at once (SM sharing)
and the loader's heaviest kernels. Compare an ltpipe trace with a ceiling trace of the same step.

    python -m ltpipe.bench.trace_summary TRACE.json.gz --steps 3
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from ltpipe.bench.harness import ScriptParser

LOADER_KERNEL = re.compile(r"dali|nvjpeg", re.IGNORECASE)


def load_kernels(path: Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        doc = json.load(f)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    return [e for e in events if e.get("cat") == "kernel" and e.get("ph") == "X"]


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def _length(intervals) -> float:
    return sum(b - a for a, b in intervals)


def _intersection(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    """Total length of the intersection of two sorted, disjoint interval lists."""
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        total += max(0.0, hi - lo)
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def summarize(kernels: list[dict], steps: int) -> dict:
    """Per-step milliseconds (trace times are microseconds) and the loader's top kernels."""
    if not kernels:
        return {"error": "no kernel events in the trace (profiled on the CPU?)"}
    by_stream: dict[int, list[dict]] = defaultdict(list)
    for k in kernels:
        by_stream[k.get("args", {}).get("stream", k.get("tid"))].append(k)
    loader_streams = {s for s, ks in by_stream.items()
                      if any(LOADER_KERNEL.search(k["name"]) for k in ks)}
    train = [k for s, ks in by_stream.items() if s not in loader_streams for k in ks]
    loader = [k for s in loader_streams for k in by_stream[s]]
    train_iv = _union([(k["ts"], k["ts"] + k["dur"]) for k in train])
    loader_iv = _union([(k["ts"], k["ts"] + k["dur"]) for k in loader])
    span = (train_iv[-1][1] - train_iv[0][0]) if train_iv else 0.0
    per_step = 1e-3 / max(steps, 1)
    top: dict[str, float] = defaultdict(float)
    for k in loader:
        top[k["name"][:80]] += k["dur"]
    return {
        "steps": steps,
        "train_kernel_ms": sum(k["dur"] for k in train) * per_step,
        "train_busy_ms": _length(train_iv) * per_step,
        "train_gap_ms": (span - _length(train_iv)) * per_step,
        "loader_kernel_ms": sum(k["dur"] for k in loader) * per_step,
        "overlap_ms": _intersection(train_iv, loader_iv) * per_step,
        "train_streams": sorted(str(s) for s in by_stream if s not in loader_streams),
        "loader_streams": len(loader_streams),
        "loader_top_kernels_ms": {n: round(v * per_step, 3)
                                  for n, v in sorted(top.items(), key=lambda kv: -kv[1])[:6]},
    }


def format_summary(label: str, s: dict) -> str:
    if "error" in s:
        return f"{label}: {s['error']}"
    return (f"{label}: per step train kernels {s['train_kernel_ms']:.2f} ms, busy "
            f"{s['train_busy_ms']:.2f}, gaps {s['train_gap_ms']:.2f}; loader kernels "
            f"{s['loader_kernel_ms']:.2f} ms, overlapping the step {s['overlap_ms']:.2f} ms")


def main(argv=None) -> int:
    p = ScriptParser(__file__, __doc__)
    p.add_argument("trace", type=Path)
    p.add_argument("--steps", type=int, default=1, help="steps the trace holds")
    args = p.parse_args(argv)
    try:
        s = summarize(load_kernels(args.trace), args.steps)
    except (OSError, ValueError, KeyError) as exc:
        print(f"trace_summary: {args.trace}: unreadable trace ({exc})", file=sys.stderr)
        return 2
    print(format_summary(args.trace.name, s))
    print(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
