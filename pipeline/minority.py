"""Stream Q: counter-based minority-weighted draws and random-access reads (METHODS.md,
Conventions).

A draw picks class k with probability q(r, k) (``samplers.class_probabilities`` on the global
train counts), then a sample uniformly within the class, i.e. sample i has probability
q(y_i)/n_{y_i}. The random numbers of step s of epoch e on rank r come from a counter-based
stream (step_random.py): any step can be recomputed on its own, so a resumed run draws exactly
what an uninterrupted one would, with no generator state to save.

Bytes are read by random access through ``index.npy`` (shard, offset, size) from memory-mapped
tars, no tar scanning. ``MinoritySource`` is the picklable callback DALI's parallel
``fn.external_source`` runs in its worker processes (mmaps are opened lazily per process).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from ltpipe.pipeline import step_random
from ltpipe.pipeline.samplers import class_probabilities
from ltpipe.shards.lifetime import LEFT_TO_THE_PARENT, tie_to_parent


class MinorityDraws:
    """Draws sample ids for Q. ``labels`` int64 [N]; ``allowed`` bool [N] masks corrupt samples."""

    def __init__(self, labels: np.ndarray, class_probs: np.ndarray, seed: int, rank: int,
                 allowed: np.ndarray | None = None):
        if seed < 0 or rank < 0:
            raise ValueError(f"seed/rank: must be >= 0, got seed={seed} rank={rank}")
        labels = np.asarray(labels, dtype=np.int64)
        q = np.asarray(class_probs, dtype=np.float64).copy()
        ids = np.arange(labels.size) if allowed is None else np.flatnonzero(allowed)
        members = ids[np.argsort(labels[ids], kind="stable")]  # ids grouped by class
        counts = np.bincount(labels[ids], minlength=q.size)
        q[counts == 0] = 0.0  # a class absent here (all corrupt, or not in this split) drops out
        if q.sum() <= 0:
            raise ValueError("minority stream: no class with samples has positive probability")
        self.class_probs = q / q.sum()  # float64 [C], renormalized
        self._cdf = np.cumsum(self.class_probs)
        self._cdf[-1] = 1.0
        self._members = members
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # [C]
        self._counts = counts
        self._size = labels.size
        self.seed, self.rank = int(seed), int(rank)

    @classmethod
    def for_r(cls, labels, class_counts, r: float, seed: int, rank: int, allowed=None,
              allow_empty: bool = False) -> "MinorityDraws":
        return cls(labels, class_probabilities(class_counts, r, allow_empty), seed, rank, allowed)

    def generator(self, epoch: int, step: int) -> np.random.Generator:
        return step_random.step_generator(self.seed, self.rank, epoch, step, step_random.MINORITY)

    def sample_probabilities(self) -> np.ndarray:
        """float64 [N]: the probability q(y_i)/n_{y_i} that one draw picks sample i (0 for the
        samples left out), what ``draw`` draws by; it sums to 1 and is the same on every rank."""
        p = np.zeros(self._size)
        per_sample = np.divide(self.class_probs, self._counts, out=np.zeros_like(self.class_probs),
                               where=self._counts > 0)
        p[self._members] = np.repeat(per_sample, self._counts)
        return p

    def draw(self, epoch: int, step: int, size: int) -> np.ndarray:
        """Sample ids of step ``step`` of ``epoch``; int64 [size]."""
        u = self.generator(epoch, step).random((2, size))  # [2, size]: class, then within class
        k = np.searchsorted(self._cdf, u[0], side="right")
        k = np.minimum(k, self._cdf.size - 1)
        # k always has count > 0: classes with q_k = 0 span an empty CDF interval.
        within = np.minimum((u[1] * self._counts[k]).astype(np.int64), self._counts[k] - 1)
        return self._members[self._starts[k] + within]


class ShardBytes:
    """Random access to the ``.jpg`` payloads of a split through index rows and mmapped tars."""

    def __init__(self, rows: np.ndarray, tar_paths: list[Path]):
        self.shard = np.asarray(rows["shard"], dtype=np.int64)
        self.offset = np.asarray(rows["offset"], dtype=np.int64)
        self.size = np.asarray(rows["size"], dtype=np.int64)
        self.tar_paths = [str(p) for p in tar_paths]
        self._maps: dict[int, np.ndarray] = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_maps"] = {}  # mmaps never cross a process boundary
        return state

    def _map(self, shard: int) -> np.ndarray:
        view = self._maps.get(shard)
        if view is None:
            with open(self.tar_paths[shard], "rb") as f:
                buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            view = self._maps[shard] = np.frombuffer(buf, dtype=np.uint8)
        return view

    def read(self, sample_id: int) -> np.ndarray:
        """The encoded bytes of one sample; uint8 [size] (a view into the mmap)."""
        o = self.offset[sample_id]
        return self._map(int(self.shard[sample_id]))[o:o + self.size[sample_id]]

    def read_many(self, ids: np.ndarray) -> list[np.ndarray]:
        return [self.read(int(i)) for i in ids]


class MinoritySource:
    """Batch callback for ``fn.external_source(parallel=True, batch=True, batch_info=True)``.

    Pipeline iteration i (DALI's BatchInfo.iteration, restored by pipeline checkpoints) is step
    ``i % steps_per_epoch`` of epoch ``start_epoch + i // steps_per_epoch``. Returns
    (list of B uint8 arrays: encoded jpg, int64 [B] sample ids), and with ``planned`` (a
    q_decode.PlannedDecode) the per-sample decode requests of the step's mix plan after them
    (only the rows the plan uses are read).
    """

    parallel = True  # dali_graph.build_pipeline: DALI's worker processes call it

    def __init__(self, draws: MinorityDraws, data: ShardBytes, batch_size: int,
                 steps_per_epoch: int, start_epoch: int, planned=None):
        self.draws, self.data, self.planned = draws, data, planned
        self.batch_size, self.steps_per_epoch = int(batch_size), int(steps_per_epoch)
        self.start_epoch = int(start_epoch)
        self._parent = os.getpid()  # the process that builds the pipeline and starts the workers
        self._bound_to_parent = False

    def position(self, iteration: int) -> tuple[int, int]:
        epoch, step = divmod(int(iteration), self.steps_per_epoch)
        return self.start_epoch + epoch, step

    def __call__(self, batch_info):
        # first call in a worker: a spawned one ties itself here (a forked one already is,
        # worker_lifetime.tied_at_fork; tying again is harmless)
        if not self._bound_to_parent and os.getpid() != self._parent:
            tie_to_parent(self._parent, ignore=LEFT_TO_THE_PARENT)
            self._bound_to_parent = True
        epoch, step = self.position(batch_info.iteration)
        ids = self.draws.draw(epoch, step, self.batch_size)  # drawn whether or not they decode
        if self.planned is not None:
            jpg, *requests = self.planned(epoch, step, ids, self.data)
            return (jpg, ids, *requests)
        return self.data.read_many(ids), ids
