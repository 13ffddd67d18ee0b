"""bench/trace_summary.py: per-step GPU time of the step and the loader from a Chrome trace, and
train/cuda_stream.py: the step's stream (a no-op off CUDA; ordering checked on a real GPU)."""

import gzip
import json

import pytest
import torch

from ltpipe.bench import trace_summary
from ltpipe.train.cuda_stream import compute_stream


def load_trace_summary():
    return trace_summary


def kernel(name, stream, ts, dur):
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur,
            "args": {"stream": stream}}


def test_summary_splits_step_and_loader_time(tmp_path):
    ts = load_trace_summary()
    events = [  # two steps on stream 7 (2,000 us each incl. a 300 us gap); DALI on 20 and 21
        kernel("sm90_xmma_gemm", 7, 0, 1000), kernel("triton_bn", 7, 1000, 700),
        kernel("sm90_xmma_gemm", 7, 2000, 1700),
        kernel("nvjpeg::idct", 20, 500, 1000), kernel("dali::kernels::ResizeKernel", 21, 1400, 400),
        kernel("copy_kernel", 21, 3900, 100),  # a plain-named kernel on a loader stream
        {"ph": "X", "cat": "cpu_op", "name": "aten::conv", "ts": 0, "dur": 5000},
    ]
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    s = ts.summarize(ts.load_kernels(path), steps=2)
    assert s["train_kernel_ms"] == pytest.approx(1.7)  # 3,400 us over 2 steps
    assert s["train_busy_ms"] == pytest.approx(1.7)
    assert s["train_gap_ms"] == pytest.approx(0.15)  # 3,700 us span - 3,400 busy
    assert s["loader_kernel_ms"] == pytest.approx(0.75)
    # loader busy [500, 1800] and [3900, 4000]; step busy [0, 1700], [2000, 3700]: 1,200 us
    assert s["overlap_ms"] == pytest.approx(0.6)
    assert s["train_streams"] == ["7"] and s["loader_streams"] == 2
    assert list(s["loader_top_kernels_ms"])[0] == "nvjpeg::idct"
    assert "overlapping the step 0.60 ms" in ts.format_summary("t", s)
    assert ts.main([str(path), "--steps", "2"]) == 0


def test_summary_of_a_cpu_trace_says_so(tmp_path):
    ts = load_trace_summary()
    assert "no kernel events" in ts.summarize([], steps=1)["error"]
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert ts.main([str(bad)]) == 2


def test_compute_stream_is_a_no_op_off_cuda():
    with compute_stream(torch.device("cpu"), "high") as stream:
        assert stream is None
    with pytest.raises(ValueError, match="compute_stream: must be one of"):
        with compute_stream(torch.device("cpu"), "urgent"):
            pass


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compute_stream_is_high_priority_and_ordered():
    dev = torch.device("cuda")
    outer = torch.cuda.current_stream(dev)
    x = torch.randn(4096, 4096, device=dev)
    y = x @ x  # queued on the outer stream
    least, greatest = torch.cuda.Stream.priority_range()
    with compute_stream(dev, "high") as stream:
        assert torch.cuda.current_stream(dev) == stream and stream.priority == greatest < least
        z = y.sum()  # must see y complete: the stream waited for the outer one
    assert torch.cuda.current_stream(dev) == outer
    torch.testing.assert_close(z, (x @ x).sum())
