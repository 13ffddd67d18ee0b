"""paste_tiles_: the numba kernel (CUDA simulator, small) and the CPU path match the torch
reference bit for bit, write only inside the boxes, and equal paste_ of the whole images."""

import pytest
import torch

from ltpipe.kernels.paste import paste_
from ltpipe.kernels.paste_tiles import paste_tiles_, paste_tiles_reference

DTYPES = [torch.uint8, torch.float16, torch.bfloat16, torch.float32]
# empty, full image, 1 pixel, a box at the bottom-right corner
BOXES = torch.tensor([[0, 0, 0, 0], [0, 0, 8, 8], [7, 0, 8, 1], [3, 5, 8, 8]], dtype=torch.int32)


def _images(B, H, W, dtype, channels_last, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(B, 3, H, W, generator=g) * 255).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _bits(t):
    return t.view(torch.int16) if t.dtype in (torch.float16, torch.bfloat16) else t


def _tiles_of(full, boxes):
    """Each box of ``full`` cut out to the top-left of a tile padded to the largest box (9 x 9
    here, larger than any box, so the padding is exercised too)."""
    tiles = torch.full((full.shape[0], 3, 9, 9), 77, dtype=full.dtype)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        tiles[i, :, :y1 - y0, :x1 - x0] = full[i, :, y0:y1, x0:x1]
    return tiles


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dst_cl,tile_cl", [(False, False), (True, True), (True, False)])
def test_tile_kernel_matches_reference_and_whole_image_paste(dtype, dst_cl, tile_cl):
    from ltpipe.kernels import paste_tiles_cuda

    dst = _images(4, 8, 8, dtype, dst_cl, 0)
    full = _images(4, 8, 8, dtype, False, 1)
    tiles = _tiles_of(full, BOXES)
    tiles = tiles.contiguous(memory_format=torch.channels_last) if tile_cl else tiles
    want = paste_(dst.clone(), full, BOXES)  # the whole-image paste the tiles replace
    ref = paste_tiles_reference(dst.clone(), tiles, BOXES)
    got = dst.clone()
    paste_tiles_cuda.paste_tiles_tensors(got, tiles, BOXES)
    cpu = paste_tiles_(dst.clone(), tiles, BOXES)
    for out in (ref, got, cpu):
        assert torch.equal(_bits(out), _bits(want))
    assert got.is_contiguous(memory_format=torch.channels_last) == dst_cl


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_tiles_for_some_rows_go_to_those_rows(dtype, channels_last):
    """``rows``: tile i into dst row rows[i], the other rows untouched (kernel, CPU path and
    reference alike; the whole-image paste of those rows is the definition)."""
    from ltpipe.kernels import paste_tiles_cuda

    dst = _images(4, 8, 8, dtype, channels_last, 0)
    full = _images(4, 8, 8, dtype, False, 1)
    rows = torch.tensor([3, 0], dtype=torch.int64)
    boxes = BOXES[[3, 1]]  # a corner box into row 3, the whole image into row 0
    tiles = _tiles_of(full[rows], boxes)
    want = dst.clone()
    want[rows] = paste_(dst[rows].clone(), full[rows], boxes)
    ref = paste_tiles_reference(dst.clone(), tiles, boxes, rows)
    got = dst.clone()
    paste_tiles_cuda.paste_tiles_tensors(got, tiles, boxes, rows)
    cpu = paste_tiles_(dst.clone(), tiles, boxes, rows)
    for out in (ref, got, cpu):
        assert torch.equal(_bits(out), _bits(want))
    assert torch.equal(_bits(got[1:3]), _bits(dst[1:3])) and not torch.equal(got[3], dst[3])
    with pytest.raises(ValueError, match=r"rows \[4, 0\] outside dst's 4 rows"):
        paste_tiles_(dst.clone(), tiles, boxes, torch.tensor([4, 0]))
    with pytest.raises(ValueError, match="rows must be an int64 tensor"):
        paste_tiles_(dst.clone(), tiles, boxes, torch.tensor([3]))


def test_tile_paste_rejects_a_box_larger_than_the_tiles():
    dst = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"boxes\[0\].*larger than the 2x2 tiles"):
        paste_tiles_(dst, torch.zeros(1, 3, 2, 2), torch.tensor([[0, 0, 3, 2]]))
    with pytest.raises(ValueError, match="tiles"):
        paste_tiles_(dst, torch.zeros(2, 3, 2, 2), torch.tensor([[0, 0, 1, 1]]))
