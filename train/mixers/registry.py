"""Mixer names -> classes. Method names appear here and in config, nowhere in the train loop."""

from __future__ import annotations

import importlib

from ltpipe.train.mixers.base import Mixer
from ltpipe.train.params import accepted, check_params

# name -> "module:Class", imported on first use so `ltpipe --help` stays instant.
MIXERS: dict[str, str] = {
    "none": "ltpipe.train.mixers.basic:NoMix",
    "ros": "ltpipe.train.mixers.basic:MinorityOversampling",
    "cutmix": "ltpipe.train.mixers.cutmix:CutMix",
    "mixup": "ltpipe.train.mixers.cutmix:Mixup",
    "cmo": "ltpipe.train.mixers.cmo:CMO",
    "resizemix": "ltpipe.train.mixers.resizemix:ResizeMix",
    "remix": "ltpipe.train.mixers.remix:Remix",
    "smc": "ltpipe.train.mixers.smc:SMCMix",
    "otmix": "ltpipe.train.mixers.otmix:OTMix",
    "m2m": "ltpipe.train.mixers.m2m:M2m",
}


def mixer_class(name: str) -> type[Mixer]:
    if name not in MIXERS:
        raise ValueError(f"mixer: unknown {name!r} (choose from {', '.join(MIXERS)})")
    module, cls = MIXERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def mixer_params(name: str) -> list[str]:
    """The keyword parameters a mixer's constructor accepts (besides ``env``)."""
    return accepted(mixer_class(name), skip=("env",))


def build_mixer(name: str, **params) -> Mixer:
    """``build_mixer(name, env=MixerEnv(...), **params)``; a param the constructor does not
    accept, or a value unlike its default, raises a one-line ValueError naming it."""
    cls = mixer_class(name)
    check_params(f"mixer {name!r}", cls, {k: v for k, v in params.items() if k != "env"},
                 skip=("env",))
    try:
        return cls(**params)
    except TypeError as exc:  # a value of the right kind the constructor still cannot use
        raise ValueError(f"mixer {name!r}: bad parameter ({exc})") from None
