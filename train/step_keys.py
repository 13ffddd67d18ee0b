"""The trainer's per-step torch generators, keyed by (seed, epoch, step, rank, tag).

One module that the loop, the mixers and the preview import, so a mixer used in a user's own loop
(``Mixer.mix``) draws what ltpipe's trainer draws for that step. Its numpy counterpart for the
loader's draws is ltpipe.pipeline.step_random.
"""

from __future__ import annotations

import numpy as np
import torch

STEP_TAG, EPOCH_TAG = 0, 1


def step_generator(seed: int, epoch: int, step: int, rank: int, device: torch.device,
                   tag: int = STEP_TAG) -> torch.Generator:
    """A fresh generator on ``device`` whose seed hashes (seed, epoch, step, rank, tag)."""
    key = np.random.SeedSequence([seed, epoch, step, rank, tag]).generate_state(2, np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed(int(key[0]) << 31 ^ int(key[1]))
    return g
