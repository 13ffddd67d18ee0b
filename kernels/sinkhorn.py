"""Batched log-domain Sinkhorn for OTmix pairing (METHODS.md: OTmix).

For G problems with costs C [G,n,m], marginals a [G,n], b [G,m] and regularisation eps:
    logK = -C/eps;  f = g = 0
    repeat: g = log b - LSE_j(logK[j,:] + f_j);  f = log a - LSE_i(logK[:,i] + g_i)
    at iterations 1, 11, 21, ... (POT's ``ii % 10 == 0``): stop this problem when
    ||colsum(exp(logK + f + g)) - b||_2 < tol
    plan = exp(logK + f[:,None] + g[None,:])
Each problem stops on its own (frozen once converged), exactly as separate ``ot.sinkhorn(...,
method="sinkhorn_log")`` calls would. f, g are POT's ``log_u``, ``log_v``.
"""

from __future__ import annotations

import math

import torch

DEFAULT_TOL = {torch.float32: 1e-6, torch.float64: 1e-9}
CHECK_EVERY = 10


def _as_batch(x: torch.Tensor | None, G: int, size: int, like: torch.Tensor, name: str):
    """Marginal -> [G, size] (uniform 1/size when None), validated."""
    if x is None:
        return torch.full((G, size), 1.0 / size, dtype=like.dtype, device=like.device)
    if not isinstance(x, torch.Tensor) or x.shape[-1] != size or x.ndim not in (1, 2):
        raise ValueError(f"{name} must be a tensor [{size}] or [G, {size}]")
    if x.ndim == 2 and x.shape[0] != G:
        raise ValueError(f"{name} has {x.shape[0]} rows but cost has {G} problems")
    if x.device != like.device:
        raise ValueError(f"{name} is on {x.device} but cost is on {like.device}")
    if not bool((x > 0).all()):  # also rejects NaN
        raise ValueError(f"{name} must be strictly positive (zero or negative marginal)")
    return x.to(like.dtype).expand(G, size).contiguous()


def _check(cost, a, b, eps, max_iter, tol):
    if not isinstance(cost, torch.Tensor) or cost.ndim not in (2, 3):
        raise ValueError("cost must be a tensor [n, m] or [G, n, m]")
    if cost.dtype not in DEFAULT_TOL:
        raise ValueError(f"cost dtype {cost.dtype} not supported (float32 or float64)")
    if not (isinstance(eps, (int, float)) and eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    if tol is None:
        tol = DEFAULT_TOL[cost.dtype]
    if not (tol > 0):
        raise ValueError(f"tol must be > 0, got {tol!r}")
    C = cost if cost.ndim == 3 else cost[None]
    G, n, m = C.shape
    if n == 0 or m == 0:
        raise ValueError(f"cost must have n, m >= 1, got shape {tuple(cost.shape)}")
    return C.contiguous(), _as_batch(a, G, n, C, "a"), _as_batch(b, G, m, C, "b"), float(tol)


def plan_from_potentials(C: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float):
    """plan [G,n,m] = exp(-C/eps + f[:, :, None] + g[:, None, :])."""
    return torch.exp(-C / eps + f[:, :, None] + g[:, None, :])


def sinkhorn_reference(C: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float,
                       max_iter: int, tol: float):
    """The definition (any device): C [G,n,m], a [G,n], b [G,m] -> f [G,n], g [G,m], iters [G].

    Works on the still-running problems only: a converged problem is written out and dropped.
    """
    G, n, m = C.shape
    f = torch.zeros(G, n, dtype=C.dtype, device=C.device)
    g = torch.zeros(G, m, dtype=C.dtype, device=C.device)
    iters = torch.full((G,), max_iter, dtype=torch.int32, device=C.device)
    if G == 0:
        return f, g, iters
    run = torch.arange(G, device=C.device)  # indices of running problems
    logK, log_a, log_b, b_run = -C / eps, torch.log(a), torch.log(b), b  # [R,n,m], [R,n], [R,m]
    f_run, g_run = f.clone(), g.clone()
    for it in range(1, max_iter + 1):
        g_run = log_b - torch.logsumexp(logK + f_run[:, :, None], dim=1)  # [R, m]
        f_run = log_a - torch.logsumexp(logK + g_run[:, None, :], dim=2)  # [R, n]
        if (it - 1) % CHECK_EVERY == 0:  # POT checks after iterations 1, 11, 21, ...
            colsum = torch.exp(logK + f_run[:, :, None] + g_run[:, None, :]).sum(dim=1)
            done = torch.linalg.vector_norm(colsum - b_run, dim=1) < tol  # [R]
            if bool(done.any()):
                f[run[done]], g[run[done]], iters[run[done]] = f_run[done], g_run[done], it
                keep = ~done
                run, logK, log_a, log_b, b_run = (run[keep], logK[keep], log_a[keep],
                                                  log_b[keep], b_run[keep])
                f_run, g_run = f_run[keep], g_run[keep]
                if run.numel() == 0:
                    break
    f[run], g[run] = f_run, g_run  # problems that hit max_iter
    return f, g, iters


def _solve(cost, a, b, eps, max_iter, tol):
    C, a, b, tol = _check(cost, a, b, eps, max_iter, tol)
    if C.is_cuda:
        from ltpipe.kernels import sinkhorn_cuda

        f, g, iters = sinkhorn_cuda.sinkhorn_tensors(C, a, b, eps, max_iter, tol)
    else:
        f, g, iters = sinkhorn_reference(C, a, b, eps, max_iter, tol)
    return C, f, g, iters


def sinkhorn(cost: torch.Tensor, a: torch.Tensor | None = None, b: torch.Tensor | None = None,
             eps: float = 0.01, max_iter: int = 1000, tol: float | None = None,
             return_info: bool = False):
    """Entropic OT plans for cost [G,n,m] (or [n,m]); float32/float64; marginals default uniform.

    Returns plan [G,n,m] ([n,m] for 2-D cost), or with ``return_info`` (plan, f [G,n], g [G,m],
    iterations int32 [G]) where f, g are the log potentials. tol defaults to 1e-6 (float32) or
    1e-9 (float64). CUDA tensors run one numba kernel for all problems and iterations.
    """
    C, f, g, iters = _solve(cost, a, b, eps, max_iter, tol)
    plan = plan_from_potentials(C, f, g, eps)
    if cost.ndim == 2:
        plan, f, g, iters = plan[0], f[0], g[0], iters[0]
    return (plan, f, g, iters) if return_info else plan


def sinkhorn_argmax(cost: torch.Tensor, a: torch.Tensor | None = None,
                    b: torch.Tensor | None = None, eps: float = 0.01, max_iter: int = 1000,
                    tol: float | None = None) -> torch.Tensor:
    """OTmix pairing (OTmix paper Eq.8): pi(j) = argmax_i plan[j, i] = argmax_i (g_i - C[j,i]/eps),
    ties -> lowest i. int64 [G, n] ([n] for 2-D cost); the plan is never materialized."""
    C, f, g, iters = _solve(cost, a, b, eps, max_iter, tol)
    pi = torch.argmax(g[:, None, :] - C / eps, dim=2)  # first maximum = lowest index
    return pi[0] if cost.ndim == 2 else pi
