"""Counter-based random streams, one per (seed, rank, epoch, step, stream).

numpy's Philox is keyed by (seed, rank); its 256-bit counter holds (0, step, epoch, stream).
Philox counts its blocks in counter word 0, so word 0 must start at 0 in every stream: a stream
that started at word 0 = 1 would be another stream shifted by one block (four numbers). Word 3
names the stream, out of reach of any block count. Any step of any stream can be recomputed on
its own, so a resumed run, DALI's worker processes and the training process draw alike, with no
generator state to save.
"""

from __future__ import annotations

import numpy as np

MINORITY = 0  # pipeline/minority.py: the ids of stream Q
MIX_PLAN = 1  # pipeline/mix_plan.py: the boxes, gates and Q's augmentation of a step


def step_generator(seed: int, rank: int, epoch: int, step: int, stream: int) -> np.random.Generator:
    bits = np.random.Philox(key=[seed, rank], counter=[0, step, epoch, stream])
    return np.random.Generator(bits)
