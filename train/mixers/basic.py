"""The identity mixer (plain ERM on P) and minority oversampling (train on Q alone).

``ros`` draws whole batches from the minority stream Q: class k with probability
n_k^{−r}/Σ n_j^{−r} (METHODS.md: Conventions, paper meaning of r; r = 0 is class-balanced).
"""

from __future__ import annotations

from typing import Mapping

from ltpipe.pipeline import values
from ltpipe.pipeline.batch import Batch, MixedBatch
from ltpipe.train.mixers.base import Mixer, MixerEnv, StepContext


class NoMix(Mixer):
    streams = ("uniform",)

    def __init__(self, env: MixerEnv):
        super().__init__(env)

    def forward(self, streams: Mapping[str, Batch], ctx: StepContext) -> MixedBatch:
        return MixedBatch.unmixed(streams["uniform"])


class MinorityOversampling(Mixer):
    streams = ("minority",)
    RULES = {"fg_r": values.FG_R}

    def __init__(self, env: MixerEnv, fg_r: float = 1.0):
        values.check_values("mixer ros", self.RULES, locals())
        super().__init__(env)
        self.fg_r = float(fg_r)  # the loader builds the minority stream with this r

    def forward(self, streams: Mapping[str, Batch], ctx: StepContext) -> MixedBatch:
        return MixedBatch.unmixed(streams["minority"])
