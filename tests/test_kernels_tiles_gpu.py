"""The tile paste's real CUDA kernel (numba on a GPU) against the torch reference, including its
cached launchers and device-array views across calls.

Run on a GPU machine with the simulator off:
    NUMBA_ENABLE_CUDASIM=0 python -m pytest tests/test_kernels_tiles_gpu.py -m gpu -q
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


def _case(B, S, dtype, channels_last, seed):
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

    dst, tiles, boxes = _case(64, 224, dtype, channels_last, 0)
    want = paste_tiles_reference(dst.clone(), tiles, boxes)
    got = dst.cuda()
    for _ in range(2):  # the second call reuses the cached launcher and views
        paste_tiles_(got, tiles.cuda(), boxes.cuda(), validate=False)
    torch.cuda.synchronize()
    assert torch.equal(_bits(got.cpu()), _bits(want))


def test_cached_views_follow_new_tensors():
    """Same shapes, other memory: each call writes the tensors it was given."""
    from ltpipe.kernels.paste_tiles import paste_tiles_, paste_tiles_reference

    dst, tiles, boxes = _case(16, 64, torch.float16, False, 1)
    outs = []
    for k in range(3):
        d = dst.cuda() + 0  # a fresh allocation each time
        t = (tiles + k).cuda()
        paste_tiles_(d, t, boxes.cuda(), validate=False)
        outs.append((d, tiles + k))
    torch.cuda.synchronize()
    for d, t in outs:
        assert torch.equal(_bits(d.cpu()), _bits(paste_tiles_reference(dst.clone(), t, boxes)))
