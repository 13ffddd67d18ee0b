"""Real CUDA kernels (numba on a GPU) against the torch reference and POT, the tile paste too.

Run on a GPU machine with the simulator off:
    NUMBA_ENABLE_CUDASIM=0 python -m pytest tests/test_kernels_gpu.py -m gpu -q
"""

import os

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available()
                       or os.environ.get("NUMBA_ENABLE_CUDASIM") != "0",
                       reason="needs a CUDA device and NUMBA_ENABLE_CUDASIM=0"),
]

DTYPES = [torch.uint8, torch.float16, torch.bfloat16, torch.float32]


def _bits(t):
    return t.view(torch.int16) if t.dtype in (torch.float16, torch.bfloat16) else t


def _images(B, H, W, dtype, channels_last, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(B, 3, H, W, generator=g) * (255 if dtype == torch.uint8 else 6) - (
        0 if dtype == torch.uint8 else 3)).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _boxes(B, H, W, seed):
    from ltpipe.kernels import cutmix_boxes, sample_lam

    g = torch.Generator().manual_seed(seed)
    boxes, _ = cutmix_boxes(sample_lam(B, 1.0, g), H, W, g)
    boxes[0] = torch.tensor([0, 0, 0, 0])
    boxes[1] = torch.tensor([0, 0, W, H])
    boxes[2] = torch.tensor([W - 1, H - 1, W, H])
    return boxes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_index", [False, True])
def test_paste_kernels_match_reference(dtype, channels_last, with_index):
    from ltpipe.kernels import paste_, paste_reference, resize_paste_, resize_paste_reference

    B, H, W = 16, 64, 48
    dst = _images(B, H, W, dtype, channels_last, 0)
    src = _images(B, H, W, dtype, channels_last, 1)
    small = _images(B, 29, 37, dtype, not channels_last, 2)
    boxes = _boxes(B, H, W, 3)
    idx = torch.randperm(B, generator=torch.Generator().manual_seed(4)) if with_index else None
    cuda = lambda t: None if t is None else t.cuda()  # noqa: E731
    args = [cuda(t) for t in (dst, dst, src, small, boxes, idx)]  # two device copies of dst
    d1, d2, s, s_small, b, i = args
    stream = torch.cuda.Stream()  # a non-default stream: the kernels must follow torch's
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = paste_(d1, s, b, i)
        got_r = resize_paste_(d2, s_small, b, i)
    torch.cuda.synchronize()
    want = paste_reference(dst.clone(), src, boxes, idx)
    want_r = resize_paste_reference(dst.clone(), small, boxes, idx)
    assert torch.equal(_bits(got.cpu()), _bits(want))
    assert torch.equal(_bits(got_r.cpu()), _bits(want_r))


@pytest.mark.parametrize("eps", [1e-1, 1e-2, 1e-3])
@pytest.mark.parametrize("G, n, m", [(4, 32, 32), (3, 20, 50), (2, 130, 70)])
def test_sinkhorn_kernel_matches_pot_and_reference(eps, G, n, m):
    import ot

    from ltpipe.kernels import sinkhorn, sinkhorn_reference

    g = torch.Generator().manual_seed(G * n + m)
    C = torch.rand(G, n, m, generator=g, dtype=torch.float64)
    plan, f, gg, iters = sinkhorn(C.cuda(), eps=eps, tol=1e-10, return_info=True)
    a = torch.full((G, n), 1 / n, dtype=torch.float64)
    b = torch.full((G, m), 1 / m, dtype=torch.float64)
    _, _, ref_iters = sinkhorn_reference(C, a, b, eps, 1000, 1e-10)
    # -C*(1/eps) vs -C/eps rounding may move a stop test near tol by one check (10 iterations)
    assert int((iters.cpu() - ref_iters).abs().max()) <= 10
    for k in range(G):
        want = ot.sinkhorn(a[0], b[0], C[k], eps, method="sinkhorn_log", stopThr=1e-10,
                           numItermax=1000, warn=False)
        assert float((plan[k].cpu() - want).abs().max() / want.max()) < 1e-5


def test_sinkhorn_fp32_small_eps_finite_and_marginals():
    from ltpipe.kernels import sinkhorn, sinkhorn_argmax

    g = torch.Generator().manual_seed(0)
    C = (torch.rand(8, 128, 128, generator=g) * 2).cuda()
    plan, _, _, iters = sinkhorn(C, eps=1e-3, return_info=True)
    assert bool(torch.isfinite(plan).all())
    plan, _, _, iters = sinkhorn(C / 2, eps=1e-2, tol=1e-6, return_info=True)
    done = iters < 1000
    err = torch.linalg.vector_norm(plan.sum(1) - 1 / 128, dim=1)
    assert bool((err[done] < 1e-6).all()) and bool(done.any())
    pi = sinkhorn_argmax(C.double(), eps=1e-2)
    assert torch.equal(pi.cpu(), sinkhorn_argmax(C.double().cpu(), eps=1e-2))


# ---- the tile paste (Q decoded as box tiles): cached launchers and device-array views -----


def _tile_case(B, S, dtype, channels_last, seed):
    from ltpipe.pipeline.mix_plan import MixPlanner, PlanSpec

    spec = PlanSpec(prob=1.0, mix_schedule="always", epochs=1, alpha=1.0, per_sample=True)
    boxes = torch.from_numpy(MixPlanner(spec, seed, 0, B, S).draw(0, 0).boxes)
    boxes[0] = torch.tensor([0, 0, 0, 0])
    boxes[1] = torch.tensor([0, 0, S, S])
    boxes[2] = torch.tensor([S - 1, S - 1, S, S])
    g = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dst = (torch.rand(B, 3, S, S, generator=g) * 255).to(dtype).contiguous(memory_format=fmt)
    tiles = (torch.rand(B, 3, S, S, generator=g) * 255).to(dtype).contiguous(memory_format=fmt)
    return dst, tiles, boxes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_tile_paste_matches_reference_bit_for_bit(dtype, channels_last):
    from ltpipe.kernels.paste_tiles import paste_tiles_, paste_tiles_reference

    dst, tiles, boxes = _tile_case(64, 224, dtype, channels_last, 0)
    want = paste_tiles_reference(dst.clone(), tiles, boxes)
    got = dst.cuda()
    for _ in range(2):  # the second call reuses the cached launcher and views
        paste_tiles_(got, tiles.cuda(), boxes.cuda(), validate=False)
    torch.cuda.synchronize()
    assert torch.equal(_bits(got.cpu()), _bits(want))


def test_cuda_tile_paste_into_some_rows_matches_reference():
    """Tiles for some rows only (Q's cache misses), into those rows of the batch."""
    from ltpipe.kernels.paste_tiles import paste_tiles_, paste_tiles_reference

    dst, tiles, boxes = _tile_case(64, 224, torch.bfloat16, True, 2)
    rows = torch.tensor([5, 17, 63], dtype=torch.int64)
    want = paste_tiles_reference(dst.clone(), tiles[:3], boxes[:3], rows)
    got = dst.cuda()
    paste_tiles_(got, tiles[:3].cuda(), boxes[:3].cuda(), rows.cuda(), validate=False)
    torch.cuda.synchronize()
    assert torch.equal(_bits(got.cpu()), _bits(want))


def test_cached_views_follow_new_tensors():
    """Same shapes, other memory: each call writes the tensors it was given."""
    from ltpipe.kernels.paste_tiles import paste_tiles_, paste_tiles_reference

    dst, tiles, boxes = _tile_case(16, 64, torch.float16, False, 1)
    outs = []
    for k in range(3):
        d = dst.cuda() + 0  # a fresh allocation each time
        t = (tiles + k).cuda()
        paste_tiles_(d, t, boxes.cuda(), validate=False)
        outs.append((d, tiles + k))
    torch.cuda.synchronize()
    for d, t in outs:
        assert torch.equal(_bits(d.cpu()), _bits(paste_tiles_reference(dst.clone(), t, boxes)))


def test_plan_tensors_reach_the_device_exactly():
    """The pinned, packed host-to-device copy of a mix plan (pipeline/mix_plan.py)."""
    import numpy as np

    from ltpipe.pipeline.mix_plan import MixPlanner, PlanSpec

    plan = MixPlanner(PlanSpec(prob=1.0, mix_schedule="always", epochs=3, alpha=1.0,
                               per_sample=True), seed=1, rank=0, batch_size=64,
                      image_size=224).draw(0, 3)
    boxes, lam, mixed = plan.tensors("cuda", 60)
    assert boxes.is_cuda and boxes.shape == (60, 4)
    assert np.array_equal(boxes.cpu().numpy(), plan.boxes[:60])
    assert np.array_equal(lam.cpu().numpy(), plan.lam[:60])
    assert np.array_equal(mixed.cpu().numpy(), plan.mixed[:60])
