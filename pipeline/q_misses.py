"""Q's cache misses: the rows a partial decoded cache does not hold, decoded by a DALI pipeline
of their own.

With a decoded cache (q_cache.py) Q is not in the loader's main pipeline: the loader draws Q's
ids on the host, the cache serves the rows it holds, and the rows that need pixels and are not
cached, the misses, are decoded here with the same operators as Q's planned decode in the main
pipeline (dali_graph.py ``_planned``: the same windows, so the same pixels). A cache that holds
every image Q can draw has no misses, and the loader builds no such pipeline.

Why a pipeline of its own rather than Q in the main one: DALI runs one batch size per iteration
for a whole pipeline, so there Q carries B samples every step, a 1 x 1 placeholder for each
cached row, and each placeholder still goes through decode, resize, normalisation and padding:
about 60 µs of CPU per row, 1.9 ms per step of 32 on the 2-core CPU box (bench/README.md). Here
a step's batch is its misses, so Q costs what it decodes (one placeholder on a step without a
miss: DALI takes no empty batch).

No checkpoint: a step's misses are a pure function of (seed, rank, epoch, step) (Q's draws,
the mix plan and the cache's selection), so the pipeline restarts at the loader's position and
P's reader keeps the only checkpoint. The callback runs in the training process, not in worker
processes: its host work is the plan and a few rows a step.
"""

from __future__ import annotations

import numpy as np

from ltpipe.pipeline.minority import MinorityDraws, ShardBytes
from ltpipe.pipeline.q_decode import PlannedDecode


class MissSource:
    """Batch callback for ``fn.external_source(batch=True, batch_info=True)`` in the training
    process: iteration i is the i-th step from ``start`` (epoch, step). Returns the columns of
    Q's planned decode for the step's misses, with their rows in place of the sample ids
    (int64 [n]; −1: the placeholder of a step without a miss), as ``MinoritySource`` does for
    all B rows."""

    parallel = False  # dali_graph.build_pipeline: a callback of the training process

    def __init__(self, draws: MinorityDraws, planned: PlannedDecode, data: ShardBytes,
                 batch_size: int, steps_per_epoch: int, start: tuple[int, int]):
        self.draws, self.planned, self.data = draws, planned, data
        self.batch_size, self.steps_per_epoch = int(batch_size), int(steps_per_epoch)
        self.start = (int(start[0]), int(start[1]))

    def position(self, iteration: int) -> tuple[int, int]:
        epochs, step = divmod(self.start[1] + int(iteration), self.steps_per_epoch)
        return self.start[0] + epochs, step

    def __call__(self, batch_info):
        epoch, step = self.position(batch_info.iteration)
        ids = self.draws.draw(epoch, step, self.batch_size)
        rows, (jpg, *requests) = self.planned.misses(epoch, step, ids, self.data)
        return (jpg, rows, *requests)


def kept_rows(rows: np.ndarray, real: int) -> int:
    """How many of a step's miss rows (ascending; [−1] for none) are among its first ``real``
    rows: a prefix, so the decoded tiles are sliced, not gathered."""
    return 0 if rows[0] < 0 else int(np.searchsorted(rows, real))
