"""Tile paste: Q's box-sized tiles into the background batch, in place (CMO/OTmix under a mix plan).

``paste_tiles_(dst, tiles, boxes, rows=None)``: for each tile i with box (x0, y0, x1, y1),
``dst[r_i, :, y0:y1, x0:x1] = tiles[i, :, :y1−y0, :x1−x0]``, an exact copy of the stored bits
(pipeline/batch.py ``Tiles``: each tile sits at the top-left of its padded slot), where r_i is
``rows[i]`` (a few tiles for some rows of the batch: Q's cache misses, pipeline/q_misses.py),
else i. Empty boxes write nothing. The torch reference below is the definition; CUDA tensors
run the numba kernel of paste_tiles_cuda.py, CPU tensors a loop of slice copies (what ``paste_``
measured fastest there).
"""

from __future__ import annotations

import torch

from ltpipe.kernels.paste import DTYPES


def _check(dst, tiles, boxes, rows, validate: bool) -> None:
    for name, t in (("dst", dst), ("tiles", tiles)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, C, H, W]")
        if t.dtype not in DTYPES:
            raise ValueError(f"{name} dtype {t.dtype} not supported "
                             "(uint8/float16/bfloat16/float32)")
    B = dst.shape[0] if rows is None else tiles.shape[0]  # tiles
    if tiles.dtype != dst.dtype or tiles.device != dst.device:
        raise ValueError(f"tiles are {tiles.dtype} on {tiles.device}, dst {dst.dtype} on "
                         f"{dst.device}")
    if tiles.shape[1] != dst.shape[1] or (rows is None and tiles.shape[0] != dst.shape[0]):
        raise ValueError(f"tiles [{tiles.shape[0]}, {tiles.shape[1]}, ...] do not match dst "
                         f"[{dst.shape[0]}, {dst.shape[1]}, ...]")
    if not isinstance(boxes, torch.Tensor) or boxes.shape != (B, 4) or boxes.is_floating_point():
        raise ValueError(f"boxes must be an integer tensor [{B}, 4] (x0, y0, x1, y1)")
    if boxes.device != dst.device:
        raise ValueError(f"boxes is on {boxes.device} but dst is on {dst.device}")
    if rows is not None:
        if not isinstance(rows, torch.Tensor) or rows.shape != (B,) or rows.dtype != torch.int64:
            raise ValueError(f"rows must be an int64 tensor [{B}] (dst's row of each tile)")
        if rows.device != dst.device:
            raise ValueError(f"rows is on {rows.device} but dst is on {dst.device}")
        if validate and B and not bool(((rows >= 0) & (rows < dst.shape[0])).all()):
            raise ValueError(f"rows {rows.tolist()} outside dst's {dst.shape[0]} rows")
    if validate and B:  # one host sync on CUDA; boxes from a mix plan are valid by construction
        H, W, th, tw = *dst.shape[2:], *tiles.shape[2:]
        x0, y0, x1, y1 = boxes.long().unbind(1)
        bad = (x0 < 0) | (y0 < 0) | (x1 > W) | (y1 > H) | (x1 < x0) | (y1 < y0) | \
            (x1 - x0 > tw) | (y1 - y0 > th)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"boxes[{i}] = {boxes[i].tolist()} outside the {H}x{W} image or "
                             f"larger than the {th}x{tw} tiles")


def paste_tiles_reference(dst, tiles, boxes, rows=None):
    """The definition of paste_tiles_: a loop of slice assignments (any device)."""
    _check(dst, tiles, boxes, rows, validate=True)
    return _paste_tiles_loop(dst, tiles, boxes, rows)


def _paste_tiles_loop(dst, tiles, boxes, rows=None):
    targets = range(tiles.shape[0]) if rows is None else rows.tolist()
    for i, (r, (x0, y0, x1, y1)) in enumerate(zip(targets, boxes.tolist())):
        if x1 > x0 and y1 > y0:
            dst[r, :, y0:y1, x0:x1] = tiles[i, :, :y1 - y0, :x1 - x0]
    return dst


def paste_tiles_(dst: torch.Tensor, tiles: torch.Tensor, boxes: torch.Tensor,
                 rows: torch.Tensor | None = None, *, validate: bool = True) -> torch.Tensor:
    """dst[r_i, :, y0:y1, x0:x1] = tiles[i, :, :h_i, :w_i] in place; returns dst.

    dst [B,C,H,W], tiles [n,C,h,w] (h, w >= every box's sides): uint8/float16/bfloat16/float32,
    NCHW or channels_last; boxes int [n,4] (x0,y0,x1,y1) half-open; rows int64 [n], distinct
    (r_i; None: n = B and r_i = i). ``validate`` checks the box and row ranges (a host sync on
    CUDA)."""
    from ltpipe.kernels.paste import _layout

    _check(dst, tiles, boxes, rows, validate)
    if dst.is_cuda and _layout(dst) and _layout(tiles):
        from ltpipe.kernels import paste_tiles_cuda

        paste_tiles_cuda.paste_tiles_tensors(dst, tiles, boxes, rows)
        return dst
    return _paste_tiles_loop(dst, tiles, boxes, rows)
