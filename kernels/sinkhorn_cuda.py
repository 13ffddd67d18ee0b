"""numba.cuda batched log-domain Sinkhorn (definition and torch reference: sinkhorn.py).

One thread block per problem runs every iteration inside one launch; the stop test is evaluated
in the kernel (no host sync per iteration). Each warp owns rows: for the g half-step the rows of
C^T (copied once by torch so both half-steps read contiguous rows), for the f half-step the rows
of C. A row's logsumexp takes two passes (max, then sum of exp) with warp reductions (shuffles on
a GPU, shared memory under the simulator, which has no shuffles). Potentials live in the output
arrays f [G,n], g [G,m]; __syncthreads orders the half-steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import cuda

from ltpipe.kernels import numba_bridge as nb

THREADS = 32 if nb.SIMULATOR else 1024
CHECK_EVERY = 10
# A 1024-thread block leaves 64 registers per thread; without this cap the compiled kernel
# asks for more and the launch fails (CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, seen on an H100).
# The simulator's jit takes no such option.
JIT_OPTIONS = {} if nb.SIMULATOR else {"max_registers": 65536 // THREADS}

if nb.SIMULATOR:
    @cuda.jit(device=True)
    def _warp_reduce(v, is_max):
        """Max or sum over the 32 lanes of the calling warp; every thread of the block calls it."""
        buf = cuda.shared.array(1024, np.float64)
        t = cuda.threadIdx.x
        buf[t] = v
        cuda.syncthreads()
        base = t - t % 32
        acc = buf[base]
        for k in range(1, 32):
            acc = max(acc, buf[base + k]) if is_max else acc + buf[base + k]
        cuda.syncthreads()
        return acc
else:
    @cuda.jit(device=True)
    def _warp_reduce(v, is_max):
        k = 16
        while k > 0:
            o = cuda.shfl_xor_sync(0xFFFFFFFF, v, k)
            v = max(v, o) if is_max else v + o
            k //= 2
        return v


def _device_functions(dt):
    """Row logsumexp, half-step and marginal error for one float type (dt: np.float32/64)."""

    @cuda.jit(device=True)
    def row_lse(M, pot, p, row, cols, inv_eps, lane):
        """LSE_k (pot[p,k] - M[p,row,k] * inv_eps), all lanes of the warp get the result."""
        mx = dt(-np.inf)
        for k in range(lane, cols, 32):
            mx = max(mx, pot[p, k] - M[p, row, k] * inv_eps)
        mx = _warp_reduce(mx, True)
        s = dt(0.0)
        for k in range(lane, cols, 32):
            s += math.exp(pot[p, k] - M[p, row, k] * inv_eps - mx)
        return mx + math.log(_warp_reduce(s, False))

    @cuda.jit(device=True)
    def half_step(M, pot_in, log_marg, pot_out, p, rows, cols, inv_eps, lane, warp, nwarps):
        """pot_out[p, r] = log_marg[p, r] - LSE_k(pot_in[p,k] - M[p,r,k]/eps) for every row r."""
        for base in range(0, rows, nwarps):  # uniform trip count: all threads reach the reductions
            r = base + warp
            lse = row_lse(M, pot_in, p, min(r, rows - 1), cols, inv_eps, lane)
            if lane == 0 and r < rows:
                pot_out[p, r] = log_marg[p, r] - lse

    @cuda.jit(device=True)
    def col_error(CT, f, g, b, p, n, m, inv_eps, lane, warp, nwarps):
        """Per-warp sum over its columns i of (colsum_i - b_i)^2 (valid in lane 0)."""
        acc = dt(0.0)
        for base in range(0, m, nwarps):
            i = base + warp
            lse = row_lse(CT, f, p, min(i, m - 1), n, inv_eps, lane)
            if i < m:
                d = math.exp(g[p, i] + lse) - b[p, i]
                acc += d * d
        return acc

    return half_step, col_error


def _build(dt):
    """Kernel for one float type (dt: np.float32 or np.float64)."""
    half_step, col_error = _device_functions(dt)

    @cuda.jit(**JIT_OPTIONS)
    def kernel(C, CT, log_a, log_b, b, f, g, iters, inv_eps, max_iter, tol):
        p = cuda.blockIdx.x
        t = cuda.threadIdx.x
        lane, warp, nwarps = t % 32, t // 32, cuda.blockDim.x // 32
        n, m = C.shape[1], C.shape[2]
        part = cuda.shared.array(32, dt)
        stop = cuda.shared.array(1, np.int32)
        for k in range(t, n, cuda.blockDim.x):
            f[p, k] = 0
        cuda.syncthreads()
        it = 0
        while it < max_iter:
            half_step(CT, f, log_b, g, p, m, n, inv_eps, lane, warp, nwarps)  # g from f
            cuda.syncthreads()
            half_step(C, g, log_a, f, p, n, m, inv_eps, lane, warp, nwarps)  # f from g
            cuda.syncthreads()
            it += 1
            if (it - 1) % CHECK_EVERY == 0:  # POT: after iterations 1, 11, 21, ...
                acc = col_error(CT, f, g, b, p, n, m, inv_eps, lane, warp, nwarps)
                if lane == 0:
                    part[warp] = acc
                cuda.syncthreads()
                if t == 0:
                    tot = dt(0.0)
                    for w in range(nwarps):
                        tot += part[w]
                    stop[0] = 1 if math.sqrt(tot) < tol else 0
                cuda.syncthreads()
                if stop[0] == 1:
                    break
        if t == 0:
            iters[p] = it

    return kernel


_kernels: dict[torch.dtype, object] = {}


def _kernel(dtype: torch.dtype):
    if dtype not in _kernels:  # built lazily, once per float type
        _kernels[dtype] = _build(np.float32 if dtype == torch.float32 else np.float64)
    return _kernels[dtype]


def sinkhorn_tensors(C: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float,
                     max_iter: int, tol: float):
    """C [G,n,m], a [G,n], b [G,m] (validated, contiguous, same dtype) -> f, g, iters int32 [G].

    CUDA tensors zero-copy on torch's current stream; CPU tensors via numpy (the simulator)."""
    G, n, m = C.shape
    f = torch.empty(G, n, dtype=C.dtype, device=C.device)
    g = torch.empty(G, m, dtype=C.dtype, device=C.device)
    iters = torch.empty(G, dtype=torch.int32, device=C.device)
    if G == 0:
        return f, g, iters
    CT = C.transpose(1, 2).contiguous()  # [G, m, n]: the g half-step reads rows too
    dt = np.float32 if C.dtype == torch.float32 else np.float64
    threads = min(THREADS, 32 * max(n, m))  # a warp per row, up to 32 warps; none idle
    with nb.on_device(C):
        arrays = [nb.device_array(x) for x in (C, CT, torch.log(a), torch.log(b), b, f, g, iters)]
        _kernel(C.dtype)[G, threads, nb.torch_stream(C)](*arrays, dt(1.0 / eps), max_iter,
                                                         dt(tol))
    return f, g, iters
