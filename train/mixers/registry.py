"""Mixer names -> classes. Method names appear here and in config, nowhere in the train loop."""

from __future__ import annotations

import importlib
import inspect

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


def mixer_params(name: str) -> list[str]:
    """The keyword parameters a mixer's constructor accepts (besides ``env``)."""
    sig = inspect.signature(mixer_class(name).__init__)
    return [p for p in sig.parameters if p not in ("self", "env")]


def build_mixer(name: str, **params) -> Mixer:
    """``build_mixer(name, env=MixerEnv(...), **params)``; a param the constructor does not
    accept raises a one-line ValueError naming it."""
    cls = mixer_class(name)
    sig = inspect.signature(cls.__init__)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        unknown = [k for k in params if k not in sig.parameters or k == "self"]
        if unknown:
            raise ValueError(f"mixer {name!r}: unknown parameter {unknown[0]!r} "
                             f"(accepts: {', '.join(mixer_params(name)) or 'none'})")
    for key, value in params.items():
        if key in sig.parameters and not _same_kind(sig.parameters[key].default, value):
            kind = type(sig.parameters[key].default).__name__
            raise ValueError(f"mixer {name!r}: {key} must be like its default "
                             f"{sig.parameters[key].default!r} ({kind}), got {value!r}")
    try:
        return cls(**params)
    except TypeError as exc:  # a value of the right kind the constructor still cannot use
        raise ValueError(f"mixer {name!r}: bad parameter ({exc})") from None


def _same_kind(default, value) -> bool:
    """A TOML value fits a parameter whose default is a bool, int, float (an int will do), str or
    sequence of the same kind; a default of None accepts anything."""
    if default is inspect.Parameter.empty or default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))
