"""Batched log-domain Sinkhorn (METHODS.md: OTmix) against POT, marginals, OTmix argmax,
and the numba kernel (CUDA simulator, tiny problems) against the torch reference."""

import ot
import pytest
import torch

from ltpipe.kernels import sinkhorn, sinkhorn_argmax, sinkhorn_reference

F64 = torch.float64


def _costs(G, n, m, dtype=F64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(G, n, m, generator=g, dtype=F64).to(dtype) * scale


def _relerr(p, q):
    return float((p - q).abs().max() / q.abs().max())


@pytest.mark.parametrize("eps", [1e-1, 1e-2, 1e-3])
@pytest.mark.parametrize("n, m", [(5, 4), (12, 12), (7, 20)])
def test_plan_matches_pot_sinkhorn_log(eps, n, m):
    C = _costs(3, n, m, seed=n * m)
    plan, f, g, iters = sinkhorn(C, eps=eps, tol=1e-12, return_info=True)
    for k in range(3):
        a, b = torch.full((n,), 1 / n, dtype=F64), torch.full((m,), 1 / m, dtype=F64)
        want, log = ot.sinkhorn(a, b, C[k], eps, method="sinkhorn_log", numItermax=1000,
                                stopThr=1e-12, log=True, warn=False)
        assert _relerr(plan[k], want) < 1e-5
        assert int(iters[k]) == log["niter"] + 1  # same stopping points as POT
        assert torch.allclose(f[k], log["log_u"]) and torch.allclose(g[k], log["log_v"])


@pytest.mark.parametrize("eps", [1e-1, 1e-2])
def test_plan_matches_pot_batch_solver(eps):
    C = _costs(4, 10, 7, seed=1)
    plan, _, _, iters = sinkhorn(C, eps=eps, tol=1e-13, max_iter=5000, return_info=True)
    assert bool((iters < 5000).all())  # converged: both solvers reach the same fixed point
    want = ot.batch.solve_batch(C, reg=eps, method="log_sinkhorn", max_iter=5000, tol=1e-13).plan
    assert _relerr(plan, want) < 1e-5


def test_marginals_within_tol_for_given_marginals():
    g = torch.Generator().manual_seed(2)
    C = _costs(3, 10, 14, seed=3, scale=2.0)
    a = torch.rand(3, 10, generator=g, dtype=F64) + 0.1
    b = torch.rand(14, generator=g, dtype=F64) + 0.1
    a, b = a / a.sum(1, keepdim=True), b / b.sum()
    plan, _, _, iters = sinkhorn(C, a, b, eps=0.05, return_info=True)
    assert bool((iters < 1000).all())
    assert torch.allclose(plan.sum(2), a, atol=1e-12)  # f is updated last: rows exact
    assert bool((torch.linalg.vector_norm(plan.sum(1) - b, dim=1) < 1e-9).all())


def test_fp32_small_eps_is_finite_and_2d_input_keeps_shape():
    C = _costs(2, 32, 24, torch.float32, seed=4, scale=2.0)
    plan = sinkhorn(C, eps=1e-3)
    assert plan.dtype == torch.float32 and bool(torch.isfinite(plan).all())
    assert torch.allclose(plan.sum((1, 2)), torch.ones(2), atol=1e-4)
    single, f, g, it = sinkhorn(C[0], eps=1e-3, return_info=True)
    assert single.shape == (32, 24) and f.shape == (32,) and g.shape == (24,) and it.ndim == 0
    assert torch.equal(single, plan[0])


def test_problems_stop_independently():
    C = torch.cat([_costs(1, 8, 8, seed=5), _costs(1, 8, 8, seed=6, scale=30.0)])
    _, _, _, iters = sinkhorn(C, eps=0.5, tol=1e-10, return_info=True)
    _, _, _, alone = sinkhorn(C[:1], eps=0.5, tol=1e-10, return_info=True)
    assert int(iters[0]) == int(alone[0]) and int(iters[0]) != int(iters[1])


def test_argmax_pairs_rows_with_lowest_index_on_ties():
    C = _costs(2, 6, 5, seed=7)
    C[:, :, 3] = C[:, :, 1]  # identical columns -> identical g -> ties everywhere between 1 and 3
    C[:, 0, 1] = C[:, 0, 3] = 0.0  # row 0 prefers the tied pair
    pi = sinkhorn_argmax(C, eps=0.05)
    plan = sinkhorn(C, eps=0.05)
    assert torch.equal(pi, plan.argmax(dim=2)) and pi.dtype == torch.int64
    assert bool((pi != 3).all()) and int(pi[0, 0]) == 1
    assert torch.equal(sinkhorn_argmax(C[1], eps=0.05), pi[1])


@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=0.0), "eps"), (dict(eps=-1.0), "eps"), (dict(max_iter=0), "max_iter"),
    (dict(a=torch.tensor([0.5, 0.5, 0.0], dtype=F64)), "a"),
    (dict(b=-torch.ones(4, dtype=F64)), "b"), (dict(b=torch.ones(5, dtype=F64)), "b"),
    (dict(tol=0.0), "tol"),
])
def test_bad_input_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sinkhorn(_costs(2, 3, 4), **kwargs)
    with pytest.raises(ValueError, match="cost"):
        sinkhorn(torch.ones(3, 4, dtype=torch.float16))


def test_cuda_kernel_matches_reference_in_simulator():
    # Tiny on purpose: the simulator runs every thread in Python (and every barrier).
    from ltpipe.kernels import sinkhorn_cuda

    for dtype, eps, tol, atol in ((F64, 0.5, 1e-9, 1e-12), (torch.float32, 0.2, 1e-6, 1e-5)):
        C = _costs(2, 3, 5, dtype, seed=8)
        a = torch.full((2, 3), 1 / 3, dtype=dtype)
        b = torch.full((2, 5), 1 / 5, dtype=dtype)
        f, g, it = sinkhorn_cuda.sinkhorn_tensors(C, a, b, eps, 50, tol)
        fr, gr, itr = sinkhorn_reference(C, a, b, eps, 50, tol)
        assert torch.equal(it, itr)
        assert torch.all(it < 50)  # stopped by the tolerance test, not by max_iter
        assert torch.allclose(f, fr, atol=atol, rtol=0) and torch.allclose(g, gr, atol=atol, rtol=0)
