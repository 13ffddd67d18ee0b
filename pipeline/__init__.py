"""Pipeline: DALI readers for the uniform (P) and minority (Q) streams, and the torch reference
loader, over one split of a shard directory.

Public names: ``make_loader`` (DALI, one rank's P/Q streams; ``mixer=`` takes the streams from a
mixer), ``make_torch_loader`` (the torchvision reference with the same keywords), ``Batch`` and
``MixedBatch`` (the hand-off objects), ``open_split`` / ``ShardSplit`` (a split as the loaders see
it) and ``__version__``. They load on first use, so that ``ltpipe.pipeline.values`` (the argument
rules the CLI checks by) imports no torch.
"""

import importlib

from ltpipe.shards import __version__

_PUBLIC = {"Batch": "batch", "MixedBatch": "batch", "make_loader": "loader",
           "ShardSplit": "shardset", "open_split": "shardset",
           "make_torch_loader": "torch_loader"}

__all__ = ["Batch", "MixedBatch", "ShardSplit", "make_loader", "make_torch_loader", "open_split",
           "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"ltpipe.pipeline.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'ltpipe.pipeline' has no attribute {name!r}")
