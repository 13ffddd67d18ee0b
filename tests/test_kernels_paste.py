"""paste_/resize_paste_: the numba kernels (CUDA simulator, small) match the torch reference bit
for bit; the public CPU path matches independent formulations (torch.where, interpolate)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltpipe.kernels import (cutmix_boxes, paste_, paste_reference, resize_paste_,
                            resize_paste_reference, sample_lam)
from ltpipe.kernels import halfbits

DTYPES = [torch.uint8, torch.float16, torch.bfloat16, torch.float32]
# empty, full image, 1 pixel, random, inverted-free edge boxes
SMALL_BOXES = torch.tensor([[0, 0, 0, 0], [0, 0, 8, 8], [7, 0, 8, 1], [2, 3, 7, 5]],
                           dtype=torch.int32)


def _images(B, C, H, W, dtype, channels_last, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, H, W, generator=g) * (255 if dtype == torch.uint8 else 4) - (
        0 if dtype == torch.uint8 else 2)
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _box_mask(boxes, B, H, W):
    mask = torch.zeros(B, 1, H, W, dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        mask[i, :, y0:y1, x0:x1] = True
    return mask


def _bits(t):
    return t.view(torch.int16) if t.dtype in (torch.float16, torch.bfloat16) else t


# ----------------------------------------------------------------------------- simulator kernels
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_index", [False, True])
def test_cuda_kernels_match_reference_bit_for_bit(dtype, channels_last, with_index):
    from ltpipe.kernels import paste_cuda

    dst = _images(4, 3, 8, 8, dtype, channels_last, 0)
    src = _images(4, 3, 8, 8, dtype, channels_last, 1)
    small = _images(4, 3, 5, 7, dtype, not channels_last, 2)  # resize source: other size, layout
    idx = torch.tensor([2, 0, 3, 3]) if with_index else None
    other = src.contiguous(memory_format=torch.contiguous_format if channels_last
                           else torch.channels_last)
    for kernel, reference, source in ((paste_cuda.paste_tensors, paste_reference, src),
                                      (paste_cuda.paste_tensors, paste_reference, other),
                                      (paste_cuda.resize_paste_tensors, resize_paste_reference,
                                       small)):
        got, want = dst.clone(), dst.clone()
        kernel(got, source, SMALL_BOXES, idx)
        reference(want, source, SMALL_BOXES, idx)
        assert torch.equal(_bits(got), _bits(want)), kernel.__name__
        outside = ~_box_mask(SMALL_BOXES, 4, 8, 8).expand_as(dst)
        assert torch.equal(_bits(got)[outside], _bits(dst)[outside])


def test_halfbits_conversions_match_numpy_and_torch():
    h = np.arange(65536, dtype=np.uint16)
    ok = ~np.isnan(h.view(np.float16))
    want = h.view(np.float16).astype(np.float32).view(np.uint32)
    got = np.array([halfbits.half_to_float_bits(int(v)) for v in h], dtype=np.uint32)
    assert np.array_equal(got[ok], want[ok])
    rng = np.random.default_rng(0)
    near = (want[ok][:, None] + np.array([1, 0xFFF, 0x1000, 0x1001, 0xFFFFFFFF], np.uint32))
    f = np.concatenate([rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32),
                        near.ravel()[::7]])
    fv = f.view(np.float32)
    keep = ~np.isnan(fv)
    with np.errstate(all="ignore"):
        want16 = fv.astype(np.float16).view(np.uint16)
    got16 = np.array([halfbits.float_to_half_bits(int(v)) for v in f], dtype=np.uint16)
    assert np.array_equal(got16[keep], want16[keep])
    wantb = torch.from_numpy(fv.copy()).to(torch.bfloat16).view(torch.int16).numpy()
    gotb = np.array([halfbits.float_to_bfloat_bits(int(v)) for v in f], dtype=np.uint16)
    assert np.array_equal(gotb[keep], wantb.view(np.uint16)[keep])


# ----------------------------------------------------------------------------- public CPU path
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_paste_equals_masked_where_at_full_size(dtype, channels_last):
    B, H, W = 16, 224, 224
    dst = _images(B, 3, H, W, dtype, channels_last, 3)
    src = _images(B, 3, H, W, dtype, channels_last, 4)
    g = torch.Generator().manual_seed(5)
    boxes, _ = cutmix_boxes(sample_lam(B, 1.0, g), H, W, g)
    boxes[0] = torch.tensor([0, 0, W, H])
    boxes[1] = torch.tensor([5, 5, 5, 9])
    perm = torch.randperm(B, generator=g)
    mask = _box_mask(boxes, B, H, W)
    want = torch.where(mask, src[perm], dst)
    got = paste_(dst.clone(), src, boxes, perm)
    assert torch.equal(_bits(got), _bits(want))
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_in_batch_paste_reads_a_snapshot():
    x = _images(6, 3, 16, 16, torch.float32, False, 6)
    perm = torch.tensor([1, 2, 3, 4, 5, 0])
    boxes = torch.tensor([[0, 0, 16, 16]] * 6, dtype=torch.int32)
    want = x[perm].clone()
    assert torch.equal(paste_(x, x, boxes, perm), want)


@pytest.mark.parametrize("size", [(224, 224, 100, 150), (32, 32, 32, 32), (7, 9, 13, 2)])
def test_bilinear_rule_is_torch_interpolate_up_to_an_ulp(size):
    H, W, h, w = size
    src = _images(2, 3, H, W, torch.float32, False, 7) * 100
    dst = torch.zeros(2, 3, h, w)
    boxes = torch.tensor([[0, 0, w, h]] * 2, dtype=torch.int32)
    got = resize_paste_(dst, src, boxes)
    want = F.interpolate(src, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
    assert torch.allclose(got, want, rtol=0, atol=4e-7 * 200)  # ~1 ulp of values up to 200
    u8 = resize_paste_(torch.zeros(2, 3, h, w, dtype=torch.uint8), src.clamp(0, 255).round()
                       .to(torch.uint8), boxes)
    want8 = F.interpolate(src.clamp(0, 255).round(), size=(h, w), mode="bilinear",
                          align_corners=False)
    assert (u8.float() - want8).abs().max() <= 0.5 + 1e-3  # rint of a value within an ulp


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_resize_paste_touches_only_the_box_and_keeps_layout(dtype, channels_last):
    # the public CPU path is the njit kernel (paste_cpu.py): bit for bit the reference
    dst = _images(4, 3, 64, 48, dtype, channels_last, 8)
    src = _images(4, 3, 40, 40, dtype, not channels_last, 9)
    boxes = torch.tensor([[0, 0, 0, 0], [0, 0, 48, 64], [10, 20, 11, 21], [3, 4, 30, 60]])
    got = resize_paste_(dst.clone(), src, boxes, torch.tensor([3, 2, 1, 0]))
    outside = ~_box_mask(boxes, 4, 64, 48).expand_as(dst)
    assert torch.equal(_bits(got)[outside], _bits(dst)[outside])
    assert not torch.equal(_bits(got)[~outside], _bits(dst)[~outside])
    ref = resize_paste_reference(dst.clone(), src, boxes, torch.tensor([3, 2, 1, 0]))
    assert torch.equal(_bits(got), _bits(ref))
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("call, match", [
    (lambda d, s, b: paste_(d, s.float(), b), "dtype"),
    (lambda d, s, b: paste_(d, s[:, :2], b), "channels"),
    (lambda d, s, b: paste_(d, s, b[:, :3]), "boxes"),
    (lambda d, s, b: paste_(d, s, b.float()), "boxes"),
    (lambda d, s, b: paste_(d, s, torch.tensor([[0, 0, 9, 1]] * 2)), "boxes"),
    (lambda d, s, b: paste_(d, s, torch.tensor([[3, 0, 2, 1]] * 2)), "boxes"),
    (lambda d, s, b: paste_(d, s[:1], b), "src_index"),
    (lambda d, s, b: paste_(d, s, b, torch.tensor([0, 2])), "src_index"),
    (lambda d, s, b: paste_(d[0], s, b), "dst"),
    (lambda d, s, b: resize_paste_(d, s.to(torch.int32), b), "src"),
])
def test_bad_input_names_the_argument(call, match):
    d = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    s = torch.ones(2, 3, 8, 8, dtype=torch.uint8)
    b = torch.tensor([[0, 0, 4, 4]] * 2, dtype=torch.int32)
    with pytest.raises(ValueError, match=match):
        call(d, s, b)
