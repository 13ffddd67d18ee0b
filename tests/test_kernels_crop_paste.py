"""crop_resize_paste_: the numba kernels (CPU njit, and CUDA in numba's simulator, small) match
the torch reference bit for bit; the reference is a crop, a resize and a flip of the cached
image, seen only in the box (a unit-scale window copies pixels exactly; an upscale is torch's
bilinear rule; a downscale is the triangle filter); nothing outside the boxes is written."""

import numpy as np
import pytest
import torch

from ltpipe.kernels.crop_paste import SourceImages, crop_resize_paste_, crop_resize_paste_reference

DTYPES = [torch.uint8, torch.float16, torch.bfloat16, torch.float32]
MEAN = [123.675, 116.28, 103.53]
INV_STD = [1 / 58.395, 1 / 57.12, 1 / 57.375]


def _source(shapes, seed=0, x_major=False):
    g = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g) for h, w in shapes]
    return SourceImages.pack(images, x_major), images


# rows: (slot, window (x, y, w, h), box, flip): downscale (window > S), upscale (< S), unit
# scale past the image's edge (the "cifar" shift), an uncached row, an empty box
SHAPES = [(20, 26), (9, 7), (8, 8)]
ROWS = [(0, (3, 2, 21, 17), (1, 2, 7, 8), 0), (1, (1, 1, 5, 6), (0, 0, 8, 8), 1),
        (2, (-2, 3, 8, 8), (2, 1, 8, 7), 1), (-1, (0, 0, 4, 4), (0, 0, 8, 8), 0),
        (0, (0, 0, 26, 20), (4, 4, 4, 6), 0)]


def _args(rows=ROWS):
    slots, windows, boxes, flips = (torch.tensor([r[k] for r in rows], dtype=torch.int32)
                                    for k in range(4))
    return slots, windows, boxes, flips


def _bits(t):
    return t.view(torch.int16) if t.dtype in (torch.float16, torch.bfloat16) else t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernels_match_the_reference_bit_for_bit(dtype, channels_last):
    from ltpipe.kernels import crop_paste_cuda

    source, _ = _source(SHAPES)
    dst = (torch.rand(len(ROWS), 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 200)
    dst = dst.to(dtype)
    dst = dst.contiguous(memory_format=torch.channels_last) if channels_last else dst
    norm = dict(mean=MEAN, inv_std=INV_STD) if dtype != torch.uint8 else {}
    ref = crop_resize_paste_reference(dst.clone(), source, *_args(), **norm)
    cpu = crop_resize_paste_(dst.clone(), source, *_args(), **norm)
    sim = dst.clone()
    mean, inv = norm.get("mean"), norm.get("inv_std")
    crop_paste_cuda.crop_paste_tensors(sim, source, *_args(), mean, inv)
    assert torch.equal(_bits(cpu), _bits(ref)) and torch.equal(_bits(sim), _bits(ref))
    outside = torch.ones_like(dst, dtype=torch.bool)
    for i, (slot, _, (x0, y0, x1, y1), _) in enumerate(ROWS):
        if slot >= 0:
            outside[i, :, y0:y1, x0:x1] = False
    assert torch.equal(_bits(ref)[outside], _bits(dst)[outside])  # only the boxes are written
    assert not torch.equal(_bits(ref), _bits(dst))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_the_cpu_kernel_matches_the_reference_on_loader_sized_rows(dtype):
    """224-px rows from 384-px sources, as Q's cache pastes them: random-resized-crop windows
    from 0.3x to 1.7x the output (2 to 5 taps), boxes of every shape, flips, both source layouts
    (x-major read in place, HWC through a copy) and both dst layouts."""
    from ltpipe.pipeline.q_decode import crop_windows

    S, n = 224, 12
    rng = np.random.default_rng(3)
    shapes = [(288, 384), (384, 256), (300, 300)]
    slots = rng.integers(0, len(shapes), n)
    h, w = (np.array([shapes[k][i] for k in slots]) for i in (0, 1))
    windows = crop_windows(rng.random((n, 10, 4)), w, h, "imagenet", S)
    x0, y0 = rng.integers(0, S - 1, n), rng.integers(0, S - 1, n)
    x1, y1 = x0 + rng.integers(1, S - x0 + 1), y0 + rng.integers(1, S - y0 + 1)
    boxes = np.stack([x0, y0, x1, y1], 1)
    rows = [(int(k), win.tolist(), box.tolist(), int(f))
            for k, win, box, f in zip(slots, windows, boxes, rng.integers(0, 2, n))]
    norm = dict(mean=MEAN, inv_std=INV_STD) if dtype != torch.uint8 else {}
    dst = torch.zeros(n, 3, S, S, dtype=dtype)
    ref = crop_resize_paste_reference(dst.clone(), _source(shapes)[0], *_args(rows), **norm)
    for x_major in (False, True):
        source = _source(shapes, x_major=x_major)[0]
        for d in (dst, dst.contiguous(memory_format=torch.channels_last)):
            assert torch.equal(crop_resize_paste_(d.clone(), source, *_args(rows), **norm), ref)


def test_x_major_sources_give_the_same_pixels():
    """The same images stored column by column: the reference and the CPU kernel paste the
    same values (the kernel reads windows inside the image in place and copies the "cifar"
    window that leaves it), and the CUDA kernel, which reads HWC only, refuses them."""
    from ltpipe.kernels import crop_paste_cuda

    hwc, images = _source(SHAPES)
    cols, _ = _source(SHAPES, x_major=True)
    assert all(torch.equal(cols.image(k), im) for k, im in enumerate(images))
    dst = torch.zeros(len(ROWS), 3, 8, 8, dtype=torch.float32)
    norm = dict(mean=MEAN, inv_std=INV_STD)
    want = crop_resize_paste_reference(dst.clone(), hwc, *_args(), **norm)
    assert torch.equal(crop_resize_paste_reference(dst.clone(), cols, *_args(), **norm), want)
    assert torch.equal(crop_resize_paste_(dst.clone(), cols, *_args(), **norm), want)
    with pytest.raises(ValueError, match="x-major"):
        crop_paste_cuda.crop_paste_tensors(dst.clone(), cols, *_args(), MEAN, INV_STD)


def test_the_definition_is_a_crop_resize_and_flip_seen_in_the_box():
    """Unit scale: an exact copy (zero beyond the image); an upscale equals torch's bilinear
    interpolate (align_corners=False) of the window within a level; a flip mirrors the crop."""
    source, images = _source(SHAPES)
    S = 8
    full = torch.tensor([0, 0, S, S], dtype=torch.int32)
    # unit scale, shifted past the left edge by 2: columns 0, 1 read zeros
    rows = [(2, (-2, 0, 8, 8), full.tolist(), 0)]
    out = crop_resize_paste_(torch.zeros(1, 3, S, S, dtype=torch.uint8), source, *_args(rows))
    want = torch.zeros(3, S, S, dtype=torch.uint8)
    want[:, :, 2:] = images[2][:, :6].permute(2, 0, 1)
    assert torch.equal(out[0], want)
    # upscale a 5 x 6 window of image 1 to 8 x 8, then flipped
    rows = [(1, (1, 2, 5, 6), full.tolist(), 0), (1, (1, 2, 5, 6), full.tolist(), 1)]
    out = crop_resize_paste_(torch.zeros(2, 3, S, S, dtype=torch.uint8), source, *_args(rows))
    window = images[1][2:8, 1:6].permute(2, 0, 1)[None].float()
    torch_bilinear = torch.nn.functional.interpolate(window, size=(S, S), mode="bilinear",
                                                     align_corners=False)[0]
    assert (out[0].float() - torch_bilinear).abs().max() <= 1.0
    assert torch.equal(out[1], out[0].flip(-1))
    # a box sees the same pixels as the whole crop does there
    rows = [(0, (3, 2, 21, 17), full.tolist(), 1), (0, (3, 2, 21, 17), [2, 3, 7, 6], 1)]
    out = crop_resize_paste_(torch.zeros(2, 3, S, S, dtype=torch.uint8), source, *_args(rows))
    assert torch.equal(out[1, :, 3:6, 2:7], out[0, :, 3:6, 2:7])


def test_downscale_is_the_normalised_triangle_filter():
    """A window twice the output: each output pixel is the triangle-weighted mean (radius 2) of
    the 4 source pixels around its centre, weights 1/8, 3/8, 3/8, 1/8 per axis."""
    source, images = _source([(16, 16)])
    out = crop_resize_paste_(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), source,
                             *_args([(0, (0, 0, 16, 16), [0, 0, 8, 8], 0)]))
    img = images[0].double()
    w = torch.tensor([1, 3, 3, 1], dtype=torch.float64) / 8
    y, x = 3, 4  # an interior pixel: source centre 2y + 0.5, taps 2y − 1 .. 2y + 2
    patch = img[2 * y - 1:2 * y + 3, 2 * x - 1:2 * x + 3]  # [4, 4, 3]
    want = torch.einsum("i,j,ijc->c", w, w, patch)
    assert (out[0, :, y, x].double() - want).abs().max() <= 0.5 + 1e-4


def test_bad_arguments_are_one_line_errors():
    source, _ = _source(SHAPES)
    with pytest.raises(ValueError, match=r"dst must be \[B, 3, S, S\]"):
        crop_resize_paste_(torch.zeros(5, 3, 8, 9), source, *_args())
    with pytest.raises(ValueError, match=r"slots must be an integer tensor \[4\]"):
        crop_resize_paste_(torch.zeros(4, 3, 8, 8), source, *_args())
    with pytest.raises(ValueError, match="mean and inv_std"):
        crop_resize_paste_(torch.zeros(5, 3, 8, 8, dtype=torch.uint8), source, *_args(),
                           mean=MEAN, inv_std=INV_STD)
