"""Mixers: turn one or more stream batches into a MixedBatch (images, y_a, y_b, lam).

Public names: the interface (``Mixer``, ``MixerEnv``, ``StepContext``), the registry
(``build_mixer``, ``mixer_class``, ``MIXERS``) and every mixer class. The classes are imported on
first use (PEP 562), so that importing this package, as ``ltpipe --help`` does, stays instant.
"""

from ltpipe.train.mixers.base import Mixer, MixerEnv, StepContext
from ltpipe.train.mixers.registry import MIXERS, build_mixer, mixer_class

# class name -> registry name
_CLASSES = {path.split(":")[1]: name for name, path in MIXERS.items()}

__all__ = ["Mixer", "MixerEnv", "StepContext", "MIXERS", "build_mixer", "mixer_class",
           *_CLASSES]


def __getattr__(name: str):
    if name in _CLASSES:
        return mixer_class(_CLASSES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
