"""Shards: WebDataset tar shards, manifest, random-access and DALI indexes.

Public names: ``write_shards`` (what ``ltpipe shard`` runs), ``load_manifest`` / ``Manifest`` (read
a shard directory), ``ShardFormatError`` (a one-line ValueError naming the bad file or field) and
``__version__``, ltpipe's installed version.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ltpipe")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

from ltpipe.shards.format import Manifest, ShardFormatError, load_manifest  # noqa: E402


def write_shards(*args, **kwargs):
    """``ltpipe.shards.write.write_shards`` (imported on call: the writer pulls in PIL and more)."""
    from ltpipe.shards.write import write_shards as write

    return write(*args, **kwargs)


__all__ = ["Manifest", "ShardFormatError", "load_manifest", "write_shards", "__version__"]
