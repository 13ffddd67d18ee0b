"""Keyword parameters from a recipe or the CLI, checked against the constructor they feed.

An unknown name, or a value of another kind than the parameter's default (a string where a
number goes, a float where an int goes, a scalar where a pair goes), is a one-line ValueError
naming the parameter, raised before any work instead of a TypeError in the middle of a step.
So is a number that is not finite (nan, inf) or subnormal, anywhere in a value: no parameter
takes one, and it would only fail at the first step, or train on nan. Last, each value must pass
its owner's rule (``cls.RULES``, pipeline/values.py), the rule its constructor checks too: the
same range, and the same words, for ``--mixer-opt alpha=...`` and ``CMO(env, alpha=...)``.
"""

from __future__ import annotations

import inspect
import typing

from ltpipe.pipeline import values

KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def accepted(cls, skip: tuple[str, ...]) -> list[str]:
    """The keyword parameters of ``cls.__init__`` besides ``self`` and ``skip``."""
    sig = inspect.signature(cls.__init__)
    return [n for n, p in sig.parameters.items()
            if p.kind in KEYWORD and n != "self" and n not in skip]


def check_params(owner: str, cls, params: dict, skip: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError("<owner>: ...")`` for a parameter ``cls`` does not take or a value
    unlike its default (a default of None: unlike its annotation, e.g. ``float | None``)."""
    sig = _signature(cls)
    names = accepted(cls, skip)
    # a name the caller fills in itself (a mixer's env) is never a user's parameter
    taken = [k for k in params if k in skip]
    if taken:
        raise ValueError(f"{owner}: {taken[0]!r} is not a parameter one can set "
                         f"(accepts: {', '.join(names) or 'none'})")
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        unknown = [k for k in params if k not in names]
        if unknown:
            raise ValueError(f"{owner}: unknown parameter {unknown[0]!r} "
                             f"(accepts: {', '.join(names) or 'none'})")
    for key, value in params.items():
        if unusable(value):
            raise ValueError(f"{owner}: {key} must be {unusable(value)}, got {value!r}")
        param = sig.parameters.get(key)
        default = param.default if param is not None else None
        if default is None and param is not None:
            kinds = annotated_kinds(param.annotation)
            if kinds and not any(same_kind(kind(), value) for kind in kinds):
                raise ValueError(f"{owner}: {key} must be "
                                 f"{' or '.join(k.__name__ for k in kinds)}, got {value!r}")
        elif not same_kind(default, value):
            raise ValueError(f"{owner}: {key} must be like its default {default!r} "
                             f"({type(default).__name__}), got {value!r}")
    values.check_values(owner, getattr(cls, "RULES", {}), params)


def _signature(cls) -> inspect.Signature:
    try:  # annotations are strings under ``from __future__ import annotations``
        return inspect.signature(cls.__init__, eval_str=True)
    except (NameError, TypeError, SyntaxError):
        return inspect.signature(cls.__init__)


def annotated_kinds(annotation) -> tuple[type, ...]:
    """The kinds of an annotation like ``float | None``; () (no check) when it admits anything
    besides scalars and None (``str | nn.Module | None``) or is not evaluated."""
    members = [m for m in typing.get_args(annotation) or (annotation,) if m is not type(None)]
    scalars = tuple(m for m in members if m in (bool, int, float, str))
    return scalars if len(scalars) == len(members) else ()


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


def unusable(value) -> str | None:
    """What a number must be instead, when ``value`` is, or holds (in lists, tuples, dicts), a
    float nan, inf or subnormal (``values.unusable_float``); None otherwise."""
    if isinstance(value, (list, tuple)):
        return next((u for u in map(unusable, value) if u), None)
    if isinstance(value, dict):
        return next((u for u in map(unusable, value.values()) if u), None)
    return values.unusable_float(value)
