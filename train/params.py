"""Keyword parameters from a recipe or the CLI, checked against the constructor they feed.

An unknown name, or a value of another kind than the parameter's default (a string where a
number goes, a float where an int goes, a scalar where a pair goes), is a one-line ValueError
naming the parameter, raised before any work instead of a TypeError in the middle of a step.
"""

from __future__ import annotations

import inspect

KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def accepted(cls, skip: tuple[str, ...]) -> list[str]:
    """The keyword parameters of ``cls.__init__`` besides ``self`` and ``skip``."""
    sig = inspect.signature(cls.__init__)
    return [n for n, p in sig.parameters.items()
            if p.kind in KEYWORD and n != "self" and n not in skip]


def check_params(owner: str, cls, params: dict, skip: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError("<owner>: ...")`` for a parameter ``cls`` does not take or a value
    unlike its default."""
    sig = inspect.signature(cls.__init__)
    names = accepted(cls, skip)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        unknown = [k for k in params if k not in names]
        if unknown:
            raise ValueError(f"{owner}: unknown parameter {unknown[0]!r} "
                             f"(accepts: {', '.join(names) or 'none'})")
    for key, value in params.items():
        default = sig.parameters[key].default if key in sig.parameters else None
        if not same_kind(default, value):
            raise ValueError(f"{owner}: {key} must be like its default {default!r} "
                             f"({type(default).__name__}), got {value!r}")


def same_kind(default, value) -> bool:
    """A value fits a parameter whose default is a bool, int, float (an int will do), str or
    sequence (of numbers where the default's are); a default of None accepts anything."""
    if default is inspect.Parameter.empty or default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list)) and len(value) == len(default) and \
            all(same_kind(d, v) for d, v in zip(default, value))
    return isinstance(value, type(default))
