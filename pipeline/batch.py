"""The hand-off objects between loader, mixer and loss.

Every loader (DALI or the torch reference) yields, per step, a mapping from stream name
("uniform" = P, "minority" = Q) to a ``Batch``. Mixers turn those into one ``MixedBatch``.
Under a mix plan with ``q_decode="tiles"`` (or "tiles-whole") Q's batch carries ``tiles`` (only
the pasted boxes) and an empty ``images``; code of one's own that reads Q's images should ask
for ``q_decode="full"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch


@dataclass(frozen=True)
class Tiles:
    """Q's pixels under a mix plan (pipeline/mix_plan.py): per row only the box that is pasted.

    Padded, not packed: tile i is ``pixels[i, :, :h_i, :w_i]`` with (h_i, w_i) its box's sides,
    zero beyond. One dense tensor keeps the loader's hand-off, the device copy and the paste
    kernel's indexing as simple as for whole images; the padding costs memory only up to the
    step's largest box, which is every box under the papers' one box per batch. A row that
    pastes nothing has an empty box and a 1 x 1 placeholder tile. With ``rows``, pixels and
    boxes hold only those rows of the batch (the ones Q's decoder produced; the loader's decoded
    cache serves the others).
    """

    pixels: torch.Tensor  # [B,3,h_max,w_max] (memory may be channels_last), or [n,...] with rows
    boxes: torch.Tensor  # int32 [B,4] (x0, y0, x1, y1): where each tile goes in the S x S image
    # rows pasted from the loader's decoded cache instead (pipeline/q_cache.py CachedRows: their
    # boxes above are empty, their tiles placeholders); ``paste_`` writes both
    cached: Any = None
    rows: np.ndarray | None = None  # int64 [n], ascending: the batch rows of pixels and boxes

    def __getitem__(self, rows: slice) -> "Tiles":
        """These rows of the batch (``tiles[:b]``: a step cut to its real samples); with
        ``self.rows``, only the first rows."""
        cached = None if self.cached is None else self.cached[rows]
        if self.rows is None:
            return Tiles(self.pixels[rows], self.boxes[rows], cached)
        if rows.start not in (None, 0) or rows.step not in (None, 1):
            raise ValueError(f"Tiles with rows: only the first rows can be taken, got {rows}")
        n = len(self.rows) if rows.stop is None else int(np.searchsorted(self.rows, rows.stop))
        return Tiles(self.pixels[:n], self.boxes[:n], cached, self.rows[:n])

    def paste_(self, dst: torch.Tensor) -> torch.Tensor:
        """Paste every row's box into ``dst`` [B,3,S,S] in place: the decoded tiles, then the
        cached rows (a crop-resize from the cache); returns dst. Boxes come from the mix plan:
        valid by construction, not checked (a check is a host sync on CUDA)."""
        from ltpipe.kernels.paste_tiles import paste_tiles_

        rows = None if self.rows is None else \
            torch.from_numpy(self.rows).to(dst.device, non_blocking=True)
        paste_tiles_(dst, self.pixels, self.boxes, rows, validate=False)
        if self.cached is not None:
            self.cached.paste_(dst)
        return dst


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # [B,3,H,W] on the training device (memory may be channels_last)
    labels: torch.Tensor  # int64 [B]
    index: torch.Tensor  # int64 [B]: sample ids (rows of the split's index.npy)
    meta: Mapping[str, Any] = field(default_factory=dict)  # "epoch", "step"; "plan": MixPlan
    # Q decoded as tiles (then ``images`` is an empty [B,3,0,0]: no whole image exists)
    tiles: Tiles | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class MixedBatch:
    """What the model trains on. Loss = lam·ℓ(y_a) + (1−lam)·ℓ(y_b) (METHODS.md: Conventions).

    y_a is the background/base label, y_b the pasted foreground's; identity is y_b = y_a, lam = 1.
    ``changed_rows`` tells which rows' images the mixer changed (the share is logged per epoch).
    """

    images: torch.Tensor  # [B,3,H,W]
    y_a: torch.Tensor  # int64 [B]
    y_b: torch.Tensor  # int64 [B]
    lam: torch.Tensor  # float32 [B]: weight of y_a
    extras: Mapping[str, Any] = field(default_factory=dict)

    def changed_rows(self) -> torch.Tensor:
        """bool [B]: extras["changed"] where a mixer sets it (M2m: the accepted translations;
        Remix: the pixel λ, since its label weight may be 1 on a mixed image), else lam < 1."""
        changed = self.extras.get("changed")
        return self.lam < 1 if changed is None else changed

    @classmethod
    def unmixed(cls, batch: Batch, **extras: Any) -> "MixedBatch":
        lam = torch.ones(len(batch), dtype=torch.float32, device=batch.labels.device)
        return cls(batch.images, batch.labels, batch.labels, lam, {"index": batch.index, **extras})
