"""Train: mixers, losses, models and the lean training loop (``ltpipe train``).

For a training loop of one's own, the public names live in the subpackages:
``ltpipe.train.mixers`` (mixers, ``MixerEnv``, ``build_mixer``) and ``ltpipe.train.losses``
(``mixed_loss`` and the long-tail losses); see README, "Use ltpipe in your own training loop".
"""

from ltpipe.shards import __version__

__all__ = ["__version__"]
