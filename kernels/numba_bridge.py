"""torch <-> numba.cuda glue shared by the kernels (dispatch on the tensor's device).

Zero-copy views via ``__cuda_array_interface__`` (no stream sync: we launch on torch's own current
stream), the numba wrapper of that stream, and scalar helpers whose implementation differs between
a real GPU (libdevice intrinsics, warp shuffles) and numba's CUDA simulator (plain numpy scalars,
which already round every operation on its own). Imported only when a kernel is first needed.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
from numba import config, cuda

SIMULATOR = bool(config.ENABLE_CUDASIM)
# Threads per block of the element-wise kernels (their threads never share memory or wait for each
# other) under the simulator. It runs each CUDA thread as a Python thread and takes one lock on
# every device-function call; with 32 threads a thread preempted while holding that lock stalls
# the others for a GIL switch interval per call, and a test of seconds took minutes, at random.
# One thread a block has no one to wait for; two blocks a sample still walk the grid stride.
SIM_THREADS = 1

# Raw-bit views: a copy is a copy, and numba has no bfloat16 array type.
_BITS = {torch.uint8: torch.uint8, torch.float16: torch.int16, torch.bfloat16: torch.int16,
         torch.float32: torch.int32}
KIND_U8, KIND_F16, KIND_BF16, KIND_F32 = 0, 1, 2, 3
_KIND = {torch.uint8: KIND_U8, torch.float16: KIND_F16, torch.bfloat16: KIND_BF16,
         torch.float32: KIND_F32}
_streams: dict[int, object] = {}
# How CUDA tensors reach a kernel: "cai" wraps each in a DeviceNDArray via
# __cuda_array_interface__ (no stream sync); "dlpack" hands the tensor itself to numba-cuda, which
# types and views it through DLPack. Same results; bench/kernels.py times both (host overhead).
ARG_MODE = os.environ.get("LTPIPE_NUMBA_ARGS", "cai")


def device_array(t: torch.Tensor):
    """numba view of t without a copy: a device array for CUDA tensors, numpy otherwise (the
    simulator and numba's host-array launch path both accept numpy)."""
    if t.is_cuda:
        return t.detach() if ARG_MODE == "dlpack" else cuda.as_cuda_array(t.detach(), sync=False)
    return t.detach().numpy()


def bits_array(t: torch.Tensor):
    """t reinterpreted as same-width integers (uint8 stays uint8)."""
    return device_array(t.view(_BITS[t.dtype]))


def value_array(t: torch.Tensor):
    """t as numba can read it: float32/uint8 as is, float16/bfloat16 as int16 bit patterns."""
    return device_array(t if t.dtype in (torch.uint8, torch.float32) else t.view(torch.int16))


def kind(dtype: torch.dtype) -> int:
    return _KIND[dtype]


def on_device(t: torch.Tensor):
    """Context making t's GPU numba's current device (a no-op for device 0 and CPU tensors)."""
    if t.is_cuda and not SIMULATOR and (t.device.index or 0) != 0:
        return cuda.gpus[t.device.index]
    return contextlib.nullcontext()


def torch_stream(t: torch.Tensor):
    """numba stream for torch's current stream on t's device (0 = default for CPU tensors)."""
    if not t.is_cuda or SIMULATOR:
        return 0
    handle = torch.cuda.current_stream(t.device).cuda_stream
    if handle not in _streams:
        _streams[handle] = cuda.external_stream(handle)
    return _streams[handle]


# ----------------------------------------------------------------------------- scalar helpers
if SIMULATOR:
    def _f32_to_bits(x):
        return int(np.asarray(x, dtype=np.float32).view(np.int32))

    def _bits_to_f32(b):
        return np.asarray(b & 0xFFFFFFFF, dtype=np.uint32).view(np.float32)[()]

    def _mul(a, b):
        return np.float32(a) * np.float32(b)

    def _add(a, b):
        return np.float32(a) + np.float32(b)

    def _sub(a, b):
        return np.float32(a) - np.float32(b)

    def _div(a, b):
        return np.float32(a) / np.float32(b)

    def _rint(x):
        return np.rint(np.float32(x))
else:
    from numba.cuda import libdevice

    def _f32_to_bits(x):
        return libdevice.float_as_int(x)

    def _bits_to_f32(b):
        return libdevice.int_as_float(np.int32(b))

    # *_rn: rounded on their own, never contracted into an fma (matches the torch reference).
    def _mul(a, b):
        return libdevice.fmul_rn(a, b)

    def _add(a, b):
        return libdevice.fadd_rn(a, b)

    def _sub(a, b):
        return libdevice.fsub_rn(a, b)

    def _div(a, b):
        return libdevice.fdiv_rn(a, b)

    def _rint(x):
        return libdevice.rintf(x)

f32_to_bits = cuda.jit(device=True)(_f32_to_bits)
bits_to_f32 = cuda.jit(device=True)(_bits_to_f32)
mul_rn = cuda.jit(device=True)(_mul)
add_rn = cuda.jit(device=True)(_add)
sub_rn = cuda.jit(device=True)(_sub)
div_rn = cuda.jit(device=True)(_div)
rint = cuda.jit(device=True)(_rint)
