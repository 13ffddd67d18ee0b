"""Mixer names -> classes. Method names appear here and in config, nowhere in the train loop."""

from __future__ import annotations

import importlib

from ltpipe.train.mixers.base import Mixer

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


def build_mixer(name: str, **params) -> Mixer:
    return mixer_class(name)(**params)
