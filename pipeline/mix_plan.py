"""Mix plans: every random decision of a box-pasting step, drawn on the host before decoding.

A plan holds what CMO and OTmix decide per step (train/METHODS.md, CMO; OTmix; Boxes and λ): the
epoch window and the batch gate, λ₀ and the boxes (per batch or per sample), the mixed rows when
OTmix's ``fraction`` < 1, and Q's own augmentation (the random numbers of its random-resized-crop
window, or of the CIFAR pad-and-shift, and its flip). Knowing them before the step lets the
loader decode only the minority pixels the paste uses (q_decode.py).

``MixPlanner.draw(epoch, step)`` is the one place a plan is drawn. Like ``MinorityDraws``, it
draws from a counter-based stream of its own (step_random.py), step counted within the
epoch: any step can be recomputed on its own, so a resumed run, the loader's worker
processes, the training process and a mixer without a loader all draw the same plan, and there
is no generator state to save. Every step draws the same amount of random numbers in the same
order whether or not its gate is on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ltpipe.pipeline import step_random

SCHEDULES = ("repo", "paper", "always")
CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 windows before its fallback


def in_window(epoch: int, epochs: int, schedule: str) -> bool:
    """Whether mixing may run in ``epoch`` (train/METHODS.md, When to mix).

    "repo": only when 3 < e < E−3; "paper": every epoch except the last 3; "always": every epoch.
    """
    if schedule == "repo":
        return 3 < epoch < epochs - 3
    if schedule == "paper":
        return epoch < epochs - 3
    if schedule == "always":
        return True
    raise ValueError(f"mix_schedule: unknown value {schedule!r} (repo, paper, always)")


@dataclass(frozen=True)
class PlanSpec:
    """A mixer's declaration of what its plans draw (``Mixer.mix_plan``), fixed for the run.

    ``tiles``: the mixer reads only the boxes of Q's images, so the loader may decode Q as tiles;
    False keeps the full Q images (OTmix's exact mode reads whole foregrounds) while the plan
    still decides the boxes and Q's augmentation.
    """

    prob: float  # the batch gate
    mix_schedule: str  # the epoch window
    epochs: int  # E, which the window reads
    alpha: float  # λ₀ ~ Beta(α, α)
    per_sample: bool  # one box per row, else one per batch
    fraction: float = 1.0  # share of rows that mix (OTmix), round(fraction·B), at least 1
    tiles: bool = True

    def __post_init__(self):
        in_window(0, 1, self.mix_schedule)  # raises on an unknown schedule
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"mix plan: prob must be in [0, 1], got {self.prob!r}")
        if not self.alpha > 0:
            raise ValueError(f"mix plan: alpha must be > 0, got {self.alpha!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"mix plan: fraction must be in (0, 1], got {self.fraction!r}")


@dataclass(frozen=True, eq=False)
class MixPlan:
    """One step's plan for B rows (numpy, on the host). Row i of Q is pasted into output row i.

    A row that does not mix has an all-zero box and lam = 1; a step that does not mix
    (``active`` False) has no mixed row at all, and its paste is skipped.
    """

    epoch: int
    step: int  # within the epoch
    window: bool  # the epoch window lets the mixer act
    gate: bool  # the batch gate's draw
    mixed: np.ndarray  # bool [B]
    boxes: np.ndarray  # int32 [B,4] (x0, y0, x1, y1) in the S x S output image
    lam: np.ndarray  # float32 [B]: weight of y_a, 1 − box area / S²
    flip: np.ndarray  # bool [B]: Q's horizontal flip
    crop_u: np.ndarray  # float64 [B, CROP_ATTEMPTS, 4]: Q's crop window numbers (q_decode.py)

    @property
    def active(self) -> bool:
        return self.window and self.gate

    def __len__(self) -> int:
        return int(self.mixed.shape[0])

    def __getstate__(self):  # a pickled plan leaves its device copies behind
        return {k: v for k, v in self.__dict__.items() if k != "_on_device"}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def tensors(self, device, rows: int | None = None):
        """(boxes int32 [b,4], lam float32 [b], mixed bool [b]) as torch tensors on ``device``,
        the first ``rows`` rows (a last step shorter than B). No device sync: the three are
        packed into one int32 buffer, pinned for a CUDA device (a copy from pageable memory
        waits for the device even when asked not to), and copied once; the loader and the mixer
        share the copy (cached on the plan per device and row count)."""
        import torch

        b = len(self) if rows is None else rows
        key = (str(device), b)
        cache = self.__dict__.setdefault("_on_device", {})  # frozen dataclass: no setattr
        if key not in cache:
            packed = np.empty(6 * b, dtype=np.int32)  # boxes [b,4] | lam's bits [b] | mixed [b]
            packed[:4 * b] = self.boxes[:b].reshape(-1)
            lam = np.ascontiguousarray(self.lam[:b], dtype=np.float32)
            packed[4 * b:5 * b] = lam.view(np.int32)  # the float's bits, restored on the device
            packed[5 * b:] = self.mixed[:b]
            flat = host_to_device(packed, device)
            cache[key] = (flat[:4 * b].view(b, 4), flat[4 * b:5 * b].view(torch.float32),
                          flat[5 * b:].bool())
        return cache[key]


def host_to_device(array: np.ndarray, device):
    """A host array as a torch tensor on ``device`` with no device sync: pinned first for a CUDA
    device (from pageable memory even a "non_blocking" copy waits for the device)."""
    import torch

    host = torch.from_numpy(np.ascontiguousarray(array))
    if torch.device(device).type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


def cutmix_boxes_np(lam0: np.ndarray, centres: np.ndarray, size: int):
    """CutMix/CMO boxes on the host (train/METHODS.md, Boxes and λ): lam0 float64 [n], centres
    int64 [n,2] (cy, cx) on the S x S grid -> (boxes int32 [n,4], lam float32 [n]); the same
    integer rule as kernels/boxes.py ``cutmix_boxes``."""
    s = np.sqrt(1.0 - np.clip(lam0, 0.0, 1.0))
    half = np.floor(size * s).astype(np.int64) // 2  # ch = cw = floor(S s) on a square image
    cy, cx = centres[:, 0], centres[:, 1]
    boxes = np.stack([np.clip(cx - half, 0, size), np.clip(cy - half, 0, size),
                      np.clip(cx + half, 0, size), np.clip(cy + half, 0, size)], axis=1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lam = np.clip(1.0 - area / float(size * size), 0.0, 1.0)
    return boxes.astype(np.int32), lam.astype(np.float32)


class MixPlanner:
    """Draws the plans of one rank: ``draw(epoch, step)`` (picklable, for DALI's workers)."""

    def __init__(self, spec: PlanSpec, seed: int, rank: int, batch_size: int, image_size: int):
        if seed < 0 or rank < 0:
            raise ValueError(f"seed/rank: must be >= 0, got seed={seed} rank={rank}")
        self.spec, self.seed, self.rank = spec, int(seed), int(rank)
        self.batch_size, self.image_size = int(batch_size), int(image_size)

    def generator(self, epoch: int, step: int) -> np.random.Generator:
        return step_random.step_generator(self.seed, self.rank, epoch, step, step_random.MIX_PLAN)

    def draw(self, epoch: int, step: int) -> MixPlan:
        spec, b, s = self.spec, self.batch_size, self.image_size
        g = self.generator(epoch, step)
        gate_u = g.random()
        lam0 = g.beta(spec.alpha, spec.alpha, size=b) if spec.alpha != 1.0 else g.random(b)
        centres = g.integers(0, s, size=(b, 2))  # (cy, cx)
        order = g.permutation(b)  # OTmix's mixed rows when fraction < 1
        flip = g.random(b) < 0.5
        crop_u = g.random((b, CROP_ATTEMPTS, 4))
        if not spec.per_sample:  # one box for the batch: row 0's draws
            lam0, centres = np.repeat(lam0[:1], b), np.repeat(centres[:1], b, axis=0)
        boxes, lam = cutmix_boxes_np(lam0, centres, s)
        window = in_window(epoch, spec.epochs, spec.mix_schedule)
        gate = bool(spec.prob >= 1.0 or gate_u < spec.prob)
        m = max(1, round(spec.fraction * b))
        mixed = np.zeros(b, dtype=bool)
        if window and gate:
            mixed[order[:m] if m < b else slice(None)] = True
        boxes[~mixed] = 0
        lam[~mixed] = 1.0
        for a in (mixed, boxes, lam, flip, crop_u):  # tensors() caches copies: no later edits
            a.flags.writeable = False
        return MixPlan(epoch, step, window, gate, mixed, boxes, lam, flip, crop_u)
