"""Pipeline: DALI readers for the uniform (P) and minority (Q) streams, and the torch reference
loader, over one split of a shard directory.

Public names: ``make_loader`` (DALI, one rank's P/Q streams; ``mixer=`` takes the streams from a
mixer), ``make_torch_loader`` (the torchvision reference with the same keywords), ``Batch`` and
``MixedBatch`` (the hand-off objects), ``open_split`` / ``ShardSplit`` (a split as the loaders see
it) and ``__version__``.
"""

from ltpipe.pipeline.batch import Batch, MixedBatch
from ltpipe.pipeline.loader import make_loader
from ltpipe.pipeline.shardset import ShardSplit, open_split
from ltpipe.pipeline.torch_loader import make_torch_loader
from ltpipe.shards import __version__

__all__ = ["Batch", "MixedBatch", "ShardSplit", "make_loader", "make_torch_loader", "open_split",
           "__version__"]
